"""The dashboard's build backend: setuptools', except that a wheel or an sdist is refused while the page is not built.

The page (``src/agl_dashboard/static/``) is made by ``npm run build`` in ``frontend/`` and is not in git. Without
this check a wheel built from a clean checkout ships without it, and ``agl dashboard`` answers 503 at ``/``.
Editable installs (``pip install -e``, what ``make setup`` does before the page is built) serve the page from the
source tree, so they do not need it.
"""

from __future__ import annotations

from pathlib import Path

from setuptools import build_meta as _setuptools
from setuptools.build_meta import *  # noqa: F403 - every other hook is setuptools' own
from setuptools.build_meta import __all__  # noqa: F401

PAGE = Path("src", "agl_dashboard", "static", "index.html")
NOT_BUILT = "the dashboard's page is not built: run `npm ci && npm run build` in plugins/agl-dashboard/frontend first"


def _require_page() -> None:
    # Hooks run with the distribution's folder (or an unpacked sdist) as the working directory.
    if not PAGE.is_file():
        raise SystemExit(f"error: {NOT_BUILT} ({PAGE} is missing)")


def build_wheel(wheel_directory, config_settings=None, metadata_directory=None):
    _require_page()
    return _setuptools.build_wheel(wheel_directory, config_settings, metadata_directory)


def build_sdist(sdist_directory, config_settings=None):
    _require_page()
    return _setuptools.build_sdist(sdist_directory, config_settings)
