"""agl-runner-agentos: run agents with their tools governed by an Agent-OS kernel (``agentos`` in ``agl.runners``).

from agl_runner_agentos import AgentOSRunner, governed_tool, deny_sql

@governed_tool
def run_sql(query: str) -> list: ...     # its calls go through the kernel's policy check when governed

Trainer(runner="agentos", options={"runner": {"policy": "policy.yaml"}})
"""

from agl_runner_agentos._audit import audit_records, export_audit
from agl_runner_agentos._governance import (
    DECISION_SPAN,
    Governance,
    GovernedSession,
    PolicyViolationError,
    ToolCallError,
    call_tool,
    current_session,
    governed_tool,
)
from agl_runner_agentos._policy import (
    SEVERITIES,
    AgentOSPolicy,
    PolicyFileError,
    ToolDecision,
    deny_sql,
    load_policy,
)
from agl_runner_agentos._reward import PolicyReward, PolicyRewardOptions, RewardParts
from agl_runner_agentos._runner import AUDIT_SPAN, AgentOSRunner, AgentOSRunnerOptions

__all__ = [
    "AUDIT_SPAN",
    "DECISION_SPAN",
    "SEVERITIES",
    "AgentOSPolicy",
    "AgentOSRunner",
    "AgentOSRunnerOptions",
    "Governance",
    "GovernedSession",
    "PolicyFileError",
    "PolicyReward",
    "PolicyRewardOptions",
    "PolicyViolationError",
    "RewardParts",
    "ToolCallError",
    "ToolDecision",
    "audit_records",
    "call_tool",
    "current_session",
    "deny_sql",
    "export_audit",
    "governed_tool",
    "load_policy",
]
