"""Typed options (attrs + cattrs) and run configuration: values from a run file, the environment and --set, the
one-line errors with the full path, and the CLI's exit code 2 without a traceback for every kind of mistake."""

from __future__ import annotations

import os
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Literal

import attrs
import pytest

from agl_kernel.config import build_options, describe_options, load_run_config, options_class, to_toml
from agl_kernel.errors import ConfigError
from agl_kernel.plugins import create_component
from agl_kernel.store.defaults import make_store
from agl_kernel.trainer import Trainer


@attrs.define(kw_only=True)
class Inner:
    r: int = attrs.field(default=16, validator=attrs.validators.ge(1))
    """The rank."""
    modules: list[str] = attrs.field(factory=lambda: ["q", "v"])
    """Which modules."""


@attrs.define(kw_only=True)
class Outer:
    steps: int = attrs.field(default=3, validator=attrs.validators.ge(1))
    """Training steps."""
    rate: float = 0.5
    """A rate."""
    on: bool = False
    """A switch."""
    mode: Literal["fast", "slow"] = "fast"
    """How."""
    limit: float | None = None
    """A limit, or none."""
    inner: Inner | None = None
    """Nested options."""


def test_typed_values_and_strings_are_structured_by_the_field_type() -> None:
    built = build_options(Outer, {"steps": "7", "rate": "2", "on": "yes", "mode": "slow", "limit": "none"})
    assert built == Outer(steps=7, rate=2.0, on=True, mode="slow", limit=None)
    assert build_options(Outer, {"steps": 7, "rate": 1, "on": False, "limit": 1.5}).limit == 1.5
    nested = build_options(Outer, {"inner": {"r": "4", "modules": '["a", "b"]'}})
    assert nested.inner == Inner(r=4, modules=["a", "b"])
    assert build_options(Outer, {"inner": {"modules": "a, b"}}).inner == Inner(modules=["a", "b"])
    assert build_options(Outer, {"inner": "{r = 2}"}).inner == Inner(r=2)
    assert build_options(Outer, {}) == Outer()


@pytest.mark.parametrize(
    ("data", "message"),
    [
        (
            {"stepz": 1},
            "algorithm.stepz: unknown option. Did you mean 'steps'? Valid keys: inner, limit, mode, on, rate, steps",
        ),
        ({"steps": "many"}, "algorithm.steps: expected an integer, got 'many'"),
        ({"steps": True}, "algorithm.steps: expected an integer, got True"),
        ({"steps": 0}, "algorithm.steps: must be >= 1: 0"),
        ({"rate": "fast"}, "algorithm.rate: expected a number, got 'fast'"),
        ({"on": "maybe"}, "algorithm.on: expected true or false, got 'maybe'"),
        ({"mode": "medium"}, "algorithm.mode: expected one of 'fast', 'slow', got 'medium'"),
        ({"inner": {"rank": 2}}, "algorithm.inner.rank: unknown option. Valid keys: modules, r"),
        ({"inner": {"r": 0}}, "algorithm.inner.r: must be >= 1: 0"),
        ({"inner": {"r": "x"}}, "algorithm.inner.r: expected an integer, got 'x'"),
    ],
)
def test_mistakes_are_one_line_errors_with_the_full_path(data: dict, message: str) -> None:
    with pytest.raises(ConfigError) as caught:
        build_options(Outer, data, path="algorithm")
    assert str(caught.value) == message


def test_options_are_documented_from_the_field_docstrings() -> None:
    options = {o.name: o for o in describe_options(Outer)}
    assert (
        options["steps"].type == "integer"
        and options["steps"].default == 3
        and options["steps"].doc == "Training steps."
    )
    assert options["limit"].type == "number or none"
    assert options["mode"].type == "one of 'fast', 'slow'"
    assert options["inner.r"].doc == "The rank." and options["inner.modules"].default == ["q", "v"]


def test_run_file_then_environment_then_set_then_flags(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(
        textwrap.dedent("""
        [run]
        agent = "a:b"
        runners = 2
        [runner]
        name = "litagent"
        heartbeat_interval = 9
        wait_seconds = 2
        stop_grace = 3
        """)
    )
    environ = {"AGL_RUNNER__WAIT_SECONDS": "4", "AGL_RUNNER__STOP_GRACE": "5", "AGL_STORE_TOKEN": "not-config"}
    config = load_run_config(
        str(tmp_path / "run.toml"),
        environ=environ,
        overrides=["runner.stop_grace=6", "run.runners=3"],
        flags={"run.runners": 4, "store.name": "memory", "tracer.name": None},
    )
    assert config.run.runners == 4 and config.run.agent == "a:b"
    runner = config.resolved()["runner"]
    assert runner == {
        "name": "litagent", "heartbeat_interval": 9.0, "wait_seconds": 4.0, "stop_grace": 6.0,
        "store_outage_seconds": 300.0,  # the default
    }  # fmt: skip
    assert config.resolved()["store"] == {"name": "memory", "watchdog_interval": 0.5}
    assert "heartbeat_interval = 9.0" in to_toml(config.resolved())


@pytest.mark.parametrize(
    ("kwargs", "message"),
    [
        ({"overrides": ["algorithm"]}, "--set 'algorithm': expected TABLE.KEY=VALUE"),
        (
            {"overrides": ["algoritm.steps=1"]},
            "unknown table 'algoritm' (--set algoritm.steps=1). Did you mean 'algorithm'?",
        ),
        ({"overrides": ["run.runners=0"]}, "run.runners: must be at least 1, not 0"),
        ({"overrides": ["run.agnt=x"]}, "run.agnt: unknown option. Did you mean 'agent'?"),
        ({"environ": {"AGL_RUN__RUNNERS": "two"}}, "run.runners: expected an integer, got 'two'"),
        ({"data": {"store": "sqlite"}}, "store: expected a table of options"),
        ({"data": {"store": {"name": 3}}}, "store.name: expected a string"),
    ],
)
def test_bad_run_configuration(kwargs: dict, message: str) -> None:
    kwargs.setdefault("environ", {})
    with pytest.raises(ConfigError, match=None) as caught:
        load_run_config(**kwargs)
    assert message in str(caught.value)


def test_a_missing_or_broken_run_file_is_a_config_error(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="no such file"):
        load_run_config(str(tmp_path / "nope.toml"), environ={})
    (tmp_path / "bad.toml").write_text("[run\n")
    with pytest.raises(ConfigError, match="not valid TOML"):
        load_run_config(str(tmp_path / "bad.toml"), environ={})


def test_unknown_component_and_options_a_backend_does_not_take() -> None:
    with pytest.raises(
        ConfigError, match=r"^algorithm.name: No algorithms plugin named 'nope'. Available algorithms: .*baseline"
    ):
        load_run_config(flags={"algorithm.name": "nope"}, environ={}).resolved()
    with pytest.raises(ConfigError, match=r"^store.path: unknown option. Valid keys: watchdog_interval$"):
        load_run_config(flags={"store.name": "memory", "store.path": "x"}, environ={}).resolved()
    with pytest.raises(ConfigError, match=r"^tracer.level: the tracer 'noop' takes no options"):
        load_run_config(overrides=["tracer.level=1"], environ={}).resolved()


def test_python_selection_by_name_takes_validated_options(tmp_path: Path) -> None:
    store = make_store("memory", options={"watchdog_interval": "0.25"})
    assert options_class(type(store)) is not None and store.agl_options == {"watchdog_interval": 0.25}
    with pytest.raises(ConfigError, match=r"^store.path: unknown option"):
        make_store("memory", path="x.db")
    with pytest.raises(ConfigError, match=r"^runner.wait_seconds: must be > 0"):
        create_component("runners", "litagent", options={"wait_seconds": 0})
    with pytest.raises(ConfigError, match=r"^options: unknown table\(s\) \['algoritm'\]"):
        Trainer(store="memory", options={"algoritm": {}})
    trainer = Trainer(
        store="memory",
        runner="litagent",
        options={"runner": {"stop_grace": 2}, "adapter": {"merge": True}, "algorithm": {"timeout": 30}},
        adapter="triplets",
        progress=False,
    )
    assert trainer.runner.options == {"stop_grace": 2} and trainer.adapter.merge is True
    assert trainer.algorithm.timeout == 30.0
    trainer.close()


def test_trainer_from_a_run_file_runs_the_loop(tmp_path: Path) -> None:
    (tmp_path / "run.toml").write_text(
        textwrap.dedent("""
        [run]
        runners = 2
        [store]
        name = "memory"
        [runner]
        stop_grace = 0.5
        """)
    )
    with Trainer.from_config(
        tmp_path / "run.toml", overrides=["runner.heartbeat_interval=1"], progress=False
    ) as trainer:
        report = trainer.dev(lambda task, resources: float(task), [1, 0, 1])
    assert report.by_status == {"succeeded": 3} and report.mean_reward == pytest.approx(2 / 3)
    assert trainer.n_runners == 2 and trainer.runner.options == {"stop_grace": 0.5, "heartbeat_interval": "1"}


# ------------------------------------------------------------------------------------------------------ the CLI

AGENT = """
def agent(task, resources):
    return float(task["x"])

def tasks():
    return [{"x": 1}, {"x": 0}]
"""


def agl(cwd: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if not k.startswith("AGL_")}
    environ.update(env)
    return subprocess.run(
        [sys.executable, "-m", "agl_kernel.cli", *args],
        cwd=cwd,
        env=environ,
        capture_output=True,
        text=True,
        timeout=120,
    )


@pytest.fixture
def project(tmp_path: Path) -> Path:
    (tmp_path / "agents.py").write_text(AGENT)
    return tmp_path


@pytest.mark.parametrize(
    ("args", "env", "message"),
    [
        (["--set", "runner.stop_gracee=1"], {}, "runner.stop_gracee: unknown option. Did you mean 'stop_grace'?"),
        (["--set", "runner.stop_grace=soon"], {}, "runner.stop_grace: expected a number, got 'soon'"),
        ([], {"AGL_RUNNER__STOP_GRACE": "soon"}, "runner.stop_grace: expected a number, got 'soon'"),
        (["--algorithm", "grpoo"], {}, "algorithm.name: No algorithms plugin named 'grpoo'. Available algorithms:"),
        (["--tracer", "otell"], {}, "tracer.name: No tracers plugin named 'otell'"),
        (["--runner", "nope"], {}, "runner.name: No runners plugin named 'nope'"),
        (["--strategy", "slurm"], {}, "strategy.name: No strategies plugin named 'slurm'"),
        (["--store", "memory", "--path", "x.db"], {}, "store.path: unknown option. Valid keys: watchdog_interval"),
        (["--set", "store.bogus=1"], {}, "store.bogus: unknown option"),
        (["--agent", "agents.py:nobody"], {}, "run.agent: 'agents.py:nobody': "),
        (["--dataset", "missing.jsonl"], {}, "run.dataset: cannot read 'missing.jsonl'"),
        (["--config", "nope.toml"], {}, "run file 'nope.toml': no such file"),
    ],
)
def test_agl_train_configuration_mistakes_exit_2_with_one_line(
    project: Path, args: list[str], env: dict[str, str], message: str
) -> None:
    base = ["train", "--agent", "agents.py:agent", "--dataset", "agents.py:tasks", "--store", "memory"]
    result = agl(project, *base, *args, **env)
    assert result.returncode == 2, result.stdout + result.stderr
    assert message in result.stderr
    assert len(result.stderr.strip().splitlines()) == 1 and "Traceback" not in result.stderr


def test_agl_train_and_dev_run_the_builtins_by_name(project: Path) -> None:
    for command in ("train", "dev"):
        result = agl(
            project, command, "--agent", "agents.py:agent", "--dataset", "agents.py:tasks", "--store", "sqlite",
            "--path", "run.db", "--runners", "2", "--set", "runner.stop_grace=0.5", "--strategy", "shm",
        )  # fmt: skip
        assert result.returncode == 0, result.stdout + result.stderr
        assert "rollouts: 2  finished: 2  failed: 0  reward ≥ 1: 1  mean reward: 0.500" in result.stdout
    assert (project / "run.db").exists()


def test_agl_config_prints_the_effective_configuration(project: Path) -> None:
    result = agl(project, "config", "--store", "memory", "--set", "runner.stop_grace=2", AGL_RUN__RUNNERS="3")
    assert result.returncode == 0, result.stderr
    assert "[run]\nrunners = 3\n" in result.stdout
    assert (
        '[runner]\nname = "litagent"\nheartbeat_interval = 5.0\nwait_seconds = 0.5\nstop_grace = 2.0\n' in result.stdout
    )
    assert '[store]\nname = "memory"\nwatchdog_interval = 0.5\n' in result.stdout
    (project / "effective.toml").write_text(result.stdout)
    again = agl(project, "config", "--config", "effective.toml")
    assert again.returncode == 0 and again.stdout == result.stdout.replace("runners = 3", "runners = 3")


def test_agl_plugins_show_prints_types_defaults_and_docs(project: Path) -> None:
    result = agl(project, "plugins", "show", "litagent", COLUMNS="200")
    assert result.returncode == 0, result.stderr
    assert "litagent: runner from agl-kernel" in result.stdout
    line = next(line for line in result.stdout.splitlines() if line.startswith("stop_grace"))
    assert "number" in line and "1.0" in line and "Seconds a stopped agent" in line
    assert "takes no options" not in agl(project, "plugins", "show", "noop").stdout
    assert "no options" in agl(project, "plugins", "show", "noop").stdout
    missing = agl(project, "plugins", "show", "nothing-here")
    assert missing.returncode == 2 and "no component named 'nothing-here'" in missing.stderr


def test_agl_dev_ignores_the_run_files_algorithm(project: Path) -> None:
    (project / "run.toml").write_text(
        '[run]\nagent = "agents.py:agent"\ndataset = "agents.py:tasks"\n[store]\nname = "memory"\n'
        '[algorithm]\nname = "apo"\nbeam_width = 2\n'
    )
    result = agl(project, "dev", "--config", "run.toml")
    assert result.returncode == 0, result.stderr
    assert "rollouts: 2  finished: 2  failed: 0" in result.stdout


def test_agl_store_serve_takes_the_store_by_name_with_checked_options(project: Path) -> None:
    result = agl(project, "store", "serve", "--store", "memory", "--option", "path=x.db", "--port", "0")
    assert (
        result.returncode == 2
        and result.stderr.strip() == "Error: store.path: unknown option. Valid keys: watchdog_interval"
    )


def test_a_bad_value_in_a_table_option_names_its_key() -> None:
    @attrs.define(kw_only=True)
    class Tagged:
        attributes: dict[str, str] = attrs.field(factory=dict)
        """Attributes."""

    assert build_options(Tagged, {"attributes": '{team = "a"}'}).attributes == {"team": "a"}
    with pytest.raises(ConfigError, match=r"^tracer.attributes.team: expected a string, got 1$"):
        build_options(Tagged, {"attributes": {"team": 1}}, path="tracer")
