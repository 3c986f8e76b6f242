"""Agent Lightning 0.3.0's side of mongo_store.py: the shared rollout cycle on its ``MongoLightningStore``.

Runs with the throw-away venv's interpreter (``.bench/agentlightning-0.3.0``, where ``pymongo`` is installed beside
``agentlightning``). One JSON request per line on stdin (``{"uri", "workers", "rollouts"}``), one JSON reply per
line on stdout; each run gets a fresh database (and partition), as agl's side does, so no run is slowed by the rows of
the runs before it.
"""

from __future__ import annotations

import asyncio
import json
import os
import sys
import traceback
import uuid

sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
os.environ.setdefault("LITELLM_LOCAL_MODEL_COST_MAP", "True")

from _agentlightning_side import AgentLightningOps, _protocol_stdout, _version
from _cycle import run_cycles


async def measure(uri: str, workers: int, rollouts: int) -> dict[str, float]:
    from agentlightning.store.mongo import MongoLightningStore

    store = MongoLightningStore(mongo_uri=uri, database_name="al_" + uuid.uuid4().hex[:12], partition_id="pt")
    try:
        return await run_cycles(AgentLightningOps(store), workers=workers, rollouts=rollouts)
    finally:
        await store.close()


def main() -> None:
    out = _protocol_stdout()
    import agentlightning.store.mongo  # noqa: F401  (the slow import, once)

    out.write(json.dumps({"ready": True, "version": _version(), "python": sys.version.split()[0]}) + "\n")
    for line in sys.stdin:
        if not line.strip():
            continue
        try:
            request = json.loads(line)
            result = asyncio.run(measure(request["uri"], int(request["workers"]), int(request["rollouts"])))
            reply = {"ok": True, "result": result}
        except Exception:
            reply = {"ok": False, "error": traceback.format_exc()}
        out.write(json.dumps(reply) + "\n")


if __name__ == "__main__":
    main()
