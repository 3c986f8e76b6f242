"""The ``ray`` strategy's options: where the cluster is, how many runner actors, what each one gets."""

from __future__ import annotations

from typing import Any, Literal

import attrs

LOOPBACK = "127.0.0.1"


@attrs.define(kw_only=True)
class RayStrategyOptions:
    """Options of the Ray strategy (``ray`` in ``agl.strategies``)."""

    address: str | None = None
    """The Ray cluster to join (``auto``, ``HOST:PORT`` of its GCS, ``ray://HOST:10001``); unset: start a local
    one for the run, bound to ``node_ip_address``, stopped at its end."""
    runners: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    """Runner actors at the start (unset: the run's ``runners``); ``RayStrategy.scale(n)`` changes it mid-run."""
    runners_per_actor: int = attrs.field(default=1, validator=attrs.validators.ge(1))
    """Runners in each actor (asyncio tasks of its event loop): more than 1 suits agents that mostly wait on an LLM,
    and saves a process per runner. ``runners`` counts actors."""
    num_cpus: float = attrs.field(default=1.0, validator=attrs.validators.ge(0))
    """CPUs Ray reserves for each runner actor (fractions allowed: 0.25 packs four on a core)."""
    num_gpus: float = attrs.field(default=0.0, validator=attrs.validators.ge(0))
    """GPUs Ray reserves for each runner actor."""
    resources: dict[str, float] = attrs.field(factory=dict)
    """Custom Ray resources each runner actor needs, e.g. ``{accelerator_a10 = 1}``."""
    runtime_env: dict[str, Any] = attrs.field(factory=dict)
    """Ray's runtime environment for each runner actor: ``working_dir``, ``env_vars``, ``pip`` (where the cluster
    allows installing packages), ``py_modules``..."""
    scheduling: Literal["DEFAULT", "SPREAD"] = "DEFAULT"
    """Ray's placement of the actors: ``SPREAD`` puts them on as many nodes as it can."""
    max_restarts: int = attrs.field(default=3, validator=attrs.validators.ge(0))
    """How many times Ray restarts a runner actor that died; past that, the strategy starts a new one."""
    namespace: str = "agl"
    """The Ray namespace of the runner actors (``agl ray status --namespace`` lists them)."""
    store_url: str | None = None
    """An agl store server the actors use instead of one the strategy starts (``token`` is its token); the trainer's
    store must then be that server (``--store http``)."""
    host: str = LOOPBACK
    """The address the store server started for the run listens on (``0.0.0.0`` for a cluster of machines)."""
    port: int = attrs.field(default=0, validator=[attrs.validators.ge(0), attrs.validators.le(65535)])
    """The store server's port; 0 picks a free one."""
    advertise_host: str | None = None
    """The address the actors reach the store server at (unset: ``host``, or this node's Ray address when ``host``
    is ``0.0.0.0``)."""
    token: str | None = attrs.field(default=None, repr=False)
    """The store server's bearer token, handed to the actors (unset: a random one for the run)."""
    node_ip_address: str = LOOPBACK
    """A local cluster's node address: the loopback keeps it off the network."""
    local_cpus: int | None = attrs.field(default=None, validator=attrs.validators.optional(attrs.validators.ge(1)))
    """Logical CPUs of a local cluster (unset: Ray counts the machine's)."""
    start_timeout: float = attrs.field(default=300.0, validator=attrs.validators.gt(0))
    """Seconds a runner actor may take to start (placed, its runtime environment built, registered)."""
    stop_timeout: float = attrs.field(default=5.0, validator=attrs.validators.ge(0))
    """Seconds runner actors get to stop (their rollouts in flight marked failed, to be retried) before they are
    killed."""
