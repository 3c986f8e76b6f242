"""Schemathesis against the served OpenAPI document, with every check it has: the responses match the document
(status codes, content types, headers, bodies), schema-valid requests are accepted and schema-invalid ones refused,
undeclared methods get a 405 with ``Allow``, resources created through one operation are found through the others
(stateful phase), operations that need the token refuse requests without it, and no answer is a 5xx; plus a check
of ours: every refusal carries a message and no traceback.

It runs the ``st run`` command line (schemathesis 4.x) as a user would, against real uvicorn servers on 127.0.0.1:
the memory store without a token and the SQLite store with one, with the dashboard's routes on both. All four
phases run (examples, coverage, fuzzing, stateful); the examples phase finds nothing to send (the document has no
examples), the others send a few thousand requests per backend. The seed is fixed, so a run is repeatable.
"""

from __future__ import annotations

import asyncio
import json
import os
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

pytest.importorskip("schemathesis", reason="pip install schemathesis")

import httpx

from agl_kernel.server import ServerThread, create_app
from agl_kernel.server._openapi import openapi_document
from agl_kernel.store.memory import InMemoryLightningStore

EXAMPLES_PER_OPERATION = 15
"""Per operation and phase (``--max-examples``). On the 2-core CI machine the memory store's run takes about a minute,
the SQLite store's (with the token: 3,676 cases) about a minute and a half."""
SEED = int(os.environ.get("AGL_FUZZ_SEED", "20261206"))
"""Fixed, so that a run is repeatable; ``AGL_FUZZ_SEED=<n>`` explores others."""
TOKEN = "fuzz-token"

CONFIG = """
# schemathesis 4.x. Every check is on (`enabled = true`: its built-in ones and ours, from the hooks file). What
# follows narrows two of them where the document cannot say in JSON Schema what the server does, each for the
# operations named and no others. (On the command line, `--checks all` would override these per-operation
# settings, so the checks are chosen here.)
[checks]
enabled = true

# OTLP's body is protobuf or JSON whose spans must carry the agl.rollout_id and agl.attempt_id attributes (on the
# span or on its resource), in either field spelling: JSON Schema cannot say which bytes are a valid protobuf
# message, nor (reasonably) which of the two places holds the ids. So a body that matches the document may still be
# refused with 400, which says why; everything else about the route (its statuses, content types, error bodies,
# the refusal of a body that is not even an object) is checked as for the others.
[[operations]]
include-path = "/v1/traces"
checks.positive_data_acceptance.expected-statuses = ["2xx", 400, 401, 403, 404, 409, 429, "5xx"]

# ensure_resource_availability (stateful) reads a 404 after a successful create as "the created resource is not
# found" when every path and query parameter came from the link. These operations also take ids in their bodies,
# which schemathesis fills with ids of other objects or random strings: the attempt of a span query, the rollouts
# to wait for or delete, the resources set of a new rollout or of a patch. Their 404 then names that id (the
# message says which), not the rollout the link created; reading that rollout through these operations with the
# body's ids right is what the store's conformance suite checks.
[[operations]]
include-path-regex = "^/api/v1/rollouts/(\\\\{rollout_id\\\\}/spans/query|wait|delete|start|batch)$"
checks.ensure_resource_availability.enabled = false

[[operations]]
include-name = "PATCH /api/v1/rollouts/{rollout_id}"
checks.ensure_resource_availability.enabled = false
"""

HOOKS = '''
import schemathesis

INTEGERS = -(2**63), 2**64 - 1


def _as_json_means_it(value):
    if isinstance(value, float) and value.is_integer() and not INTEGERS[0] <= value <= INTEGERS[1]:
        return int(value)
    if isinstance(value, dict):
        return {key: _as_json_means_it(item) for key, item in value.items()}
    if isinstance(value, list):
        return [_as_json_means_it(item) for item in value]
    return value


@schemathesis.hook
def before_call(context, case, kwargs):
    """Write a whole number beyond 64 bits as the integer it is. JSON Schema has numbers, not integer and float
    literals: to it 1e300 is the integer 10**300, beyond the range the document allows for integers in a JSON value.
    The server reads the literal: an integer literal that large is refused (the stores cannot keep it), a float
    literal is kept. Sent as an integer literal, the value means to the server what it means to the document."""
    if isinstance(case.body, (dict, list, float)):
        case.body = _as_json_means_it(case.body)


@schemathesis.check
def refusals_explain_themselves(ctx, response, case):
    """Every 4xx/5xx says what was wrong (a message), and never shows a traceback."""
    if response.status_code < 400:
        return None
    if "Traceback" in response.text:
        raise AssertionError(f"{response.status_code} with a traceback in the answer")
    content_type = (response.headers.get("content-type") or [""])[0]
    if content_type.startswith("application/json"):
        body = response.json()
        message = body.get("message") if isinstance(body, dict) else None
        if not (isinstance(message, str) and message.strip()):
            raise AssertionError(f"{response.status_code} without a message: {response.text[:300]}")
    return None
'''


def _route_handlers() -> list[Any]:
    try:
        from agl_dashboard import dashboard_routes
    except ImportError:  # the dashboard plugin is not installed: the kernel's routes alone
        return []
    return dashboard_routes()


def _app(store: Any, **options: Any) -> Any:
    # Short long polls: a generated `timeout: 60` must not hold the run for a minute.
    return create_app(store, plugins=False, route_handlers=_route_handlers(), max_wait=0.2, poll_slice=0.1, **options)


@pytest.fixture(scope="module")
def memory_server() -> Iterator[ServerThread]:
    with ServerThread(_app(InMemoryLightningStore())) as server:
        yield server


@pytest.fixture(scope="module")
def sqlite_server(tmp_path_factory: pytest.TempPathFactory) -> Iterator[ServerThread]:
    sqlite = pytest.importorskip("agl_store_sqlite", reason="pip install agl-store-sqlite")
    store = sqlite.SqliteLightningStore(tmp_path_factory.mktemp("fuzz") / "fuzz.db")
    with ServerThread(_app(store, token=TOKEN)) as server:
        yield server


def test_the_served_document_is_the_one_the_app_builds(memory_server: ServerThread) -> None:
    served = httpx.get(f"{memory_server.url}/schema/openapi.json").json()
    store = InMemoryLightningStore()
    try:
        assert served == json.loads(json.dumps(openapi_document(_app(store))))
    finally:
        asyncio.run(store.close())
    assert len(served["paths"]) >= 25


NARROWED = {
    ("POST", "/v1/traces"): set(),  # positive_data_acceptance on, with 400 among the statuses it expects
    **{
        ("POST", f"/api/v1/rollouts/{tail}"): {"ensure_resource_availability"}
        for tail in ("{rollout_id}/spans/query", "wait", "delete", "start", "batch")
    },
    ("PATCH", "/api/v1/rollouts/{rollout_id}"): {"ensure_resource_availability"},
}
"""The operations the configuration narrows a check for, and the checks it turns off there."""


def test_the_configuration_turns_every_check_on_but_where_it_says(memory_server: ServerThread, tmp_path: Path) -> None:
    import schemathesis
    from schemathesis.checks import CHECKS, load_all_checks

    load_all_checks()
    (tmp_path / "schemathesis.toml").write_text(CONFIG)
    config = schemathesis.Config.from_path(str(tmp_path / "schemathesis.toml"))
    schema = schemathesis.openapi.from_dict(httpx.get(f"{memory_server.url}/schema/openapi.json").json(), config=config)
    builtin = {check.__name__ for check in CHECKS.get_all()}
    assert {"ensure_resource_availability", "ignored_auth", "negative_data_rejection", "use_after_free"} <= builtin
    narrowed = 0
    for path, methods in schema.raw_schema["paths"].items():
        for method in methods:
            operation = schema[path][method.upper()]
            off = NARROWED.get((method.upper(), path), set())
            narrowed += (method.upper(), path) in NARROWED
            for phase in ("coverage", "fuzzing", "stateful"):
                checks = schema.config.checks_config_for(operation=operation, phase=phase)
                enabled = {name for name in builtin if checks.get_by_name(name=name).enabled}
                assert enabled == builtin - off, (method, path, phase, builtin - enabled)
    assert narrowed == len(NARROWED)
    traces = schema.config.checks_config_for(operation=schema["/v1/traces"]["POST"])
    assert {"400", "2xx"} <= {str(code) for code in traces.positive_data_acceptance.expected_statuses}


def _schemathesis(url: str, workdir: Path, *, token: str | None = None) -> tuple[dict[str, Any], str, float]:
    """Run ``st run`` against ``url``; its JSON report, its output and the seconds it took."""
    workdir.mkdir(parents=True, exist_ok=True)
    hooks = workdir / "hooks.py"
    hooks.write_text(HOOKS)
    config = workdir / "schemathesis.toml"
    config.write_text(f"hooks = {json.dumps(str(hooks))}\n" + CONFIG)
    reports = workdir / "reports"
    command = [
        sys.executable, "-m", "schemathesis.cli", "--config-file", str(config), "--no-color",
        "run", f"{url}/schema/openapi.json", "--max-examples", str(EXAMPLES_PER_OPERATION),
        "--seed", str(SEED), "--workers", "1", "--request-timeout", "10",
        "--report", "json", "--report-dir", str(reports),
    ]  # fmt: skip
    if token is not None:
        command += ["--header", f"Authorization: Bearer {token}"]
    started = time.perf_counter()
    run = subprocess.run(command, check=False, capture_output=True, text=True, timeout=400, cwd=workdir)
    seconds = time.perf_counter() - started
    output = run.stdout + run.stderr
    found = sorted(reports.glob("*.json"))
    assert found, f"schemathesis wrote no report (exit code {run.returncode}):\n{output[-3000:]}"
    return json.loads(found[-1].read_text()), output, seconds


def _check(report: dict[str, Any], output: str, seconds: float, what: str) -> None:
    cases = report["test_cases"]
    print(
        f"schemathesis ({what}): {cases['generated']} test cases, {cases['unique_failures']} failures, "
        f"{len(report['errors'])} errors, {report['operations']['tested']} operations, {seconds:.1f} s"
    )
    tail = output[-8000:]
    assert report["errors"] == [], f"schemathesis could not test everything:\n{tail}"
    assert report["failures"] == [] and cases["unique_failures"] == 0, f"schemathesis found failures:\n{tail}"
    assert report["operations"]["tested"] == report["operations"]["selected"] >= 30, report["operations"]
    phases = report["phases"]
    for phase in ("coverage", "fuzzing", "stateful"):
        assert phases[phase]["status"] == "success", (phase, phases[phase], tail)
    assert cases["generated"] >= 1000, cases


@pytest.mark.slow
def test_schemathesis_finds_nothing_with_the_memory_store(memory_server: ServerThread, tmp_path: Path) -> None:
    _check(*_schemathesis(memory_server.url, tmp_path), "memory store, no token")


@pytest.mark.slow
def test_schemathesis_finds_nothing_with_the_sqlite_store_and_a_token(
    sqlite_server: ServerThread, tmp_path: Path
) -> None:
    report, output, seconds = _schemathesis(sqlite_server.url, tmp_path, token=TOKEN)
    _check(report, output, seconds, "SQLite store, with a token")
    assert report["warnings"]["missing_auth"] == [], report["warnings"]
