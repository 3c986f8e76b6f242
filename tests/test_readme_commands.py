"""Every command line in the README's code blocks runs, as written, here (and so in CI).

Each line of a README shell block (a trailing backslash continues it, a ``  # ...`` comment ends it) must have an
entry in ``MAPPED`` naming the step that runs it; a line without one fails
``test_every_readme_command_is_mapped``, which names it: add it to ``MAPPED`` and to the test that runs that step.
``make ...`` lines are exempt: ``make test`` is what CI runs (``.ci/run``), and ``make demo`` (the main job, GRPO
on SmolLM2 for minutes) is run by its own job, not from the test suite.

The commands run through ``bash -c`` in a temporary folder (so ``"$TOKEN"`` expands as in a user's shell), with
this venv's ``agl`` first on PATH and ``tests/readme_fixtures`` on PYTHONPATH: its ``mypkg/agents.py`` is the
package the README's ``mypkg.agents:agent``, ``:tasks`` and ``:prompts`` name, and its ``run.toml`` (copied in) the
README's run file. Only what the README leaves to the reader is filled in (``concrete``):

- an optional flag in brackets (``agl plugins [--check]``) runs both without and with it;
- ``$TOKEN`` is set in the environment; HOST is 127.0.0.1 and the port 4747 a free one (other tests share the
  machine); a server the README starts on its default port (``agl serve-model``, ``agl dashboard``) gets
  ``--port FREE``;
- the model server's ``127.0.0.1:8000`` is the ``agl serve-model`` the test started (on a free port);
- ROLLOUT_ID is a failed rollout that the README's ``agl runner`` line served into ``./.agl/agl.db``;
- ``--runners N`` becomes ``--runners 1`` (CI has two cores);
- ``contrib/`` is a link to the repository's ``contrib/``.

Any other upper-case placeholder or ``$VARIABLE`` fails, asking for a substitution here. Servers (``agl store
serve``, ``agl runner``, ``agl serve-model``, ``agl dashboard``) are started, used (their ``/health`` or
``/v1/models``, a chat completion, rollouts served and read back), then stopped with SIGTERM.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest

pytestmark = pytest.mark.requires_plugin("agl_store_sqlite")

ROOT = Path(__file__).resolve().parents[1]
README = ROOT / "README.md"
FIXTURES = Path(__file__).resolve().parent / "readme_fixtures"
TOKEN = "readme-token"

# Every README command line (comment stripped, spaces collapsed) -> the step that runs it. A step's test runs the
# README lines mapped to it; a step whose line the README lacks (not written yet, or removed) is not run.
MAPPED = {
    "agl plugins [--check]": "plugins",
    "agl plugins show grpo": "plugins show",
    "agl config --config run.toml": "config",
    "agl dev --agent contrib/calc_agent/calc_agent.py:calc_agent "
    "--dataset contrib/calc_agent/calc_agent.py:dataset": "dev",
    "agl dev --agent mypkg.agents:agent --dataset mypkg.agents:tasks "
    "--llm http://127.0.0.1:8000/v1 --llm-model smollm2": "dev with an LLM",
    "agl train --agent mypkg.agents:agent --dataset mypkg.agents:tasks --algorithm apo --set algorithm.beam_width=2 "
    "--resources mypkg.agents:prompts --store sqlite --path runs/a.db --tracer otel --runner litagent --strategy cs "
    "--runners 4": "train apo",
    "agl train --config run.toml --set algorithm.steps=3": "train run file",
    'agl store serve --backend sqlite --port 4747 --token "$TOKEN"': "store serve",
    'agl runner --store http://HOST:4747 --token "$TOKEN" --agent mypkg.agents:agent': "runner",
    "agl rollouts list --status failed --since 1h": "rollouts list",
    "agl rollouts show ROLLOUT_ID": "rollouts show",
    "agl rollouts why ROLLOUT_ID": "rollouts why",
    "agl runs list": "runs list",
    "agl serve-model --model smollm2": "serve-model",
    "agl demo": "demo",
    "agl dashboard --store sqlite --path .agl/agl.db": "dashboard",
}
EXEMPT = re.compile(r"^make\b")
SHELL = {"", "bash", "sh", "shell", "console"}


def readme_command_lines(readme: str) -> list[str]:
    """The command lines of the README's shell blocks (and untagged ones), comments stripped, spaces collapsed."""
    blocks: list[list[str]] = []
    fence: str | None = None  # the open block's language
    for raw in readme.splitlines():
        if raw.startswith("```"):
            if fence is None:
                fence = raw[3:].strip()
                blocks.append([]) if fence in SHELL else None
            else:
                fence = None
        elif fence in SHELL:
            blocks[-1].append(raw)
    lines = []
    for block in blocks:
        for line in "\n".join(block).replace("\\\n", " ").splitlines():
            line = " ".join(re.sub(r"(^|\s)#.*$", "", line).split())
            if line:
                lines.append(line)
    return lines


def readme_lines(step: str) -> list[str]:
    return [line for line in readme_command_lines(README.read_text(encoding="utf-8")) if MAPPED.get(line) == step]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def concrete(line: str, **values: Any) -> list[str]:
    """The shell command(s) a README line stands for, its placeholders filled in with ``values`` (``port``: the
    store server's, ``listen``: a free port for a server that the line starts on its default one, ``model_port``:
    the model server's, for the README's http://127.0.0.1:8000, ``rollout_id``)."""
    command = line
    if "port" in values:
        command = command.replace("HOST:4747", f"127.0.0.1:{values['port']}").replace(
            "--port 4747", f"--port {values['port']}"
        )
    if "model_port" in values:
        command = command.replace("127.0.0.1:8000", f"127.0.0.1:{values['model_port']}")
    if "rollout_id" in values:
        command = re.sub(r"\bROLLOUT_ID\b", values["rollout_id"], command)
    command = re.sub(r"--runners \d+", "--runners 1", command)
    if "listen" in values and "--port" not in command:
        command += f" --port {values['listen']}"
    assert ":8000" not in command, f"README command {line!r} needs the model server's port (model_port)"
    left = [p for p in re.findall(r"\$\{?(\w+)", command) if p != "TOKEN"]
    left += re.findall(r"(?<![\w$.:/-])[A-Z][A-Z_]{2,}\b", command)
    assert not left, (
        f"README command {line!r} has placeholder(s) {left} that tests/test_readme_commands.py does not fill in: "
        "add a substitution to concrete()"
    )
    optional = re.search(r"\s*\[(--[\w-]+)\]", command)
    if optional:
        return [command.replace(optional.group(0), ""), command.replace(optional.group(0), f" {optional.group(1)}")]
    return [command]


@pytest.fixture
def work(tmp_path: Path) -> Path:
    """The folder the commands run in: run.toml copied in, contrib/ linked."""
    shutil.copy(FIXTURES / "run.toml", tmp_path / "run.toml")
    (tmp_path / "contrib").symlink_to(ROOT / "contrib", target_is_directory=True)
    return tmp_path


def environment(**extra: str) -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if not k.startswith("AGL_") and not k.startswith("OPENAI_")}
    env.update(
        PATH=f"{Path(sys.executable).parent}{os.pathsep}{env.get('PATH', '')}",
        PYTHONPATH=os.pathsep.join([str(FIXTURES), *filter(None, [env.get("PYTHONPATH")])]),
        TOKEN=TOKEN,
        COLUMNS="250",
        BROWSER="true",  # `agl dashboard` opens a browser: here `true URL`, which does nothing
        OMP_NUM_THREADS="1",  # torch on a busy 2-core machine: more threads only spin against each other
        PYTHONUNBUFFERED="1",
    )
    env.update(extra)
    return env


def run(command: str, cwd: Path, timeout: float = 180, **env: str) -> subprocess.CompletedProcess:
    result = subprocess.run(
        ["bash", "-c", command],
        cwd=cwd,
        env=environment(**env),
        capture_output=True,
        text=True,
        timeout=timeout,
        check=False,
    )
    assert result.returncode == 0, (
        f"`{command}` exited with {result.returncode}:\n{result.stdout[-4000:]}\n{result.stderr[-4000:]}"
    )
    return result


@contextmanager
def serving(command: str, cwd: Path, ready: Callable[[], bool], timeout: float = 120, **env: str) -> Iterator[None]:
    """``command`` started in the background; yields once ``ready()``; SIGTERM (then SIGKILL) on exit."""
    log = cwd / f"server-{abs(hash(command))}.log"
    with log.open("wb") as out:
        process = subprocess.Popen(
            ["bash", "-c", f"exec {command}"], cwd=cwd, env=environment(**env), stdout=out, stderr=subprocess.STDOUT
        )
    try:
        deadline = time.monotonic() + timeout
        while not ready():
            assert process.poll() is None, f"`{command}` exited with {process.returncode}:\n{log.read_text()[-4000:]}"
            assert time.monotonic() < deadline, f"`{command}` did not answer in {timeout} s:\n{log.read_text()[-4000:]}"
            time.sleep(0.2)
        yield
    finally:
        if process.poll() is None:
            process.send_signal(signal.SIGTERM)
            try:
                process.wait(30)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait(10)


def answers(url: str, **headers: str) -> Callable[[], bool]:
    import httpx

    def ready() -> bool:
        try:
            return httpx.get(url, headers=headers, timeout=1).status_code == 200
        except httpx.HTTPError:
            return False

    return ready


def one(step: str) -> str | None:
    lines = readme_lines(step)
    assert len(lines) <= 1, f"several README lines map to step {step!r}: {lines}; give each its own step"
    return lines[0] if lines else None


# ------------------------------------------------------------------------------------------------------ the tests


def test_every_readme_command_is_mapped() -> None:
    lines = readme_command_lines(README.read_text(encoding="utf-8"))
    assert any(line.startswith("agl ") for line in lines), "found no agl command in README.md's code blocks"
    unmapped = [line for line in lines if line not in MAPPED and not EXEMPT.match(line)]
    assert not unmapped, (
        "README.md has command lines that tests/test_readme_commands.py does not run: "
        + "; ".join(repr(line) for line in unmapped)
        + ". Add each to MAPPED (its step) and run it in the test for that step."
    )


def test_plugins_and_config(work: Path) -> None:
    line = one("plugins")
    if line:
        commands = concrete(line)
        assert len(commands) == 2  # both `agl plugins` and `agl plugins --check`
        for command in commands:
            out = run(command, work).stdout
            assert "grpo" in out and "sqlite" in out and "apo" in out, out
    line = one("plugins show")
    if line:
        out = run(concrete(line)[0], work).stdout
        assert "steps" in out and "batch_size" in out, out
    line = one("config")
    if line:
        out = run(concrete(line)[0], work).stdout
        assert 'name = "grpo"' in out and 'agent = "mypkg.agents:llm_agent"' in out, out
        assert "learning_rate" in out  # the defaults filled in


def test_dev_and_train_from_a_run_file(work: Path) -> None:
    line = one("dev")
    if line:
        out = run(concrete(line)[0], work).stdout
        assert "rollouts: 40  finished: 40  failed: 0" in out, out
    line = one("train run file")
    if line:
        run(concrete(line)[0], work, timeout=300)
        rollouts = stored_rollouts(work / "runs" / "grpo.db")
        grpo = [r for r in rollouts if "grpo_step" in r["metadata"]]
        # --set algorithm.steps=3 over the run file's steps = 1: 3 steps of 2 tasks x 2 rollouts, all served
        assert sorted({r["metadata"]["grpo_step"] for r in grpo}) == [0, 1, 2], grpo
        assert len(grpo) == 12 and all(r["status"] == "succeeded" for r in grpo)


def test_train_apo(work: Path) -> None:
    line = one("train apo")
    if not line:
        return
    from agl_kernel.testing.openai_server import FakeOpenAIServer

    def optimizer(request: dict[str, Any]) -> str:  # APO's optimizer model: one critique, then each edit
        text = "\n".join(m.get("content") or "" for m in request["messages"])
        parent = re.search(r"<prompt>\n(.*?)\n</prompt>", text, re.DOTALL)
        if "Rewrite the prompt template" in text and parent:
            return f"<prompt>{parent.group(1)} Check the divisor first.</prompt>"
        return "The agent fails on a division by zero."

    with FakeOpenAIServer(optimizer) as server:
        out = run(concrete(line)[0], work, timeout=300, OPENAI_BASE_URL=server.base_url, OPENAI_API_KEY="x").stdout
        assert server.calls, out  # the critique and the edits came from the optimizer endpoint
    best = json.loads((work / ".agl" / "apo" / "best_prompts.json").read_text())
    assert best["prompts"], best
    assert (work / "runs" / "a.db").is_file()


def test_store_server_runner_rollouts_and_dashboard(work: Path) -> None:
    import httpx

    from agl_kernel.server import API_PREFIX

    port = free_port()
    url = f"http://127.0.0.1:{port}"
    rollout_id = None
    line = one("store serve")
    assert line, "README.md no longer starts a store server: update tests/test_readme_commands.py"
    with serving(concrete(line, port=port)[0], work, answers(f"{url}/health")):
        assert httpx.get(f"{url}{API_PREFIX}/statistics").status_code == 401  # "$TOKEN" reached the server
        line = one("runner")
        if line:
            with serving(concrete(line, port=port)[0], work, lambda: True):
                statuses = serve_tasks(url)
            assert sorted(statuses.values()) == ["failed", "succeeded", "succeeded", "succeeded"], statuses
            rollout_id = next(rid for rid, status in statuses.items() if status == "failed")

    assert rollout_id, "README.md has no agl runner line: give the rollouts lines a failed rollout another way"
    line = one("rollouts list")
    if line:
        out = run(concrete(line)[0], work).stdout
        assert rollout_id in out and "ZeroDivisionError" in out, out
    line = one("rollouts show")
    if line:
        out = run(concrete(line, rollout_id=rollout_id)[0], work).stdout
        assert "ZeroDivisionError: division by zero" in out and "agents.py" in out, out
    line = one("rollouts why")
    if line:
        out = run(concrete(line, rollout_id=rollout_id)[0], work).stdout
        assert rollout_id in out and "ZeroDivisionError" in out, out
    line = one("runs list")
    if line:
        out = run(concrete(line)[0], work).stdout
        # The runner line's rollouts were enqueued by the test outside any run: 4 rollouts, 3 finished, 1 failed.
        assert "finished" in out and re.search(r"\(no run\).*\b4\s+3\s+1\b", out), out
    line = one("dashboard")
    if line:
        listen = free_port()
        dashboard = f"http://127.0.0.1:{listen}"
        with serving(concrete(line, listen=listen)[0], work, answers(f"{dashboard}/health")):
            found = httpx.get(f"{dashboard}{API_PREFIX}/rollouts/{rollout_id}", timeout=10)
            assert found.status_code == 200 and found.json()["status"] == "failed", found.text


def test_serve_model_and_demo(work: Path) -> None:
    line = one("serve-model")
    if line:
        pytest.importorskip("agl_model_server")
        import httpx

        listen = free_port()
        base = f"http://127.0.0.1:{listen}/v1"
        # The first start converts the bundled model once (about 40 s); later ones take seconds.
        with serving(concrete(line, listen=listen)[0], work, answers(f"{base}/models"), timeout=300):
            reply = httpx.post(
                f"{base}/chat/completions",
                json={"model": "smollm2", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4},
                timeout=120,
            )
            assert reply.status_code == 200 and reply.json()["choices"][0]["message"]["content"], reply.text
            line = one("dev with an LLM")
            if line:  # the agent asks the model server on every task; the last task fails after its call
                out = run(concrete(line, model_port=listen)[0], work).stdout
                assert "main_llm (LLM)" in out and "rollouts: 4  finished: 3  failed: 1" in out, out
    line = one("demo")
    if line:
        out = run(concrete(line)[0], work).stdout
        assert "finished: 20" in out and "failed: 0" in out, out


# ------------------------------------------------------------------------------------------------------ helpers


def stored_rollouts(path: Path) -> list[dict[str, Any]]:
    import asyncio

    from agl_kernel.store.defaults import make_store

    async def read() -> list[dict[str, Any]]:
        store = make_store("sqlite", path=path)
        try:
            items = (await store.query_rollouts()).items
            return [{"id": r.rollout_id, "status": r.status.value, "metadata": dict(r.metadata)} for r in items]
        finally:
            await store.close()

    return asyncio.run(read())


def serve_tasks(url: str, timeout: float = 60) -> dict[str, str]:
    """Enqueue the fixture's tasks on the store server and wait for the runner to end them: id -> status."""
    import asyncio

    from agl_kernel.client import LightningStoreClient
    from agl_kernel.models import EnqueueRequest, RolloutConfig

    sys.path.insert(0, str(FIXTURES))
    try:
        from mypkg.agents import tasks
    finally:
        sys.path.remove(str(FIXTURES))

    async def go() -> dict[str, str]:
        async with LightningStoreClient(url, token=TOKEN) as store:
            once = RolloutConfig(max_attempts=1)
            enqueued = await store.enqueue_many_rollouts([EnqueueRequest(input=t, config=once) for t in tasks])
            deadline = time.monotonic() + timeout
            while True:
                rollouts = [await store.get_rollout(r.rollout_id) for r in enqueued]
                statuses = {r.rollout_id: r.status.value for r in rollouts}
                if all(s in ("succeeded", "failed") for s in statuses.values()):
                    return statuses
                assert time.monotonic() < deadline, f"the runner did not serve the rollouts: {statuses}"
                await asyncio.sleep(0.2)

    return asyncio.run(go())
