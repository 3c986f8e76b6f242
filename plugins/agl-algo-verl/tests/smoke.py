"""Smoke use of agl-algo-verl installed alone with the kernel (``tools/check_plugins_alone.py`` runs it with a fresh
venv's python; no pytest, no verl): ``verl`` is found by name in ``agl.algorithms`` with typed options, the options
map onto verl's Hydra keys, a bad option is one line, and without verl ``run`` says what to install. Where verl is
installed it also composes the options with verl's own config."""

from __future__ import annotations

import asyncio
import importlib.util
import sys

from agl_algo_verl import VERL, hydra_overrides
from agl_kernel.errors import ConfigError, MissingDependencyError
from agl_kernel.plugins import create_component
from agl_kernel.store.memory import InMemoryLightningStore


def check(condition: object, what: str) -> None:
    if not condition:
        sys.exit(f"smoke failed: {what}")


async def run_without_verl() -> str:
    async with InMemoryLightningStore() as store:
        try:
            await VERL(model="m").run(store, [{"question": "1 + 1"}])
        except MissingDependencyError as err:
            return str(err)
    return ""


def main() -> None:
    algo = create_component("algorithms", "verl", options={"model": "m", "group_size": "8", "kl_coef": "0.01"})
    check(isinstance(algo, VERL), f"verl made {type(algo).__name__}")
    overrides = hydra_overrides(algo.options)
    check("actor_rollout_ref.rollout.n=8" in overrides, f"rollout.n not mapped: {overrides}")
    check("actor_rollout_ref.actor.kl_loss_coef=0.01" in overrides, "kl_coef not mapped")
    try:
        create_component("algorithms", "verl", options={"clip_low": "2"})
    except ConfigError as err:
        check("algorithm.clip_low" in str(err) and "\n" not in str(err), f"bad option error: {err}")
    else:
        sys.exit("smoke failed: clip_low=2 was accepted")
    if importlib.util.find_spec("verl") is None:
        message = asyncio.run(run_without_verl())
        check("pip install 'agl-algo-verl[verl]'" in message and "\n" not in message, f"missing-verl error: {message}")
        print("agl-algo-verl smoke: ok (options, mapping, errors; verl not installed: run() says what to install)")
    else:
        from agl_algo_verl._trainer import verl_config

        config = verl_config(algo.options)
        check(config.actor_rollout_ref.rollout.n == 8, "verl's config did not take rollout.n")
        print("agl-algo-verl smoke: ok (options, mapping, errors, composed with verl's own config)")


if __name__ == "__main__":
    main()
