"""Joining a Ray cluster, or starting a local one, without touching the network when it need not.

By default Ray announces a local node under the machine's own network address even when asked for ``127.0.0.1``
(it treats a loopback address as "find me a reachable one"). A local cluster for one run needs no network, so
for a loopback node address we turn that off (``RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER=0``, Ray's own switch for
single-machine clusters) and turn off Ray's usage-stats reporting and dashboard: everything stays on 127.0.0.1.
"""

from __future__ import annotations

import ipaddress
import logging
import os
import signal
import threading
from typing import Any

LOOPBACK = "127.0.0.1"
SINGLE_NODE_SWITCH = "RAY_ENABLE_WINDOWS_OR_OSX_CLUSTER"


def is_loopback(host: str | None) -> bool:
    if not host:
        return False
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def address_host(address: str) -> str:
    """The host of a Ray address (``HOST:PORT``, ``ray://HOST:PORT``)."""
    rest = address.split("://", 1)[-1]
    return rest.rsplit(":", 1)[0].strip("[]")


def keep_on_loopback() -> None:
    """Make Ray take ``127.0.0.1`` for a loopback node address, in this process and the ones it starts."""
    os.environ[SINGLE_NODE_SWITCH] = "0"
    os.environ.setdefault("RAY_USAGE_STATS_ENABLED", "0")
    import ray._private.ray_constants as ray_constants  # read once at import: set it too if ray came in first

    ray_constants.ENABLE_RAY_CLUSTER = False


def connect(
    address: str | None,
    *,
    namespace: str,
    node_ip_address: str = LOOPBACK,
    local_cpus: int | None = None,
    quiet: bool = False,
) -> bool:
    """Join the cluster at ``address`` (``None``: start a local one); whether this call connected (and so must
    :func:`disconnect`). Joining when this process is already connected (``ray.init`` by the user) reuses that."""
    import ray

    if ray.is_initialized():
        return False
    options: dict[str, Any] = {
        "namespace": namespace,
        "logging_level": logging.ERROR if quiet else logging.WARNING,
        "log_to_driver": not quiet,
    }
    if address is None:
        if is_loopback(node_ip_address):
            keep_on_loopback()
        options.update(include_dashboard=False, _node_ip_address=node_ip_address, num_cpus=local_cpus)
    else:
        if address != "auto" and is_loopback(address_host(address)):
            keep_on_loopback()  # this driver is on the cluster's only node, which Ray knows as 127.0.0.1
            options["_node_ip_address"] = LOOPBACK
        options["address"] = address
    # ray.init installs a SIGTERM handler of its own in a driver (sys.exit(15)); keep the host program's (`agl train`
    # stops its run and exits 143 on SIGTERM).
    on_sigterm = signal.getsignal(signal.SIGTERM) if threading.current_thread() is threading.main_thread() else None
    ray.init(**options)
    if on_sigterm is not None:
        signal.signal(signal.SIGTERM, on_sigterm)
    return True


def disconnect(connected: bool) -> None:
    """Leave the cluster joined by :func:`connect` (a local cluster it started stops)."""
    if connected:
        import ray

        ray.shutdown()
