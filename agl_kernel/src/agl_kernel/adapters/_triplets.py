"""Spans → triplets (token ids, text, logprobs, rewards), with the reason for every LLM call that gave none."""

from __future__ import annotations

import enum
from collections.abc import Sequence
from typing import Any, Literal

import attrs
import msgspec

from agl_kernel.adapter import Adapter
from agl_kernel.adapters._trace import LlmCall, agent_matcher, read_attempt
from agl_kernel.models import Span, Triplet

__all__ = ["CallReason", "CallReport", "TripletAdapter", "TripletResult"]


class CallReason(str, enum.Enum):
    """Why an LLM call gave no triplet of its own."""

    CALL_FAILED = "call_failed"
    FILTERED_OUT = "filtered_out"
    NO_TOKEN_IDS = "no_token_ids"
    EMPTY_RESPONSE = "empty_response"
    NO_REWARD = "no_reward"
    MERGED = "merged"
    """Not a problem: the call continues the previous one and is part of its triplet."""


class CallReport(msgspec.Struct, frozen=True, kw_only=True):
    """What became of one LLM call."""

    span_id: str
    sequence_id: int
    name: str
    agent: str | None = None
    model: str | None = None
    prompt_tokens: int | None = None
    """How many prompt token ids the span carries (``None``: none captured)."""
    response_tokens: int | None = None
    reward: float | None = None
    """The reward of its triplet, when it has one."""
    triplet: int | None = None
    """The index of the triplet it went into, if any."""
    reason: CallReason | None = None
    detail: str = ""
    """A sentence for people: what happened and what to do about it."""


class TripletResult(msgspec.Struct, frozen=True, kw_only=True):
    """The triplets of one attempt, and a report for every LLM call in it."""

    rollout_id: str | None = None
    attempt_id: str | None = None
    triplets: list[Triplet] = []
    calls: list[CallReport] = []
    final_reward: float | None = None
    problems: list[str] = []
    """Reasons that concern the whole attempt (no LLM call at all, rewards for unknown steps, ...)."""

    def why(self) -> list[str]:
        """Sentences explaining why the attempt gave no (or less) training data; empty when every call gave some."""
        lines = list(self.problems)
        for call in self.calls:
            if call.reason is not None and call.reason is not CallReason.MERGED:
                lines.append(f"LLM call {call.span_id} (#{call.sequence_id} {call.name}): {call.detail}")
        return lines


_HOW_TO_GET_TOKEN_IDS = (
    "ask the server for them (vLLM: extra_body={'return_token_ids': True}, or OtelTracer(request_token_ids=True)), "
    "or send the calls through agl's LLM proxy"
)


@attrs.define(kw_only=True)
class TripletAdapterOptions:
    """Options of the triplet adapter (``triplets``)."""

    agent_match: str | None = None
    """Only LLM calls of agents whose name matches this regular expression (default: every call)."""
    merge: bool = False
    """Merge consecutive calls whose tokens continue each other into one triplet."""
    final_reward: Literal["all", "last", "none"] = "all"
    """Which triplets get the rollout's final reward: all of them, the last, or none (step rewards only)."""
    require_reward: bool = True
    """Give no triplets for a rollout that recorded no reward (and say so)."""


class TripletAdapter(Adapter[TripletResult]):
    """Turns one attempt's LLM calls into triplets for RL.

    - ``agent_match``: a regular expression (``re.search``) on the agent name of each call (``gen_ai.agent.name``
      on the call or its nearest ancestor, e.g. ``operation(agent="solver")``); calls that do not match, or have
      no agent name, are left out. ``None`` takes every call.
    - ``merge``: merge consecutive calls of one agent into one triplet when each call's prompt tokens start with
      the previous prompt + response tokens (a multi-turn conversation). The tokens in between (tool results, user
      turns) join the response with ``response_mask`` 0 and logprob 0.0.
    - ``final_reward``: where the attempt's final reward goes: ``"all"`` triplets (default), the ``"last"`` one,
      or ``"none"``. Per-step rewards always go to their step's triplets; ``Triplet.reward`` is the sum of both.
    - ``require_reward``: leave out triplets that get no reward at all (default), with the reason.

    ``adapt(spans)`` takes one attempt's spans (given several attempts' spans, the last attempt's are used).
    """

    Options = TripletAdapterOptions

    def __init__(
        self,
        *,
        agent_match: str | None = None,
        merge: bool = False,
        final_reward: Literal["all", "last", "none"] = "all",
        require_reward: bool = True,
    ) -> None:
        if final_reward not in ("all", "last", "none"):
            raise ValueError(f"final_reward must be 'all', 'last' or 'none', not {final_reward!r}")
        self.agent_match = agent_match
        self._agent = agent_matcher(agent_match)
        self.merge = merge
        self.final_reward = final_reward
        self.require_reward = require_reward

    def adapt(self, spans: Sequence[Span]) -> TripletResult:
        trace = read_attempt(spans)
        final = trace.final.value if trace.final is not None else None
        problems = []
        if not trace.spans:
            problems.append("the attempt has no spans at all: did it run, and was it traced?")
        elif not trace.calls:
            problems.append(
                "no LLM call was recorded: trace the agent with a tracer that instruments its LLM client (the "
                "'otel' tracer instruments openai), or send its calls through agl's LLM proxy"
            )
        for step in trace.unknown_steps:
            problems.append(f"a per-step reward names the span {step}, which is not a span of this attempt")

        reports: dict[str, dict[str, Any]] = {}
        groups: list[list[LlmCall]] = []  # each becomes one triplet
        for call in trace.calls:
            report = reports[call.span.span_id] = self._report(call)
            reason = self._skip_reason(call)
            if reason is not None:
                report.update(reason=reason[0], detail=reason[1])
                continue
            previous = groups[-1] if groups else None
            if self.merge and previous is not None and _continues(previous, call):
                previous.append(call)
                report.update(reason=CallReason.MERGED, detail=f"merged into the triplet of {previous[0].span.span_id}")
            else:
                groups.append([call])

        triplets: list[Triplet] = []
        for index, group in enumerate(groups):
            steps = [r for call in group for r in call.step_rewards]
            step_reward = sum(r.value for r in steps) if steps else None
            applies = self.final_reward == "all" or (self.final_reward == "last" and index == len(groups) - 1)
            final_here = final if applies else None
            total = None if step_reward is None and final_here is None else (step_reward or 0.0) + (final_here or 0.0)
            if total is None and self.require_reward:
                detail = (
                    "no reward: the attempt has no final reward and no per-step reward names this call; emit one "
                    "with emit_reward() or return it from the agent"
                    if final is None
                    else f"no reward: the final reward goes to the {self.final_reward!r} triplets and no per-step "
                    f"reward names this call"
                )
                for call in group:
                    reports[call.span.span_id].update(reason=CallReason.NO_REWARD, detail=detail)
                continue
            for call in group:
                reports[call.span.span_id].update(triplet=len(triplets), reward=total)
            triplets.append(_triplet(group, step_reward, final_here, total))
        if trace.calls and not triplets and final is None and not any(c.step_rewards for c in trace.calls):
            problems.append("the attempt has no reward: the agent returned none and emitted none")
        return TripletResult(
            rollout_id=trace.rollout_id,
            attempt_id=trace.attempt_id,
            triplets=triplets,
            calls=[CallReport(**reports[c.span.span_id]) for c in trace.calls],
            final_reward=final,
            problems=problems,
        )

    def _report(self, call: LlmCall) -> dict[str, Any]:
        return {
            "span_id": call.span.span_id,
            "sequence_id": call.span.sequence_id,
            "name": call.span.name,
            "agent": call.agent,
            "model": call.model,
            "prompt_tokens": None if call.prompt_token_ids is None else len(call.prompt_token_ids),
            "response_tokens": None if call.response_token_ids is None else len(call.response_token_ids),
        }

    def _skip_reason(self, call: LlmCall) -> tuple[CallReason, str] | None:
        if call.failed:
            return CallReason.CALL_FAILED, f"the call failed: {call.span.status.description or 'status ERROR'}"
        if self._agent is not None and (call.agent is None or not self._agent.search(call.agent)):
            who = (
                f"its agent {call.agent!r}"
                if call.agent
                else "it has no agent name (set one with operation(agent=...))"
            )
            return CallReason.FILTERED_OUT, f"filtered out: agent_match={self.agent_match!r} does not match; {who}"
        missing = [
            what
            for what, ids in (("prompt", call.prompt_token_ids), ("response", call.response_token_ids))
            if ids is None
        ]
        if missing:
            return CallReason.NO_TOKEN_IDS, (
                f"no {' or '.join(missing)} token ids were captured: the server did not return them; "
                f"{_HOW_TO_GET_TOKEN_IDS}"
            )
        if not call.response_token_ids:
            return CallReason.EMPTY_RESPONSE, "the response has no tokens"
        return None


def _continues(group: list[LlmCall], call: LlmCall) -> bool:
    """Whether ``call``'s prompt starts with everything ``group`` has seen (its first prompt and all responses)."""
    if group[-1].agent != call.agent:
        return False
    sequence = _full_sequence(group)
    prompt = call.prompt_token_ids or []
    return len(prompt) >= len(sequence) and prompt[: len(sequence)] == sequence


def _full_sequence(group: list[LlmCall]) -> list[int]:
    last = group[-1]
    return list(last.prompt_token_ids or []) + list(last.response_token_ids or [])


def _triplet(group: list[LlmCall], step: float | None, final: float | None, total: float | None) -> Triplet:
    first = group[0]
    prompt = list(first.prompt_token_ids or [])
    response: list[int] = []
    mask: list[int] = []
    logprobs: list[float] | None = []
    seen = len(prompt)
    for call in group:
        gap = (call.prompt_token_ids or [])[seen:]
        generated = call.response_token_ids or []
        response += gap + generated
        mask += [0] * len(gap) + [1] * len(generated)
        known = call.response_logprobs is not None and len(call.response_logprobs) == len(generated)
        if logprobs is not None and known:
            logprobs += [0.0] * len(gap) + (call.response_logprobs or [])
        else:
            logprobs = None
        seen = len(call.prompt_token_ids or []) + len(generated)
    texts = [call.response_text() for call in group]
    return Triplet(
        prompt_token_ids=prompt,
        response_token_ids=response,
        prompt_text=first.prompt_text(),
        response_text=None if any(t is None for t in texts) else "".join(t for t in texts if t is not None),
        response_logprobs=logprobs,
        reward=total,
        rollout_id=first.span.rollout_id,
        attempt_id=first.span.attempt_id,
        span_id=first.span.span_id,
        metadata={
            "agent": first.agent,
            "model": first.model,
            "sequence_id": first.span.sequence_id,
            "span_ids": [call.span.span_id for call in group],
        },
        step_reward=step,
        final_reward=final,
        response_mask=mask if len(group) > 1 else None,
    )
