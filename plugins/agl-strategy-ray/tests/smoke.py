"""Smoke use of the plugin installed alone with the kernel (``tools/check_plugins_alone.py``: a fresh venv with the
kernel and this one wheel, run from an empty directory, no pytest): the ``ray`` strategy made by name, its options
checked, then a real run — a tiny local Ray cluster of its own (2 logical CPUs, loopback only, no dashboard, no
usage stats, a token of its own), 2 runner actors, 4 rollouts of a no-op agent through the store server — and
no Ray process left afterwards. About 15 s, most of it Ray starting."""

from __future__ import annotations

import os
import secrets
import sys
import time
from pathlib import Path

os.environ["RAY_USAGE_STATS_ENABLED"] = "0"
os.environ.setdefault("RAY_AUTH_MODE", "token")
os.environ.setdefault("RAY_AUTH_TOKEN", secrets.token_hex(32))  # not ~/.ray/auth_token: nothing written to $HOME


def agent(task, resources):
    return 1.0


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


def ray_processes(session_marker: str) -> list[int]:
    found = []
    for entry in os.listdir("/proc"):
        if entry.isdigit() and int(entry) != os.getpid():
            try:
                cmdline = Path(f"/proc/{entry}/cmdline").read_bytes().replace(b"\0", b" ").decode(errors="replace")
            except OSError:
                continue
            if session_marker in cmdline:
                found.append(int(entry))
    return found


def main() -> None:
    from agl_kernel.errors import ConfigError
    from agl_kernel.plugins import create_component
    from agl_kernel.trainer import Trainer
    from agl_strategy_ray import RayStrategy

    strategy = create_component("strategies", "ray", n_runners=2, options={"local_cpus": 2, "num_cpus": 0.5})
    check(isinstance(strategy, RayStrategy) and strategy.n_runners == 2, f"got {strategy!r}")
    try:
        create_component("strategies", "ray", options={"num_gpus": -1})
    except ConfigError as exc:
        check("strategy.num_gpus" in str(exc), f"the error names the option: {exc}")
    else:
        sys.exit("smoke failed: a negative num_gpus was accepted")

    with Trainer(strategy=strategy, store="memory", progress=False) as trainer:
        report = trainer.dev(agent, [{"i": i} for i in range(4)])
    check(report.by_status == {"succeeded": 4}, f"rollouts: {report.by_status}")
    marker = f"_{os.getpid()}/"  # the local cluster's session folder ends with this driver's pid
    deadline = time.monotonic() + 30
    while ray_processes(marker) and time.monotonic() < deadline:
        time.sleep(0.2)
    check(not ray_processes(marker), f"Ray processes left after the run: {ray_processes(marker)}")
    print("agl-strategy-ray smoke: ok (4 rollouts on 2 runner actors of a local loopback Ray cluster; none left)")


if __name__ == "__main__":
    main()
