"""The plugin system: discovery, loading by name, errors, hooks, environment switches, and a real third-party
distribution (tests/fixtures/agl_example_plugin) installed into a temporary directory and used from subprocesses."""

from __future__ import annotations

import contextlib
import importlib
import inspect
import json
import os
import shutil
import subprocess
import sys
import textwrap
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pluggy
import pytest
from stevedore.extension import ExtensionManager

import agl_kernel
from agl_kernel import LightningStore
from agl_kernel.errors import MissingDependencyError, PluginError, PluginNotFoundError
from agl_kernel.plugins import (
    BUILTIN_HOOKS,
    KINDS,
    AglPluginWarning,
    PluginInfo,
    create_component,
    entry_point_group,
    get_plugin_manager,
    hookimpl,
    hookspecs,
    list_plugins,
    load_component,
    reset_plugin_manager,
)
from agl_kernel.store.memory import InMemoryLightningStore

REPO = Path(__file__).resolve().parents[1]
FIXTURE = REPO / "tests" / "fixtures" / "agl_example_plugin"
TEMPLATE = REPO / "plugins" / "_template"
BUILTINS = {
    ("algorithms", "baseline"),
    ("runners", "litagent"),
    ("stores", "memory"),
    ("strategies", "shm"),
    ("tracers", "noop"),
}
EXAMPLE_ENTRIES = {
    ("algorithms", "example"),
    ("algorithms", "broken"),
    ("stores", "example"),
    ("plugins", "example"),
    ("plugins", "broken-hooks"),
}
SWITCHES = ("AGL_PLUGINS", "AGL_DISABLE_PLUGIN_AUTOLOAD")


# ---------------------------------------------------------------------------------------------------- fixtures


@pytest.fixture(autouse=True)
def clean_plugin_state(monkeypatch: pytest.MonkeyPatch) -> Iterator[None]:
    for switch in SWITCHES:
        monkeypatch.delenv(switch, raising=False)
    reset_plugin_manager()
    yield
    reset_plugin_manager()


@pytest.fixture(scope="session")
def example_site(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """agl-example-plugin, built and installed once into a temporary directory (never into the project's venv)."""
    source = tmp_path_factory.mktemp("example-src") / "agl_example_plugin"
    shutil.copytree(FIXTURE, source, ignore=shutil.ignore_patterns("build", "*.egg-info", "__pycache__"))
    site = tmp_path_factory.mktemp("example-site")
    subprocess.run(
        [sys.executable, "-m", "pip", "install", "-q", "--no-deps", "--no-build-isolation", "--target", site, source],
        check=True,
        capture_output=True,
    )
    assert (site / "agl_example_plugin" / "hooks.py").exists()
    return site


@contextlib.contextmanager
def on_sys_path(directory: Path) -> Iterator[Path]:
    """``directory`` first on sys.path; afterwards its modules are forgotten and plugins rediscovered."""
    sys.path.insert(0, str(directory))
    reset_plugin_manager()
    try:
        yield directory
    finally:
        sys.path.remove(str(directory))
        for name, module in list(sys.modules.items()):
            if str(getattr(module, "__file__", None) or "").startswith(str(directory)):
                del sys.modules[name]
        reset_plugin_manager()


@pytest.fixture
def with_example(example_site: Path) -> Iterator[Path]:
    """The example plugin on sys.path of this process."""
    with on_sys_path(example_site):
        yield example_site


@pytest.fixture
def site(tmp_path: Path) -> Iterator[Path]:
    """An empty directory on sys.path, for distributions written by :func:`install_distribution`."""
    with on_sys_path(tmp_path / "site") as directory:
        yield directory


def install_distribution(
    site: Path,
    name: str,
    *,
    entry_points: dict[str, dict[str, str]],
    modules: dict[str, str],
    version: str = "1.0",
    requires: tuple[str, ...] = (),
) -> None:
    """Write an installed distribution (``.dist-info`` with METADATA and entry_points.txt, plus modules)."""
    site.mkdir(parents=True, exist_ok=True)
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir()
    requirements = "".join(f"Requires-Dist: {r}\n" for r in requires)
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n{requirements}")
    lines = []
    for group, entries in entry_points.items():
        lines += [f"[{group}]", *(f"{key} = {value}" for key, value in entries.items()), ""]
    (dist_info / "entry_points.txt").write_text("\n".join(lines))
    for module, source in modules.items():
        (site / f"{module}.py").write_text(textwrap.dedent(source))


def run_python(site: Path, *args: str, **env: str) -> subprocess.CompletedProcess[str]:
    environ = {k: v for k, v in os.environ.items() if k not in SWITCHES}
    environ.update(PYTHONPATH=str(site), COLUMNS="200", **env)
    return subprocess.run([sys.executable, *args], capture_output=True, text=True, env=environ, timeout=120)


def entries(infos: list[PluginInfo]) -> set[tuple[str, str]]:
    return {(info.kind, info.name) for info in infos}


# --------------------------------------------------------------------------------------------- hooks and specs


def test_markers_are_defined_once_for_project_agl() -> None:
    import agl_kernel.plugins as plugins

    assert plugins.hookimpl is hookspecs.hookimpl and plugins.hookspec is hookspecs.hookspec
    assert hookspecs.hookimpl.project_name == hookspecs.hookspec.project_name == "agl"


HOOKS = sorted(name for name in dir(hookspecs) if name.startswith("agl_"))


def test_hookspecs_are_registered_and_documented() -> None:
    assert sorted(name for name in hookspecs.__all__ if name.startswith("agl_")) == HOOKS
    manager = get_plugin_manager()
    docs = (REPO / "docs" / "writing-plugins.md").read_text()
    for name in HOOKS:
        assert getattr(manager.hook, name).has_spec(), name
        doc = inspect.getdoc(getattr(hookspecs, name))
        assert doc and "\n" not in doc, f"{name} needs a one-line docstring"
        assert f"`{name}(" in docs, f"{name} is not documented in docs/writing-plugins.md"


class RecordingPlugin:
    """Implements every hook the way a plugin author would, and records each call."""

    def __init__(self) -> None:
        self.calls: list[tuple[str, dict[str, Any]]] = []

    @hookimpl
    def agl_register_commands(self, cli: Any) -> None:
        self.calls.append(("agl_register_commands", {"cli": cli}))

    @hookimpl
    def agl_register_routes(self, register: Any, server: Any) -> None:
        self.calls.append(("agl_register_routes", {"register": register, "server": server}))

    @hookimpl
    def agl_on_rollout_start(self, rollout: Any, attempt: Any, runner: Any) -> None:
        self.calls.append(("agl_on_rollout_start", {"rollout": rollout, "attempt": attempt, "runner": runner}))

    @hookimpl
    def agl_on_rollout_end(self, rollout: Any, attempt: Any, runner: Any, status: Any) -> None:
        call = {"rollout": rollout, "attempt": attempt, "runner": runner, "status": status}
        self.calls.append(("agl_on_rollout_end", call))

    @hookimpl
    def agl_on_trace_start(self, rollout_id: Any, attempt_id: Any, tracer: Any) -> None:
        call = {"rollout_id": rollout_id, "attempt_id": attempt_id, "tracer": tracer}
        self.calls.append(("agl_on_trace_start", call))

    @hookimpl
    def agl_on_trace_end(self, rollout_id: Any, attempt_id: Any, tracer: Any, spans: Any) -> None:
        call = {"rollout_id": rollout_id, "attempt_id": attempt_id, "tracer": tracer, "spans": spans}
        self.calls.append(("agl_on_trace_end", call))

    @hookimpl
    def agl_on_store_created(self, store: Any) -> None:
        self.calls.append(("agl_on_store_created", {"store": store}))


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_can_be_implemented_and_is_called_with_keywords(hook: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hasattr(RecordingPlugin, hook), f"add {hook} to RecordingPlugin"
    # Only the built-ins besides the recording plugin: installed plugins (the dashboard's routes, say) would be
    # called with the placeholder arguments below too.
    monkeypatch.setenv("AGL_DISABLE_PLUGIN_AUTOLOAD", "1")
    reset_plugin_manager()
    plugin = RecordingPlugin()
    manager = get_plugin_manager()
    manager.unregister(name=BUILTIN_HOOKS)  # the kernel's own would use the placeholder arguments
    manager.register(plugin)  # pluggy checks the implementation's arguments against the spec
    arguments = {name: object() for name in inspect.signature(getattr(hookspecs, hook)).parameters}
    try:
        getattr(manager.hook, hook)(**arguments)
        assert plugin.calls == [(hook, arguments)]
        with pytest.raises(TypeError):
            getattr(manager.hook, hook)(*arguments.values())
    finally:
        reset_plugin_manager()  # the next test builds it again, with every installed plugin


def test_plugin_manager_is_built_lazily() -> None:
    probe = (
        "import sys, agl_kernel, agl_kernel.plugins, agl_kernel.cli\n"
        "from agl_kernel.plugins import _manager\n"
        "assert _manager._manager is None, 'plugin manager built at import time'\n"
        "assert 'rich' not in sys.modules, 'rich imported at CLI start-up'\n"
        "print('ok')"
    )
    result = run_python(REPO, "-c", probe)
    assert result.returncode == 0 and result.stdout.strip() == "ok", result.stderr


def test_plugin_manager_is_shared_until_reset() -> None:
    first = get_plugin_manager()
    assert isinstance(first, pluggy.PluginManager) and first.project_name == "agl"
    assert get_plugin_manager() is first
    reset_plugin_manager()
    assert get_plugin_manager() is not first


# --------------------------------------------------------------------------------------------- built-ins, errors


def test_builtins_are_listed_from_metadata() -> None:
    infos = list_plugins()
    assert entries(infos) >= BUILTINS
    for info in infos:
        if (info.kind, info.name) in BUILTINS:
            assert info.distribution == "agl-kernel" and info.version == agl_kernel.__version__
            assert info.error is None and ":" in info.module
    assert infos == sorted(infos, key=lambda i: (i.kind, i.name, i.distribution))
    assert entries(list_plugins("stores")) >= {("stores", "memory")}
    assert {info.kind for info in list_plugins("stores")} == {"stores"}


def test_kinds_and_groups() -> None:
    assert KINDS == (
        "stores",
        "tracers",
        "runners",
        "strategies",
        "algorithms",
        "adapters",
        "credit",
        "llm_backends",
        "plugins",
    )
    assert [entry_point_group(kind) for kind in KINDS][:2] == ["agl.stores", "agl.tracers"]


async def _use_memory_store(store: InMemoryLightningStore) -> None:
    async with store:
        rollout = await store.enqueue_rollout({"q": 1})
        assert (await store.get_rollout(rollout.rollout_id)).input == {"q": 1}


@pytest.mark.asyncio
async def test_load_and_create_builtin_memory_store() -> None:
    assert load_component("stores", "memory") is InMemoryLightningStore
    store = create_component("stores", "memory", watchdog_interval=1.0)
    assert isinstance(store, InMemoryLightningStore)
    await _use_memory_store(store)
    assert create_component("stores", store) is store
    assert isinstance(create_component("stores", InMemoryLightningStore), InMemoryLightningStore)
    with pytest.raises(TypeError, match="already created"):
        create_component("stores", store, watchdog_interval=1.0)


def test_unknown_name_lists_available_names_and_how_to_install() -> None:
    with pytest.raises(PluginNotFoundError) as raised:
        load_component("stores", "nope")
    message = str(raised.value)
    assert "'nope'" in message and "memory" in message and "pip install agl-store-nope" in message
    with pytest.raises(PluginNotFoundError, match="pip install agl-algo-fancy"):
        create_component("algorithms", "fancy")


def test_unknown_kind_lists_kinds() -> None:
    kinds = "stores, tracers, runners, strategies, algorithms, adapters, credit, llm_backends, plugins"
    with pytest.raises(ValueError, match=kinds):
        load_component("widgets", "memory")
    with pytest.raises(ValueError, match="Did you mean 'stores'"):
        load_component("store", "memory")
    with pytest.raises(ValueError, match="Did you mean 'strategies'"):
        create_component("strategy", "shm")
    with pytest.raises(ValueError):
        list_plugins("widgets")


# ------------------------------------------------------------------------------------ the example, in-process


def test_example_plugin_is_discovered_with_distribution_and_version(with_example: Path) -> None:
    infos = list_plugins()
    assert entries(infos) >= EXAMPLE_ENTRIES | BUILTINS
    example = {(i.kind, i.name): i for i in infos if i.distribution == "agl-example-plugin"}
    assert set(example) == EXAMPLE_ENTRIES
    assert {i.version for i in example.values()} == {"0.3.1"}
    assert example["algorithms", "broken"].module == "agl_example_plugin.broken:BrokenAlgorithm [fancy]"
    assert all(i.error is None for i in infos), "listing must not import plugins"


def test_check_reports_broken_plugins_and_loads_the_rest(with_example: Path) -> None:
    checked = {(i.kind, i.name): i for i in list_plugins(check=True)}
    assert "pip install 'agl-example-plugin[fancy]'" in (checked["algorithms", "broken"].error or "")
    assert "agl_missing_hook_dependency" in (checked["plugins", "broken-hooks"].error or "")
    assert checked["algorithms", "example"].error is None and checked["stores", "memory"].error is None


def test_missing_dependency_names_the_extra_to_install(with_example: Path) -> None:
    with pytest.raises(MissingDependencyError) as raised:
        load_component("algorithms", "broken")
    message = str(raised.value)
    assert "agl_nonexistent_dependency" in message and "agl-example-plugin 0.3.1" in message
    assert "pip install 'agl-example-plugin[fancy]'" in message
    assert isinstance(raised.value, ImportError) and isinstance(raised.value.__cause__, ModuleNotFoundError)


def test_broken_hook_plugin_warns_and_the_rest_work(with_example: Path) -> None:
    with pytest.warns(AglPluginWarning, match="'broken-hooks'.*agl_missing_hook_dependency.*skipped"):
        manager = get_plugin_manager()
    assert manager.get_plugin("example") is not None and manager.get_plugin("broken-hooks") is None
    assert load_component("algorithms", "example").__name__ == "ExampleAlgorithm"


@pytest.mark.asyncio
@pytest.mark.filterwarnings("ignore::agl_kernel.plugins.AglPluginWarning")
async def test_example_store_and_algorithm_by_name(with_example: Path) -> None:
    from agl_example_plugin import hooks

    store = create_component("stores", "example", tag="tested")
    assert type(store).__name__ == "ExampleStore" and isinstance(store, InMemoryLightningStore)
    assert hooks.CREATED_STORES[-1:] == ["ExampleStore"], "agl_on_store_created was not called"
    algorithm = create_component("algorithms", "example", repeat=2)
    async with store:
        rollout_ids = await algorithm.run(store, ["a", "b"])
        rollouts = [await store.get_rollout(rid) for rid in rollout_ids]
    assert [r.input for r in rollouts] == ["a", "a", "b", "b"]
    assert {r.metadata["tagged_by"] for r in rollouts} == {"tested"}


def test_a_distribution_installed_while_running_is_found_after_reset(
    example_site: Path, site: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    site.mkdir()
    assert ("stores", "example") not in entries(list_plugins())
    # A stale stevedore cache must not hide it: agl reads importlib.metadata, not stevedore's scan.
    monkeypatch.setitem(ExtensionManager.ENTRY_POINT_CACHE, "agl.stores", [])
    shutil.copytree(example_site, site, dirs_exist_ok=True)  # what `pip install --target site` writes
    reset_plugin_manager()
    assert ("stores", "example") in entries(list_plugins())
    assert load_component("stores", "example").__name__ == "ExampleStore"


def test_a_new_sys_path_entry_is_seen_without_reset(example_site: Path) -> None:
    assert ("stores", "example") not in entries(list_plugins())
    sys.path.insert(0, str(example_site))
    try:
        assert ("stores", "example") in entries(list_plugins())
    finally:
        sys.path.remove(str(example_site))
    assert ("stores", "example") not in entries(list_plugins())


# ------------------------------------------------------------------------------------------ environment switches


def test_disable_autoload_keeps_only_kernel_builtins(with_example: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("AGL_DISABLE_PLUGIN_AUTOLOAD", "1")
    assert {i.distribution for i in list_plugins()} == {"agl-kernel"}
    assert entries(list_plugins()) >= BUILTINS
    with pytest.raises(PluginNotFoundError, match="hidden by AGL_DISABLE_PLUGIN_AUTOLOAD=1"):
        load_component("stores", "example")
    assert get_plugin_manager().get_plugin("example") is None
    monkeypatch.setenv("AGL_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert entries(list_plugins()) >= EXAMPLE_ENTRIES


@pytest.mark.parametrize(
    "selection, expected",
    [
        ("agl-example-plugin", EXAMPLE_ENTRIES),
        ("agl_example_plugin", EXAMPLE_ENTRIES),
        ("other-dist, example", {("algorithms", "example"), ("stores", "example"), ("plugins", "example")}),
        ("other-dist", set()),
    ],
)
def test_agl_plugins_selects_distributions_or_names(
    with_example: Path, monkeypatch: pytest.MonkeyPatch, selection: str, expected: set[tuple[str, str]]
) -> None:
    monkeypatch.setenv("AGL_PLUGINS", selection)
    monkeypatch.setenv("AGL_DISABLE_PLUGIN_AUTOLOAD", "1")  # AGL_PLUGINS wins, as PYTEST_PLUGINS does
    infos = list_plugins()
    assert {(i.kind, i.name) for i in infos if i.distribution == "agl-example-plugin"} == expected
    assert entries(infos) >= BUILTINS


# --------------------------------------------------------------------------------- other failures, synthetic dists


def test_import_errors_other_than_missing_modules_are_plugin_errors(site: Path) -> None:
    install_distribution(
        site,
        "agl-algo-faulty",
        entry_points={"agl.algorithms": {"faulty": "agl_algo_faulty:Algo", "gone": "agl_algo_faulty_gone:Algo"}},
        modules={"agl_algo_faulty": "raise RuntimeError('bad config at import')\n"},
    )
    with pytest.raises(PluginError, match="agl-algo-faulty 1.0.*RuntimeError: bad config at import") as raised:
        load_component("algorithms", "faulty")
    assert not isinstance(raised.value, MissingDependencyError)
    with pytest.raises(PluginError, match="does not exist.*pip install --force-reinstall agl-algo-faulty") as gone:
        load_component("algorithms", "gone")
    assert not isinstance(gone.value, MissingDependencyError)


def test_missing_required_dependency_names_it(site: Path) -> None:
    install_distribution(
        site,
        "agl-store-needy",
        entry_points={"agl.stores": {"needy": "agl_store_needy:Store"}},
        modules={"agl_store_needy": "import agl_needed_driver\n"},
    )
    with pytest.raises(MissingDependencyError, match="pip install agl_needed_driver"):
        load_component("stores", "needy")


def test_two_distributions_with_one_name_is_an_error_naming_both(site: Path) -> None:
    for dist in ("agl-store-a", "agl-store-b"):
        module = dist.replace("-", "_")
        install_distribution(
            site,
            dist,
            entry_points={"agl.stores": {"same": f"{module}:Store"}},
            modules={module: "class Store:\n    pass\n"},
        )
    with pytest.raises(PluginError, match="agl-store-a 1.0.*agl-store-b 1.0"):
        load_component("stores", "same")
    assert [i.distribution for i in list_plugins("stores") if i.name == "same"] == ["agl-store-a", "agl-store-b"]


def test_hook_plugin_with_unknown_hook_is_skipped_with_the_known_hooks(site: Path) -> None:
    install_distribution(
        site,
        "agl-typo",
        entry_points={"agl.plugins": {"typo": "agl_typo", "good": "agl_good"}},
        modules={
            "agl_typo": "from agl_kernel.plugins import hookimpl\n@hookimpl\ndef agl_store_creatd(store): pass\n",
            "agl_good": "from agl_kernel.plugins import hookimpl\n@hookimpl\ndef agl_on_store_created(store): pass\n",
        },
    )
    with pytest.warns(AglPluginWarning, match=r"unknown hooks \['agl_store_creatd'\].*agl_on_store_created"):
        manager = get_plugin_manager()
    assert manager.get_plugin("typo") is None and manager.get_plugin("good") is not None


# ------------------------------------------------------------------------------- the example, from subprocesses


def test_cli_lists_builtins_and_the_example_plugin(example_site: Path) -> None:
    result = run_python(example_site, "-m", "agl_kernel.cli", "plugins", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert all(
        set(item) == {"kind", "name", "distribution", "version", "module", "error", "requires_kernel", "note"}
        for item in listed
    )
    found = {(i["kind"], i["name"]): i for i in listed}
    assert set(found) >= BUILTINS | EXAMPLE_ENTRIES
    for key in EXAMPLE_ENTRIES:
        assert (found[key]["distribution"], found[key]["version"]) == ("agl-example-plugin", "0.3.1")
    assert found["stores", "memory"]["distribution"] == "agl-kernel"


def test_cli_check_reports_the_broken_entries(example_site: Path) -> None:
    result = run_python(example_site, "-m", "agl_kernel.cli", "plugins", "--check", "--json")
    assert result.returncode == 1, "--check exits with 1 when a plugin fails to load"
    errors = {(i["kind"], i["name"]): i["error"] for i in json.loads(result.stdout)}
    assert "pip install 'agl-example-plugin[fancy]'" in errors["algorithms", "broken"]
    assert errors["stores", "example"] is None


def test_example_components_by_name_in_a_fresh_process(example_site: Path) -> None:
    snippet = textwrap.dedent(
        """
        import asyncio, json, warnings
        from agl_kernel.plugins import create_component, load_component
        from agl_example_plugin import hooks

        async def main():
            async with create_component("stores", "example") as store:
                algorithm = load_component("algorithms", "example")()
                ids = await algorithm.run(store, [1, 2, 3])
                return [(await store.get_rollout(i)).metadata for i in ids]

        warnings.simplefilter("ignore")
        print(json.dumps({"metadata": asyncio.run(main()), "created": hooks.CREATED_STORES}))
        """
    )
    result = run_python(example_site, "-c", snippet)
    assert result.returncode == 0, result.stderr
    out = json.loads(result.stdout)
    assert out == {"metadata": [{"tagged_by": "agl-example-plugin"}] * 3, "created": ["ExampleStore"]}


def test_plugin_command_runs_and_the_broken_hook_plugin_only_warns(example_site: Path) -> None:
    result = run_python(example_site, "-m", "agl_kernel.cli", "example-hello", "--name", "tester")
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "hello tester from agl-example-plugin"
    assert "AglPluginWarning" in result.stderr and "agl_missing_hook_dependency" in result.stderr


@pytest.mark.parametrize(
    "env, visible",
    [
        ({"AGL_DISABLE_PLUGIN_AUTOLOAD": "1"}, False),
        ({"AGL_PLUGINS": "some-other-plugin"}, False),
        ({"AGL_DISABLE_PLUGIN_AUTOLOAD": "1", "AGL_PLUGINS": "agl-example-plugin"}, True),
    ],
)
def test_env_switches_hide_the_example_plugin(example_site: Path, env: dict[str, str], visible: bool) -> None:
    listed = run_python(example_site, "-m", "agl_kernel.cli", "plugins", "--json", **env)
    distributions = {item["distribution"] for item in json.loads(listed.stdout)}
    assert ("agl-example-plugin" in distributions) is visible and "agl-kernel" in distributions
    hello = run_python(example_site, "-m", "agl_kernel.cli", "example-hello", **env)
    if visible:
        assert hello.returncode == 0 and "hello world" in hello.stdout
    else:
        assert hello.returncode == 2 and "No such command 'example-hello'" in hello.stderr


# ---------------------------------------------------------------------------------------------- the plugin template


def test_the_plugin_template_implements_the_store_contract_exactly() -> None:
    tomllib = pytest.importorskip("tomllib")
    project = tomllib.loads((TEMPLATE / "pyproject.toml").read_text())["project"]
    target = project["entry-points"]["agl.stores"]["template"]
    with on_sys_path(TEMPLATE / "src"):
        module_name, _, attr = target.partition(":")
        store_class = getattr(importlib.import_module(module_name), attr)
        assert issubclass(store_class, LightningStore) and not store_class.__abstractmethods__
        for name in LightningStore.__abstractmethods__:
            ours, contract = vars(store_class)[name], getattr(LightningStore, name)
            if isinstance(contract, property):
                ours, contract = ours.fget, contract.fget
            assert inspect.signature(ours) == inspect.signature(contract), f"template's {name} is out of date"


def test_the_plugin_template_is_not_collected_by_the_repository_run() -> None:
    result = subprocess.run(
        [sys.executable, "-m", "pytest", "--collect-only", "-q", str(TEMPLATE)],
        capture_output=True,
        text=True,
        cwd=REPO,
        timeout=120,
    )
    assert "no tests collected" in result.stdout, result.stdout + result.stderr


# ----------------------------------------------------------------- interfaces, clashes, versions, isolation


def test_a_component_that_does_not_implement_its_kind_is_refused_at_load_and_by_check(site: Path) -> None:
    install_distribution(
        site,
        "agl-wrong",
        entry_points={
            "agl.algorithms": {
                "notalgo": "agl_wrong:NotAnAlgorithm",
                "ducky": "agl_wrong:Duck",
                "obj": "agl_wrong:THING",
            },
            "agl.stores": {"half": "agl_wrong:HalfStore"},
        },
        modules={
            "agl_wrong": """
                from agl_kernel.store.memory import InMemoryLightningStore
                from agl_kernel.store.base import LightningStore
                class NotAnAlgorithm:
                    def train(self): pass
                class Duck:  # not a subclass, but has every abstract method: accepted
                    async def run(self, store, train_dataset, val_dataset=None): return 1
                THING = 42
                class HalfStore(LightningStore):
                    pass
            """,
        },
    )
    with pytest.raises(
        PluginError,
        match=r"'notalgo' from agl-wrong 1.0 .*is not a agl_kernel.algorithm.Algorithm and lacks run"
        r".*Report this to the authors of agl-wrong",
    ):
        load_component("algorithms", "notalgo")
    with pytest.raises(PluginError, match=r"'obj' from agl-wrong 1.0 .*is a int, not a class or a factory"):
        load_component("algorithms", "obj")
    with pytest.raises(PluginError, match=r"'half' from agl-wrong 1.0 .*leaves .*enqueue_rollout.* unimplemented"):
        load_component("stores", "half")
    assert load_component("algorithms", "ducky").__name__ == "Duck"
    errors = {i.name: i.error for i in list_plugins(check=True) if i.distribution == "agl-wrong"}
    assert errors["ducky"] is None and all("agl-wrong" in errors[n] for n in ("notalgo", "obj", "half"))
    result = run_python(site, "-m", "agl_kernel.cli", "plugins", "--check")
    assert result.returncode == 1 and "notalgo" in result.stdout and "agl-wrong" in result.stdout


def test_a_third_party_cannot_replace_a_builtin_by_name(site: Path) -> None:
    install_distribution(
        site,
        "agl-impostor",
        entry_points={"agl.algorithms": {"baseline": "agl_impostor:Fake"}, "agl.tracers": {"noop": "agl_impostor:T"}},
        modules={
            "agl_impostor": """
                from agl_kernel.algorithm import Baseline
                from agl_kernel.tracer import NoOpTracer
                class Fake(Baseline):
                    pass
                class T(NoOpTracer):
                    pass
            """,
        },
    )
    from agl_kernel.algorithm import Baseline

    assert load_component("algorithms", "baseline") is Baseline
    assert load_component("algorithms", "baseline@agl-impostor").__name__ == "Fake"
    assert type(create_component("tracers", "noop@agl_impostor")).__name__ == "T"
    with pytest.raises(
        PluginNotFoundError,
        match="'baseline' from the distribution 'agl-other'; 'baseline' is provided by: agl-impostor, agl-kernel",
    ):
        load_component("algorithms", "baseline@agl-other")
    notes = {(i.distribution, i.name): i.note for i in list_plugins("algorithms")}
    assert "this built-in is used" in notes[("agl-kernel", "baseline")]
    assert notes[("agl-impostor", "baseline")] == "shadowed by the kernel's built-in; use it as baseline@agl-impostor"
    result = run_python(site, "-m", "agl_kernel.cli", "plugins", "--kind", "algorithms")
    assert (
        result.returncode == 0 and "shadowed by the kernel's built-in; use it as baseline@agl-impostor" in result.stdout
    )


def test_a_plugin_for_another_kernel_version_is_skipped_saying_which_it_needs(site: Path) -> None:
    install_distribution(
        site,
        "agl-future",
        entry_points={"agl.algorithms": {"future": "agl_future:Algo"}, "agl.plugins": {"future-hooks": "agl_future"}},
        modules={"agl_future": "from agl_kernel.algorithm import Baseline as Algo\n"},
        requires=("agl-kernel>=9.0,<10", "attrs"),
        version="2.0",
    )
    install_distribution(
        site,
        "agl-current",
        entry_points={"agl.algorithms": {"current": "agl_current:Algo"}},
        modules={"agl_current": "from agl_kernel.algorithm import Baseline as Algo\n"},
        requires=("agl-kernel>=0.2,<0.3",),
    )
    with pytest.raises(
        PluginError,
        match=r"agl-future 2.0 needs agl-kernel<10,>=9.0, but agl-kernel 0.2.\d+ is installed "
        r"\(plugin API 1.0\); it is skipped",
    ):
        load_component("algorithms", "future")
    assert load_component("algorithms", "current") is not None
    with pytest.warns(AglPluginWarning, match="'future-hooks': agl-future 2.0 needs agl-kernel<10,>=9.0"):
        assert get_plugin_manager().get_plugin("future-hooks") is None
    infos = {i.name: i for i in list_plugins("algorithms")}
    assert infos["future"].requires_kernel == "<10,>=9.0" and "needs agl-kernel" in infos["future"].error
    assert infos["current"].requires_kernel == "<0.3,>=0.2" and infos["current"].error is None


def test_every_plugin_under_plugins_declares_a_compatible_kernel_range() -> None:
    from agl_kernel.plugins import kernel_version

    for info in list_plugins():
        if info.distribution.startswith("agl-") and info.distribution != "agl-kernel":
            assert info.requires_kernel, f"{info.distribution} declares no agl-kernel range"
            assert info.error is None, info.error
    assert kernel_version() == agl_kernel.__version__


def test_no_plugin_imports_a_private_kernel_module() -> None:
    import re

    private = re.compile(r"^\s*(?:from|import)\s+(agl_kernel(?:\.\w+)*\._\w+)", re.M)
    offenders = []
    for path in sorted((REPO / "plugins").glob("*/src/**/*.py")) + sorted((REPO / "contrib").rglob("*.py")):
        offenders += [f"{path.relative_to(REPO)}: {m}" for m in private.findall(path.read_text())]
    assert offenders == [], "plugins must use the kernel's public API only:\n" + "\n".join(offenders)


def _raising_module(hook: str) -> str:
    arguments = ", ".join(inspect.signature(getattr(hookspecs, hook)).parameters)
    return (
        "from agl_kernel.plugins import hookimpl\n"
        f"@hookimpl\ndef {hook}({arguments}):\n    raise RuntimeError('plugin bug in {hook}')\n"
    )


@pytest.mark.parametrize("hook", HOOKS)
def test_a_raising_hook_is_logged_once_with_its_distribution_and_skipped(
    hook: str, site: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    from agl_kernel.plugins import call_hook

    install_distribution(
        site,
        "agl-buggy",
        entry_points={"agl.plugins": {"buggy": "agl_buggy"}},
        modules={"agl_buggy": _raising_module(hook)},
    )
    monkeypatch.setenv("AGL_PLUGINS", "agl-buggy")
    reset_plugin_manager()
    recorder = RecordingPlugin()
    get_plugin_manager().register(recorder)
    arguments = {name: object() for name in inspect.signature(getattr(hookspecs, hook)).parameters}
    with caplog.at_level("ERROR", logger="agl_kernel.plugins"):
        call_hook(hook, **arguments)
        call_hook(hook, **arguments)
    assert [call[0] for call in recorder.calls] == [hook, hook]  # the others still run, every time
    failures = [r for r in caplog.records if "plugin bug" in r.getMessage()]
    assert len(failures) == 1, "logged once per plugin and hook"
    assert "'buggy' (from agl-buggy 1.0) raised in " + hook in failures[0].getMessage()
    monkeypatch.setenv("AGL_STRICT_PLUGINS", "1")
    with pytest.raises(RuntimeError, match=f"plugin bug in {hook}"):
        call_hook(hook, **arguments)


RAISES_EVERYWHERE = """
from agl_kernel.plugins import hookimpl

@hookimpl
def agl_register_commands(cli):
    raise RuntimeError("plugin bug")

@hookimpl
def agl_register_routes(register):
    raise RuntimeError("plugin bug")

@hookimpl
def agl_on_rollout_start(rollout, attempt, runner):
    raise RuntimeError("plugin bug")

@hookimpl
def agl_on_rollout_end(rollout, attempt, runner, status):
    raise RuntimeError("plugin bug")

@hookimpl
def agl_on_trace_start(rollout_id, attempt_id, tracer):
    raise RuntimeError("plugin bug")

@hookimpl
def agl_on_trace_end(rollout_id, attempt_id, tracer, spans):
    raise RuntimeError("plugin bug")

@hookimpl
def agl_on_store_created(store):
    raise RuntimeError("plugin bug")
"""

RUN = """
import asyncio
from agl_kernel.server import running_server
from agl_kernel.store.defaults import make_store
from agl_kernel.trainer import Trainer

def agent(task, resources):
    return float(task)

with Trainer(store="memory", n_runners=2, progress=False) as trainer:
    report = trainer.dev(agent, [1, 0, 1])
print("report", report.by_status, report.mean_reward)

async def serve():
    store = make_store("memory")
    async with running_server(store) as url:
        print("served", url.startswith("http://127.0.0.1"))
asyncio.run(serve())
"""


@pytest.mark.parametrize("strict", [False, True])
def test_a_plugin_raising_in_every_hook_does_not_break_a_run_unless_strict(site: Path, strict: bool) -> None:
    install_distribution(
        site,
        "agl-buggy",
        entry_points={"agl.plugins": {"buggy": "agl_buggy"}},
        modules={"agl_buggy": RAISES_EVERYWHERE},
    )
    env = {"AGL_STRICT_PLUGINS": "1"} if strict else {}
    result = run_python(site, "-c", RUN, **env)
    cli = run_python(site, "-m", "agl_kernel.cli", "--help", **env)  # lists commands: asks every plugin for its own
    if strict:
        assert result.returncode != 0 and "RuntimeError: plugin bug" in result.stderr
        assert cli.returncode != 0 and "RuntimeError: plugin bug" in cli.stderr
        return
    assert result.returncode == 0, result.stderr
    assert "report {'succeeded': 3}" in result.stdout and "served True" in result.stdout
    for hook in ("agl_on_store_created", "agl_on_rollout_start", "agl_on_rollout_end"):
        assert result.stderr.count(f"raised in {hook}") == 1, result.stderr
        assert f"'buggy' (from agl-buggy 1.0) raised in {hook}" in result.stderr
    assert "failed to add its server routes" in result.stderr
    assert cli.returncode == 0 and "failed to add its commands" in cli.stderr


def test_the_kernels_commands_and_store_routes_come_through_the_hooks() -> None:
    """Built-ins use the same hooks as plugins (agl_kernel._builtin_hooks), so a plugin can do what they do."""
    manager = get_plugin_manager()
    for hook in ("agl_register_commands", "agl_register_routes"):
        assert BUILTIN_HOOKS in {impl.plugin_name for impl in getattr(manager.hook, hook).get_hookimpls()}, hook
    pytest.importorskip("litestar")
    from agl_kernel.server import create_app
    from agl_kernel.store.memory import InMemoryLightningStore

    app = create_app(InMemoryLightningStore(), plugins=False)  # no plugin routes, the kernel's store API all the same
    paths = {route.path for route in app.routes}
    assert {"/api/v1/rollouts", "/api/v1/rollouts/dequeue", "/api/v1/spans", "/api/v1/statistics"} <= paths, paths
