"""The kernel's adapters: a rollout's spans → training data.

- ``triplets`` (:class:`TripletAdapter`): token-level triplets for RL, with per-step and final rewards, and a
  report that says, for every LLM call that gave no triplet, why (``agl rollouts why ROLLOUT_ID`` shows it).
- ``messages`` (:class:`MessagesAdapter`): each LLM call as OpenAI-format chat messages with its reward.

Both read LLM calls by the OpenTelemetry GenAI conventions plus agl's token-id attributes (:mod:`agl_kernel.semconv`),
so any tracer or proxy that writes those feeds them.
"""

from agl_kernel.adapter import Adapter
from agl_kernel.adapters._messages import ChatSample, MessagesAdapter
from agl_kernel.adapters._triplets import CallReason, CallReport, TripletAdapter, TripletResult

__all__ = [
    "Adapter",
    "CallReason",
    "CallReport",
    "ChatSample",
    "MessagesAdapter",
    "TripletAdapter",
    "TripletResult",
]
