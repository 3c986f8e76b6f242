"""The optimizer LLM: a critique of a prompt from trajectories (the textual gradient), then an edited prompt; and
the checks an edited prompt must pass before it is tried."""

from __future__ import annotations

import logging
import re
import string
from collections.abc import Mapping, Sequence
from importlib import resources
from pathlib import Path

from agl_kernel.errors import AglError, ConfigError
from agl_kernel.models import PromptTemplate

__all__ = ["OptimizerError", "PromptOptimizer", "check_edit", "load_template", "template_variables"]

logger = logging.getLogger(__name__)

_PROMPT_BLOCK = re.compile(r"<prompt>\s*(.*?)\s*</prompt>", re.DOTALL | re.IGNORECASE)
_BLAME_LINE = re.compile(r"^\s*TEMPLATE:\s*[\"'`]?([\w.\-]+)[\"'`]?\s*$", re.MULTILINE | re.IGNORECASE)


class OptimizerError(AglError):
    """The optimizer LLM gave no usable answer (endpoint down, HTTP error, garbage); the message says which."""


def load_template(source: str | Path | None, kind: str) -> str:
    """The text of the ``kind`` ("critique" or "edit") template: the file ``source``, or the packaged
    ``prompts/<kind>.md``; checked to name only the fields the optimizer fills in (else a ``ConfigError``)."""
    if source is None:
        text = resources.files("agl_algo_apo").joinpath("prompts").joinpath(f"{kind}.md").read_text(encoding="utf-8")
    else:
        path = Path(source)
        try:
            text = path.read_text(encoding="utf-8")
        except OSError as exc:
            raise ConfigError(
                f"algorithm.{kind}_template: cannot read the optimizer template {path}: {exc.strerror or exc}"
            ) from exc
    _check_fields(text, PromptOptimizer.FIELDS[kind], kind)
    return text


def _check_fields(template: str, fields: Sequence[str], what: str) -> None:
    """Fail early (at configuration) if a user's template names a field the optimizer does not fill in."""
    try:
        named = {name for _, name, _, _ in string.Formatter().parse(template) if name is not None}
    except ValueError as exc:
        raise ConfigError(
            f"algorithm.{what}_template: not a format string ({exc}); write literal braces as {{{{ }}}}"
        ) from None
    unknown = sorted(n for n in named if n not in fields)
    if unknown:
        raise ConfigError(
            f"algorithm.{what}_template: uses {', '.join('{' + n + '}' for n in unknown)}, which the optimizer does "
            f"not fill in; it can use {', '.join('{' + f + '}' for f in fields)} (write literal braces as {{{{ }}}})"
        )


def template_variables(template: PromptTemplate) -> set[str]:
    """The variables a prompt template needs."""
    if template.engine == "f-string":
        return {name.split(".")[0].split("[")[0] for name in template.placeholders}
    import jinja2
    from jinja2 import meta

    return set(meta.find_undeclared_variables(jinja2.Environment().parse(template.template)))


def check_edit(original: PromptTemplate, text: str) -> PromptTemplate:
    """The edited template, or ``ValueError`` saying why it cannot replace ``original``: it must parse, differ
    from the original, and need exactly the original's variables (the agent fills in those and no others)."""
    if not text.strip():
        raise ValueError("the edited prompt is empty")
    if text.strip() == original.template.strip():
        raise ValueError("the edited prompt is the same as its parent")
    edited = PromptTemplate(template=text, engine=original.engine)
    try:
        found = template_variables(edited)
    except Exception as exc:
        raise ValueError(f"the edited prompt does not parse as a {original.engine} template: {exc}") from None
    needed = template_variables(original)
    missing, extra = sorted(needed - found), sorted(found - needed)
    if missing:
        raise ValueError(f"the edited prompt drops the required variable(s) {', '.join(missing)}")
    if extra:
        raise ValueError(f"the edited prompt adds variable(s) the agent does not fill in: {', '.join(extra)}")
    return edited


class PromptOptimizer:
    """Talks to the optimizer LLM through any OpenAI-compatible endpoint."""

    FIELDS = {
        "critique": ("templates", "worst", "best", "instruction"),
        "edit": ("name", "prompt", "critique", "variables", "child", "children"),
    }

    def __init__(
        self,
        *,
        base_url: str | None,
        api_key: str | None,
        critique_model: str,
        edit_model: str,
        critique_temperature: float,
        edit_temperature: float,
        critique_template: str,
        edit_template: str,
        timeout: float,
        max_tokens: int,
    ) -> None:
        import openai

        self._openai = openai
        self._client = openai.AsyncOpenAI(base_url=base_url, api_key=api_key or "-", timeout=timeout, max_retries=1)
        self.base_url = str(self._client.base_url)
        self.critique_model = critique_model
        self.edit_model = edit_model
        self.critique_temperature = critique_temperature
        self.edit_temperature = edit_temperature
        self.critique_template = critique_template
        self.edit_template = edit_template
        self.max_tokens = max_tokens
        self.calls = 0

    async def close(self) -> None:
        await self._client.close()

    async def _ask(self, model: str, temperature: float, content: str) -> str:
        self.calls += 1
        try:
            reply = await self._client.chat.completions.create(
                model=model,
                messages=[{"role": "user", "content": content}],
                temperature=temperature,
                max_tokens=self.max_tokens,
            )
        except self._openai.APIConnectionError as exc:
            raise OptimizerError(f"the optimizer endpoint {self.base_url} cannot be reached ({exc})") from None
        except self._openai.APIStatusError as exc:
            raise OptimizerError(
                f"the optimizer endpoint {self.base_url} answered HTTP {exc.status_code}: {exc.message}"
            ) from None
        except self._openai.OpenAIError as exc:
            raise OptimizerError(f"the optimizer call failed: {type(exc).__name__}: {exc}") from None
        choices = getattr(reply, "choices", None)
        text = choices[0].message.content if choices else None
        if not isinstance(text, str) or not text.strip():
            raise OptimizerError(f"the optimizer model {model!r} returned no text")
        return text

    async def critique(
        self,
        *,
        templates: Mapping[str, PromptTemplate],
        target: str | None,
        worst: Sequence[str],
        best: Sequence[str],
    ) -> tuple[str, str | None]:
        """A critique of ``target`` (or, with ``target=None``, of whichever template the model blames) and the
        template it blames (``None`` when the model names none, or a ``target`` was given)."""
        if target is None:
            instruction = (
                "Decide which one template is most to blame for the worst runs, say why, and list concrete changes "
                "to it. Be brief. End your answer with one line of the form `TEMPLATE: <name>`, naming one of: "
                + ", ".join(templates)
                + "."
            )
        else:
            instruction = (
                f'Say what in the template "{target}" made the agent fail in the worst runs and what helped in the '
                "best ones, then list concrete changes to that template. Be brief."
            )
        content = self.critique_template.format(
            templates="\n\n".join(f'### Template "{name}"\n{t.template}' for name, t in templates.items()),
            worst="\n\n".join(worst) or "(none)",
            best="\n\n".join(best) or "(none)",
            instruction=instruction,
        )
        text = await self._ask(self.critique_model, self.critique_temperature, content)
        blamed = None
        if target is None:
            named = [m for m in _BLAME_LINE.findall(text) if m in templates]
            blamed = named[-1] if named else None
        return text, blamed

    async def edit(
        self, *, name: str, template: PromptTemplate, critique: str, child: int, children: int
    ) -> PromptTemplate:
        """The edited template, checked (:func:`check_edit`); ``OptimizerError`` or ``ValueError`` with the reason
        it was rejected."""
        variables = sorted(template_variables(template))
        shown = ", ".join("{" + v + "}" for v in variables) if template.engine == "f-string" else ", ".join(variables)
        content = self.edit_template.format(
            name=name,
            prompt=template.template,
            critique=critique,
            variables=shown or "there are none",
            child=child,
            children=children,
        )
        text = await self._ask(self.edit_model, self.edit_temperature, content)
        found = _PROMPT_BLOCK.findall(text)
        if not found:
            preview = " ".join(text.split())[:80]
            raise OptimizerError(f"the optimizer's reply has no <prompt>...</prompt> block: {preview!r}")
        return check_edit(template, found[-1])
