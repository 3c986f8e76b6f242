"""Policies: what decides whether a tool call is allowed, loaded from a file the user writes or given in Python.

The file is Agent-OS's declarative policy format (``agent_os.policies.PolicyDocument``, YAML or JSON): rules with a
``condition`` (``field``, ``operator``, ``value``) and an ``action`` (``allow``, ``deny``, ``block``, ``audit``),
evaluated highest ``priority`` first against the call's context: ``tool_name``, ``agent_id`` and the call's
arguments by name. A rule may carry a ``severity`` (``critical``, ``high``, ``medium``, ``low``): Agent-OS ignores
the key, agl uses it for the penalty of a denied call (``PolicyReward``). In Python, a policy is a
``PolicyDocument``, a list of them, a ``PolicyEvaluator``, an :class:`AgentOSPolicy`, or any object with Agent-OS's
``check_violation(agent_role, tool_name, args) -> reason | None`` (``agent_os.PolicyEngine``).
"""

from __future__ import annotations

import importlib
import inspect
import json
import os
from collections.abc import Mapping, Sequence
from typing import Any, Literal

import attrs

from agl_kernel.errors import ConfigError
from agl_runner_agentos._agentos import agent_os

__all__ = [
    "SEVERITIES",
    "AgentOSPolicy",
    "PolicyFileError",
    "Severity",
    "ToolDecision",
    "deny_sql",
    "load_policy",
]

Severity = Literal["critical", "high", "medium", "low"]
SEVERITIES: tuple[str, ...] = ("critical", "high", "medium", "low")


class PolicyFileError(ConfigError):
    """A policy file (or ``module:attr`` policy) that cannot be used: the message names it and what is wrong."""


@attrs.frozen(kw_only=True)
class ToolDecision:
    """The kernel's verdict on one tool call."""

    tool: str
    arguments: Mapping[str, Any]
    allowed: bool
    action: str
    """``allow``, ``audit`` (allowed, flagged), ``deny`` or ``block``."""
    rule: str | None
    """The rule that matched (``None``: the policy's default action applied)."""
    severity: str | None
    """The rule's severity for a denied call (``None`` for an allowed one)."""
    reason: str
    policy: str | None = None
    call_id: str = ""

    def describe(self) -> str:
        """One line for the agent and for ``agl rollouts why``."""
        rule = f"rule {self.rule!r}" if self.rule else "its default action"
        return f"tool {self.tool!r} was denied by Agent-OS policy {rule} ({self.severity}): {self.reason}"


def _rule_severity(raw: Any, default: str) -> str:
    if raw is None:
        return default
    if not isinstance(raw, str) or raw.lower() not in SEVERITIES:
        raise ValueError(f"severity must be one of {', '.join(SEVERITIES)}, not {raw!r}")
    return raw.lower()


class AgentOSPolicy:
    """Agent-OS policy documents (or a ``check_violation`` engine) with a severity per rule.

    ``documents``: ``agent_os.policies.PolicyDocument`` objects, evaluated by Agent-OS's ``PolicyEvaluator``.
    ``severities``: rule name → severity; rules not named get ``default_severity``. ``engine``: instead of
    documents, any object with ``check_violation(agent_role, tool_name, args)`` returning a reason or ``None``.
    """

    def __init__(
        self,
        documents: Sequence[Any] = (),
        *,
        severities: Mapping[str, str] | None = None,
        engine: Any = None,
        default_severity: str = "high",
        source: str | None = None,
    ) -> None:
        agent_os()
        from agent_os.policies import PolicyEvaluator

        self.default_severity = _rule_severity(default_severity, "high")
        self.documents = list(documents)
        self.severities = {
            name: _rule_severity(value, self.default_severity) for name, value in (severities or {}).items()
        }
        self.engine = engine
        self.source = source
        self.evaluator = PolicyEvaluator(policies=self.documents) if self.documents else None

    def decide(self, agent_id: str, tool: str, arguments: Mapping[str, Any]) -> ToolDecision:
        """The verdict on calling ``tool`` with ``arguments``; never raises for a policy's own failure (Agent-OS
        fails closed: an evaluation error denies)."""
        if self.engine is not None:
            reason = self.engine.check_violation(agent_id, tool, dict(arguments))
            if reason:
                return ToolDecision(
                    tool=tool,
                    arguments=arguments,
                    allowed=False,
                    action="deny",
                    rule=type(self.engine).__name__,
                    severity=self.default_severity,
                    reason=str(reason),
                    policy=self.source,
                )
            return ToolDecision(
                tool=tool, arguments=arguments, allowed=True, action="allow", rule=None, severity=None, reason="allowed"
            )
        if self.evaluator is None:
            return ToolDecision(
                tool=tool,
                arguments=arguments,
                allowed=True,
                action="allow",
                rule=None,
                severity=None,
                reason="no policy: every call is allowed (and audited)",
            )
        context = {**arguments, "tool_name": tool, "agent_id": agent_id}
        verdict = self.evaluator.evaluate(context)
        severity = None
        if not verdict.allowed:
            severity = self.severities.get(verdict.matched_rule or "", self.default_severity)
        return ToolDecision(
            tool=tool,
            arguments=arguments,
            allowed=verdict.allowed,
            action=verdict.action,
            rule=verdict.matched_rule,
            severity=severity,
            reason=verdict.reason,
            policy=(verdict.audit_entry or {}).get("policy") or self.source,
        )


def deny_sql(
    keywords: Sequence[str] = ("DROP", "DELETE"),
    *,
    field: str = "query",
    severity: str = "critical",
    name: str = "no-destructive-sql",
) -> AgentOSPolicy:
    """A policy that denies any call whose ``field`` argument contains one of the SQL ``keywords`` (as a word, in
    any case): the manual's ``SQLPolicy(deny=["DROP", "DELETE"])`` written in Agent-OS's own policy format."""
    agent_os()
    from agent_os.policies import PolicyAction, PolicyCondition, PolicyDocument, PolicyOperator, PolicyRule

    pattern = r"(?i)\b(" + "|".join(k.strip() for k in keywords) + r")\b"
    rule = PolicyRule(
        name=name,
        condition=PolicyCondition(field=field, operator=PolicyOperator.MATCHES, value=pattern),
        action=PolicyAction.DENY,
        priority=100,
        message=f"SQL with {', '.join(keywords)} is not allowed",
    )
    document = PolicyDocument(name=name, rules=[rule])
    return AgentOSPolicy([document], severities={name: severity}, source=name)


def _pydantic_errors(error: Any) -> str:
    parts = []
    for item in error.errors()[:3]:
        where = ".".join(str(p) for p in item.get("loc", ())) or "(top level)"
        parts.append(f"{where}: {item.get('msg')}")
    more = len(error.errors()) - len(parts)
    return "; ".join(parts) + (f" (and {more} more)" if more > 0 else "")


def _load_file(path: str, default_severity: str) -> AgentOSPolicy:
    agent_os()
    from agent_os.policies import PolicyDocument
    from pydantic import ValidationError

    shown = os.path.abspath(path)
    try:
        with open(path, encoding="utf-8") as handle:
            text = handle.read()
    except OSError as exc:
        raise PolicyFileError(f"cannot read the policy file {shown}: {exc.strerror or exc}") from None
    try:
        if path.endswith(".json"):
            data = json.loads(text)
        else:
            yaml: Any = importlib.import_module("yaml")  # declared by this plugin: agent-os-kernel needs it too
            data = yaml.safe_load(text)
    except (ValueError, Exception) as exc:  # yaml.YAMLError, json.JSONDecodeError
        mark = getattr(exc, "problem_mark", None)
        where = f" (line {mark.line + 1}, column {mark.column + 1})" if mark is not None else ""
        problem = getattr(exc, "problem", None) or str(exc).splitlines()[0]
        raise PolicyFileError(f"the policy file {shown} is not valid YAML/JSON{where}: {problem}") from None
    documents = data if isinstance(data, list) else [data]
    parsed, severities = [], {}
    for index, raw in enumerate(documents):
        label = shown if len(documents) == 1 else f"{shown} (document {index + 1})"
        if not isinstance(raw, Mapping):
            raise PolicyFileError(
                f"the policy file {label} must hold an Agent-OS policy document (a mapping with 'rules'), not "
                f"{type(raw).__name__}"
            )
        try:
            parsed.append(PolicyDocument.model_validate(raw))
        except ValidationError as exc:
            raise PolicyFileError(
                f"the policy file {label} is not an Agent-OS policy: {_pydantic_errors(exc)}"
            ) from None
        for rule in raw.get("rules") or ():
            if isinstance(rule, Mapping) and "severity" in rule:
                try:
                    severities[str(rule.get("name"))] = _rule_severity(rule["severity"], default_severity)
                except ValueError as exc:
                    raise PolicyFileError(f"the policy file {label}: rule {rule.get('name')!r}: {exc}") from None
    if not any(doc.rules for doc in parsed):
        raise PolicyFileError(f"the policy file {shown} has no rules: add at least one under 'rules:'")
    return AgentOSPolicy(parsed, severities=severities, default_severity=default_severity, source=shown)


def _from_object(obj: Any, default_severity: str, source: str | None) -> AgentOSPolicy:
    agent_os()
    from agent_os.policies import PolicyDocument, PolicyEvaluator

    if isinstance(obj, AgentOSPolicy):
        return obj
    if isinstance(obj, PolicyDocument):
        return AgentOSPolicy([obj], default_severity=default_severity, source=source or obj.name)
    if isinstance(obj, PolicyEvaluator):
        return AgentOSPolicy(obj.policies, default_severity=default_severity, source=source)
    if isinstance(obj, (list, tuple)) and obj and all(isinstance(d, PolicyDocument) for d in obj):
        return AgentOSPolicy(obj, default_severity=default_severity, source=source)
    if callable(getattr(obj, "check_violation", None)):
        return AgentOSPolicy(engine=obj, default_severity=default_severity, source=source or type(obj).__name__)
    raise PolicyFileError(
        f"{source or repr(obj)} is not a policy: give an Agent-OS PolicyDocument (or a list of them), a "
        f"PolicyEvaluator, an AgentOSPolicy, or an object with check_violation(agent_role, tool_name, args)"
    )


def load_policy(policy: Any, *, default_severity: str = "high") -> AgentOSPolicy:
    """The policy ``policy`` names: ``None`` (every call allowed, and audited), the path of a policy file
    (``.yaml``/``.yml``/``.json``), ``module:attr`` / ``path/to/file.py:attr`` naming a policy object (or a
    function returning one), or a policy object. Raises :class:`PolicyFileError` with one line saying what is
    wrong."""
    if policy is None:
        return AgentOSPolicy(default_severity=default_severity)
    if not isinstance(policy, str):
        return _from_object(policy, default_severity, None)
    spec = policy.strip()
    if not spec:
        raise PolicyFileError("the policy is an empty string: give a policy file or module:attr")
    if os.path.isfile(spec) or spec.endswith((".yaml", ".yml", ".json")):
        if not os.path.exists(spec):
            raise PolicyFileError(f"there is no policy file at {os.path.abspath(spec)}")
        return _load_file(spec, default_severity)
    if ":" in spec:
        from agl_kernel.imports import import_object

        try:
            obj: Any = import_object(spec)
        except Exception as exc:  # an import error, a missing attribute: one line naming the spec
            raise PolicyFileError(f"cannot load the policy {spec!r}: {type(exc).__name__}: {exc}") from None
        if inspect.isfunction(obj) or isinstance(obj, type):  # a factory, or a policy engine class
            obj = obj()
        return _from_object(obj, default_severity, spec)
    raise PolicyFileError(
        f"there is no policy file at {os.path.abspath(spec)}: give a .yaml/.json policy file or module:attr"
    )
