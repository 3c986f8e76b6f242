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
    site: Path, name: str, *, entry_points: dict[str, dict[str, str]], modules: dict[str, str], version: str = "1.0"
) -> None:
    """Write an installed distribution (``.dist-info`` with METADATA and entry_points.txt, plus modules)."""
    site.mkdir(parents=True, exist_ok=True)
    dist_info = site / f"{name.replace('-', '_')}-{version}.dist-info"
    dist_info.mkdir()
    (dist_info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n")
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
    assert HOOKS == sorted(name for name in hookspecs.__all__ if name.startswith("agl_"))
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
    def agl_server_routes(self, register: Any) -> None:
        self.calls.append(("agl_server_routes", {"register": register}))

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
    def agl_store_created(self, store: Any) -> None:
        self.calls.append(("agl_store_created", {"store": store}))


@pytest.mark.parametrize("hook", HOOKS)
def test_every_hook_can_be_implemented_and_is_called_with_keywords(hook: str, monkeypatch: pytest.MonkeyPatch) -> None:
    assert hasattr(RecordingPlugin, hook), f"add {hook} to RecordingPlugin"
    # Only the built-ins besides the recording plugin: installed plugins (the dashboard's routes, say) would be
    # called with the placeholder arguments below too.
    monkeypatch.setenv("AGL_DISABLE_PLUGIN_AUTOLOAD", "1")
    reset_plugin_manager()
    plugin = RecordingPlugin()
    manager = get_plugin_manager()
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
    assert BUILTINS <= entries(infos)
    for info in infos:
        if (info.kind, info.name) in BUILTINS:
            assert info.distribution == "agl-kernel" and info.version == agl_kernel.__version__
            assert info.error is None and ":" in info.module
    assert infos == sorted(infos, key=lambda i: (i.kind, i.name, i.distribution))
    assert entries(list_plugins("stores")) >= {("stores", "memory")}
    assert {info.kind for info in list_plugins("stores")} == {"stores"}


def test_kinds_and_groups() -> None:
    assert KINDS == ("stores", "tracers", "runners", "strategies", "algorithms", "adapters", "plugins")
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
    with pytest.raises(ValueError, match="stores, tracers, runners, strategies, algorithms, adapters, plugins"):
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
    assert EXAMPLE_ENTRIES | BUILTINS <= entries(infos)
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
    assert hooks.CREATED_STORES[-1:] == ["ExampleStore"], "agl_store_created was not called"
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
    assert BUILTINS <= entries(list_plugins())
    with pytest.raises(PluginNotFoundError, match="hidden by AGL_DISABLE_PLUGIN_AUTOLOAD=1"):
        load_component("stores", "example")
    assert get_plugin_manager().get_plugin("example") is None
    monkeypatch.setenv("AGL_DISABLE_PLUGIN_AUTOLOAD", "0")
    assert EXAMPLE_ENTRIES <= entries(list_plugins())


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
    assert BUILTINS <= entries(infos)


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
            "agl_good": "from agl_kernel.plugins import hookimpl\n@hookimpl\ndef agl_store_created(store): pass\n",
        },
    )
    with pytest.warns(AglPluginWarning, match=r"unknown hooks \['agl_store_creatd'\].*agl_store_created"):
        manager = get_plugin_manager()
    assert manager.get_plugin("typo") is None and manager.get_plugin("good") is not None


# ------------------------------------------------------------------------------- the example, from subprocesses


def test_cli_lists_builtins_and_the_example_plugin(example_site: Path) -> None:
    result = run_python(example_site, "-m", "agl_kernel.cli", "plugins", "--json")
    assert result.returncode == 0, result.stderr
    listed = json.loads(result.stdout)
    assert all(set(item) == {"kind", "name", "distribution", "version", "module", "error", "requires_kernel", "note"} for item in listed)
    found = {(i["kind"], i["name"]): i for i in listed}
    assert BUILTINS | EXAMPLE_ENTRIES <= set(found)
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
        capture_output=True, text=True, cwd=REPO, timeout=120,
    )
    assert "no tests collected" in result.stdout, result.stdout + result.stderr
