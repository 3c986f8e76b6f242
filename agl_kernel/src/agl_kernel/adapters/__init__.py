"""The kernel's adapters: a rollout's spans → training data.

- ``triplets`` (:class:`TripletAdapter`): token-level triplets for RL, with per-step and final rewards, and a
  report that says, for every LLM call that gave no triplet, why (``agl rollouts why ROLLOUT_ID`` shows it).
- ``messages`` (:class:`MessagesAdapter`): each LLM call as OpenAI-format chat messages with its reward.

Both read LLM calls by the OpenTelemetry GenAI conventions plus agl's token-id attributes (:mod:`agl_kernel.semconv`),
so any tracer or proxy that writes those feeds them. :func:`read_attempt` gives an attempt's spans as LLM calls and
rewards (an :class:`AttemptTrace`), for plugins that build their own training data.
"""

from agl_kernel.adapter import Adapter
from agl_kernel.adapters._messages import ChatSample, MessagesAdapter
from agl_kernel.adapters._trace import AttemptTrace, LlmCall, read_attempt
from agl_kernel.adapters._triplets import CallReason, CallReport, TripletAdapter, TripletResult

__all__ = [
    "Adapter",
    "AttemptTrace",
    "CallReason",
    "CallReport",
    "ChatSample",
    "LlmCall",
    "MessagesAdapter",
    "TripletAdapter",
    "TripletResult",
    "read_attempt",
]
