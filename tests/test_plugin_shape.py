"""Every distribution under ``plugins/`` has the same shape, the one ``plugins/_template`` shows and new plugins copy:

- ``pyproject.toml``: a name, a version, ``license = "MIT"`` with ``LICENSE`` as its license file, the kernel's
  supported range in its dependencies (the same range everywhere), a ``testing`` extra, at least one entry point in
  an ``agl.*`` group, and ``py.typed`` in its package data;
- ``README.md`` with the common sections (:data:`README_SECTIONS`), in that order;
- ``src/<module>/py.typed`` (PEP 561: type checkers read the plugin's annotations);
- ``tests/`` with ``smoke.py`` (what ``tools/check_plugins_alone.py`` runs with the plugin installed alone) and at
  least one ``test_*.py``;
- ``LICENSE``: the project's MIT license text.
"""

from __future__ import annotations

import re
from pathlib import Path

import pytest
import tomllib

ROOT = Path(__file__).resolve().parents[1]
PLUGINS = sorted(p for p in (ROOT / "plugins").iterdir() if (p / "pyproject.toml").is_file())
KERNEL_RANGE = re.compile(r"^agl-kernel(\[[a-z,]+\])?>=0\.2,<0\.3$")
README_SECTIONS = ["## Install", "## Use", "## Options", "## Tests"]
"""The sections every plugin README has, in this order (others may come between them)."""


def test_the_plugins_folder_is_what_this_test_checks() -> None:
    names = {p.name for p in PLUGINS}
    assert "_template" in names and len(names) >= 7, names


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_pyproject(plugin: Path) -> None:
    project = tomllib.loads((plugin / "pyproject.toml").read_text())
    meta = project["project"]
    assert meta["name"].startswith("agl-") and meta["version"], meta
    assert meta["license"] == "MIT" and meta["license-files"] == ["LICENSE"]
    assert meta["readme"] == "README.md"
    kernel = [d for d in meta["dependencies"] if d.startswith("agl-kernel")]
    assert len(kernel) == 1 and KERNEL_RANGE.match(kernel[0]), f"the kernel range: {kernel}"
    assert "testing" in meta.get("optional-dependencies", {}), "a `testing` extra (what its tests need)"
    groups = {group for group in meta.get("entry-points", {}) if group.startswith("agl.")}
    assert groups, "at least one entry point in an agl.* group (agl.stores, agl.algorithms, agl.plugins, ...)"
    module = package_of(plugin).name
    package_data = project.get("tool", {}).get("setuptools", {}).get("package-data", {})
    assert "py.typed" in package_data.get(module, []), f"[tool.setuptools.package-data] {module} lists py.typed"


def package_of(plugin: Path) -> Path:
    packages = [p for p in (plugin / "src").iterdir() if (p / "__init__.py").is_file()]
    assert len(packages) == 1, f"one package under src/: {packages}"
    return packages[0]


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_files(plugin: Path) -> None:
    assert (package_of(plugin) / "py.typed").is_file()
    tests = plugin / "tests"
    assert (tests / "smoke.py").is_file(), "tests/smoke.py: what the plugin-alone check runs"
    assert list(tests.glob("test_*.py")), "tests/test_*.py"
    assert (plugin / "LICENSE").read_text() == (ROOT / "LICENSE").read_text()


@pytest.mark.parametrize("plugin", PLUGINS, ids=lambda p: p.name)
def test_readme_sections(plugin: Path) -> None:
    headings = [line.strip() for line in (plugin / "README.md").read_text().splitlines() if line.startswith("## ")]
    found = [h for h in headings if h in README_SECTIONS]
    assert found == README_SECTIONS, f"{plugin.name}/README.md sections {headings}; needs {README_SECTIONS} in order"


def test_the_kernel_is_typed_too() -> None:
    assert (ROOT / "agl_kernel" / "src" / "agl_kernel" / "py.typed").is_file()
    project = tomllib.loads((ROOT / "agl_kernel" / "pyproject.toml").read_text())
    assert "py.typed" in project["tool"]["setuptools"]["package-data"]["agl_kernel"]
