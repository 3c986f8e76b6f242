"""The dashboard's build backend (``_build/agl_dashboard_build.py``): a wheel or an sdist built without the page fails
with a one-line message that says how to build it; a wheel built with it ships it; an editable install needs no
page. Each test builds from a copy of the distribution (``pip wheel --no-build-isolation``: no download)."""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tarfile
import zipfile
from pathlib import Path

import pytest

DIST = Path(__file__).resolve().parents[1]
STATIC = Path("src", "agl_dashboard", "static")
MESSAGE = "the dashboard's page is not built: run `npm ci && npm run build` in plugins/agl-dashboard/frontend first"


def copy_distribution(target: Path, *, with_page: bool) -> Path:
    """The distribution's files in ``target`` (no frontend sources, build outputs or caches)."""
    ignore = shutil.ignore_patterns("frontend", "build", "*.egg-info", "__pycache__", "tests", "e2e-output")
    shutil.copytree(DIST, target, ignore=ignore)
    if not with_page:
        shutil.rmtree(target / STATIC, ignore_errors=True)
    return target


def pip_wheel(source: Path, out: Path) -> subprocess.CompletedProcess:
    return subprocess.run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q", "-w", str(out), str(source)],
        capture_output=True,
        text=True,
        timeout=300,
        check=False,
    )


def call_hook(source: Path, hook: str, out: Path) -> subprocess.CompletedProcess:
    """Call one hook of the backend as a build frontend does: in a fresh process, in the distribution's folder."""
    code = f"import sys; sys.path.insert(0, '_build'); import agl_dashboard_build as b; print(b.{hook}({str(out)!r}))"
    return subprocess.run(
        [sys.executable, "-c", code], cwd=source, capture_output=True, text=True, timeout=300, check=False
    )


def test_without_the_page_the_wheel_and_sdist_builds_fail_and_say_what_to_run(tmp_path: Path) -> None:
    source = copy_distribution(tmp_path / "dist", with_page=False)
    built = pip_wheel(source, tmp_path / "wheels")
    assert built.returncode != 0
    assert MESSAGE in built.stdout + built.stderr
    assert not list((tmp_path / "wheels").glob("*.whl"))

    sdist = call_hook(source, "build_sdist", tmp_path / "sdist")
    assert sdist.returncode == 1
    assert sdist.stderr.strip().splitlines() == [f"error: {MESSAGE} ({STATIC / 'index.html'} is missing)"]


def test_an_editable_install_needs_no_page(tmp_path: Path) -> None:
    source = copy_distribution(tmp_path / "dist", with_page=False)
    (tmp_path / "out").mkdir()
    editable = call_hook(source, "build_editable", tmp_path / "out")
    assert editable.returncode == 0, editable.stderr[-2000:]
    assert list((tmp_path / "out").glob("agl_dashboard-*.whl"))


def test_the_wheel_and_sdist_ship_the_page_and_the_license(tmp_path: Path) -> None:
    if not (DIST / STATIC / "index.html").is_file():
        message = "the dashboard's page is not built (make dashboard-assets)"
        if os.environ.get("AGL_DASHBOARD_E2E") == "1":
            pytest.fail(message)
        pytest.skip(message)
    source = copy_distribution(tmp_path / "dist", with_page=True)
    built = pip_wheel(source, tmp_path / "wheels")
    assert built.returncode == 0, built.stdout[-2000:] + built.stderr[-2000:]
    [wheel] = (tmp_path / "wheels").glob("agl_dashboard-*.whl")
    names = zipfile.ZipFile(wheel).namelist()
    assert "agl_dashboard/static/index.html" in names
    assets = [n for n in names if n.startswith("agl_dashboard/static/assets/")]
    assert any(n.endswith(".js") for n in assets) and any(n.endswith(".css") for n in assets), assets
    assert any(n.endswith(".dist-info/licenses/LICENSE") for n in names)
    metadata = next(n for n in names if n.endswith(".dist-info/METADATA"))
    requires = [line for line in zipfile.ZipFile(wheel).read(metadata).decode().splitlines() if "Requires-Dist" in line]
    assert any(line.startswith("Requires-Dist: agl-store-sqlite") for line in requires), requires

    # The sdist carries the page and the backend itself, so that a wheel can be built from it.
    (tmp_path / "sdist").mkdir()
    sdist = call_hook(source, "build_sdist", tmp_path / "sdist")
    assert sdist.returncode == 0, sdist.stderr[-2000:]
    [archive] = (tmp_path / "sdist").glob("agl_dashboard-*.tar.gz")
    with tarfile.open(archive) as sdist_file:
        members = {name.split("/", 1)[1] for name in sdist_file.getnames() if "/" in name}
    assert {"_build/agl_dashboard_build.py", "src/agl_dashboard/static/index.html", "LICENSE"} <= members
