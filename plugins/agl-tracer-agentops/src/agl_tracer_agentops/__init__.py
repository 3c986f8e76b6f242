"""agl's AgentOps tracer: ``AgentOpsTracer`` (entry point ``agentops`` in ``agl.tracers``) records agents decorated
with AgentOps (``@agent``, ``@task``, ``@tool``, sessions) through agl's OpenTelemetry tracer, offline."""

from agl_tracer_agentops._tracer import AgentOpsTracer, AgentOpsTracerOptions

__all__ = ["AgentOpsTracer", "AgentOpsTracerOptions"]
