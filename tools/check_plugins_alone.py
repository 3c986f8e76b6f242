"""Every plugin installs alone: build each distribution's wheel, install the kernel plus one plugin at a time into
a fresh venv, and check that the plugin loads and works there with nothing else of the repository.

The dev venv has every plugin installed (editable), so a plugin that forgets to declare a dependency (another
plugin, a library another plugin brings) or ships an incomplete wheel still passes the test suite there. This
check is what catches it:

1. **Wheels.** The kernel (``agl_kernel/``) and every distribution under ``plugins/`` (``_template`` too: it is what
   plugin authors copy, so it must build, install and load) are built with ``pip wheel --no-deps
   --no-build-isolation`` from a clean copy of their folder (a stale ``build/`` in the working tree never leaks
   into a wheel). A build that warns about its license, or a wheel without its LICENSE, fails. The dashboard's
   build fails by itself when its page is not built (``make dashboard-assets``).
2. **Dependencies, once.** One ``pip wheel`` resolves the third-party dependencies of all of them together into a
   shared wheelhouse (from the package index, through pip's cache), with ``torch==2.13.0`` pinned (the CPU build
   on this machine's disk; an unpinned ``torch`` would pull a multi-GB CUDA build).
3. **One venv per plugin** (``python -m venv --without-pip``; the dev venv's uv installs into it with
   ``--python``: it links what it unpacked once instead of unpacking torch again for every plugin that needs it):
   only the kernel's wheel and the plugin's wheel, their declared dependencies taken from the wheelhouse with
   ``--no-index``, so nothing undeclared can slip in.
4. In that venv, from an empty directory, with an environment that names nothing of the repository (no
   ``PYTHONPATH``, no user site, Hugging Face offline): ``agl plugins --check --json`` must list the plugin's
   distribution, load its entry points and exit 0 (a load error that only names an extra of the entry's own
   distribution, such as the kernel's ``http`` store without ``agl-kernel[client]``, is what installing without
   extras means: it is shown as a note, not failed); no other plugin may be there unless the plugin declares it.
   Then the plugin's ``tests/smoke.py`` (copied there with the ``tests/_*.py`` helper modules beside it, run with
   the venv's python; it needs no pytest; every plugin must have one) must exit 0. The kernel is checked alone the
   same way first (without a smoke script).

Exit status 0 when every distribution passes, 1 otherwise, naming each one that failed and the step that broke
(with the end of its output). Run it with the dev venv's python (``make plugins-alone``); ``--only FOLDER`` checks
some plugins (every wheel is still built: one plugin may depend on another), ``--keep DIR`` keeps the wheels and
venvs there, ``--jobs N`` sets how many wheels are built and venvs checked at once.
"""

from __future__ import annotations

import argparse
import concurrent.futures
import email.parser
import json
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import zipfile
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[1]
KERNEL_DIR = ROOT / "agl_kernel"
PLUGINS_DIR = ROOT / "plugins"
# uv, in the dev venv (`make setup` installs it), installs into the plugins' venvs.
UV = Path(sys.executable).with_name("uv")
# The constraints of every install here (pip and uv): the CPU build of torch that this machine has on disk.
CONSTRAINTS = "torch==2.13.0\n"
# What a working tree may hold that is not part of a distribution's source (build outputs, npm packages, caches).
NOT_SOURCE = shutil.ignore_patterns(
    "build", "dist", "*.egg-info", "__pycache__", ".pytest_cache", "node_modules", "e2e-output", "*.pyc"
)
# Only these variables of the caller's environment reach the venv's commands.
KEPT_ENV = ("HOME", "LANG", "LC_ALL", "TMPDIR", "TERM")
TIMEOUTS = {"build": 300, "dependencies": 900, "install": 600, "check": 120, "smoke": 300}
TAIL = 3000  # characters of a failed step's output shown in the summary

_started = time.monotonic()
_print_lock = threading.Lock()


def say(message: str) -> None:
    with _print_lock:
        print(f"[{time.monotonic() - _started:6.1f}s] {message}", flush=True)


class StepFailed(Exception):
    def __init__(self, step: str, detail: str) -> None:
        super().__init__(f"{step}: {detail}")
        self.step, self.detail = step, detail


@dataclass
class Distribution:
    folder: Path
    wheel: Path | None = None
    name: str = ""  # the distribution's name, from its wheel's metadata
    requires: set[str] = field(default_factory=set)  # the names of its dependencies (normalized; no extras)
    failure: StepFailed | None = None
    timings: dict[str, float] = field(default_factory=dict)

    @property
    def label(self) -> str:
        return self.name or self.folder.name


def run(step: str, command: list[str], *, timeout: float, cwd: Path | None = None, env: dict | None = None) -> str:
    """Run ``command``; its output (stdout and stderr together), or StepFailed with the end of it."""
    try:
        done = subprocess.run(
            command,
            check=False,
            cwd=cwd,
            env=env,
            stdout=subprocess.PIPE,
            stderr=subprocess.STDOUT,
            text=True,
            timeout=timeout,
        )
    except subprocess.TimeoutExpired as err:
        output = err.output.decode(errors="replace") if isinstance(err.output, bytes) else (err.output or "")
        raise StepFailed(step, f"did not finish in {timeout:.0f}s\n{output[-TAIL:]}") from None
    if done.returncode != 0:
        # A build backend's own "error: ..." line may lie far above the end of a verbose log: show it first.
        errors = [line.strip() for line in done.stdout.splitlines() if line.strip().startswith("error: ")]
        detail = "\n".join([f"`{shlex.join(command)}` exited with {done.returncode}", *errors[:5], done.stdout[-TAIL:]])
        raise StepFailed(step, detail)
    return done.stdout


def wheel_metadata(wheel: Path) -> tuple[str, list[str], set[str]]:
    """A wheel's distribution name, the names of its files, and the names of what it requires (extras left out)."""
    with zipfile.ZipFile(wheel) as archive:
        names = archive.namelist()
        [metadata] = [n for n in names if n.endswith(".dist-info/METADATA")]
        message = email.parser.Parser().parsestr(archive.read(metadata).decode())
    requires = {
        _normalize(re.match(r"[A-Za-z0-9._-]+", line).group(0))  # type: ignore[union-attr]
        for line in message.get_all("Requires-Dist") or []
        if "extra ==" not in line.replace('extra=="', 'extra == "')
    }
    return message["Name"], names, requires


def _normalize(name: str) -> str:
    return re.sub(r"[-_.]+", "-", name).lower()


def build_wheel(dist: Distribution, work: Path, wheels: Path) -> None:
    started = time.monotonic()
    source = work / "src" / dist.folder.name
    shutil.copytree(dist.folder, source, ignore=NOT_SOURCE)
    out = work / "built" / dist.folder.name
    output = run(
        "build the wheel",
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-v", "-w", str(out), str(source)],
        timeout=TIMEOUTS["build"],
    )
    warnings = [line.strip() for line in output.splitlines() if "licen" in line.lower() and "warn" in line.lower()]
    if warnings:
        raise StepFailed("build the wheel", "the build warns about the license:\n" + "\n".join(warnings))
    [wheel] = out.glob("*.whl")
    dist.name, names, dist.requires = wheel_metadata(wheel)
    if not any(re.fullmatch(r"[^/]+\.dist-info/licenses/LICENSE", n) for n in names):
        raise StepFailed("build the wheel", f"{wheel.name} has no .dist-info/licenses/LICENSE")
    dist.wheel = Path(shutil.copy2(wheel, wheels / wheel.name))
    dist.timings["build"] = time.monotonic() - started
    say(f"{dist.label}: built {dist.wheel.name} ({dist.timings['build']:.1f}s)")


def clean_env(venv: Path) -> dict[str, str]:
    env = {key: os.environ[key] for key in KEPT_ENV if key in os.environ}
    env.update(
        PATH=f"{venv / 'bin'}{os.pathsep}/usr/local/bin{os.pathsep}/usr/bin{os.pathsep}/bin",
        VIRTUAL_ENV=str(venv),
        PYTHONNOUSERSITE="1",
        PYTHONDONTWRITEBYTECODE="1",
        HF_HUB_OFFLINE="1",
        TRANSFORMERS_OFFLINE="1",
        HF_HUB_DISABLE_TELEMETRY="1",
    )
    return env


def check_alone(dist: Distribution, kernel: Distribution, work: Path, wheelhouse: Path, constraints: Path) -> None:
    """A venv with the kernel and ``dist`` only; ``agl plugins --check``; the smoke script."""
    alone = dist is kernel
    home = work / "venvs" / dist.folder.name
    venv, cwd = home / "venv", home / "cwd"
    cwd.mkdir(parents=True)
    started = time.monotonic()
    base_python = getattr(sys, "_base_executable", sys.executable)
    run("create the venv", [base_python, "-m", "venv", "--without-pip", str(venv)], timeout=60)
    wheels = [str(kernel.wheel)] + ([] if alone else [str(dist.wheel)])
    run(
        "install the kernel and the plugin" if not alone else "install the kernel",
        [str(UV), "pip", "install", "--python", str(venv / "bin" / "python"), "--no-index",
         "--find-links", str(wheelhouse), "-c", str(constraints), *wheels],
        timeout=TIMEOUTS["install"],
    )  # fmt: skip
    dist.timings["install"] = time.monotonic() - started
    say(f"{dist.label}: installed alone in a fresh venv ({dist.timings['install']:.1f}s)")

    env = clean_env(venv)
    started = time.monotonic()
    command = [str(venv / "bin" / "agl"), "plugins", "--check", "--json"]
    try:
        done = subprocess.run(
            command, check=False, cwd=cwd, env=env, capture_output=True, text=True, timeout=TIMEOUTS["check"]
        )
    except subprocess.TimeoutExpired:
        raise StepFailed("agl plugins --check", f"did not finish in {TIMEOUTS['check']}s") from None
    try:
        listed = json.loads(done.stdout)
    except ValueError:
        raise StepFailed(
            "agl plugins --check",
            f"exited with {done.returncode}, not with a JSON list:\n{done.stdout[-TAIL:]}{done.stderr[-TAIL:]}",
        ) from None
    mine = [entry for entry in listed if entry.get("distribution") == dist.name]
    if not mine:
        raise StepFailed("agl plugins --check", f"{dist.name} is not listed:\n{done.stdout[-TAIL:]}")
    # Another plugin may be there only as a declared dependency (agl-dashboard needs agl-store-sqlite).
    others = {entry.get("distribution") or "" for entry in listed} - {dist.name, kernel.name}
    undeclared = sorted(name for name in others if _normalize(name) not in dist.requires)
    if undeclared:
        raise StepFailed("agl plugins --check", f"the venv holds plugins it does not declare: {', '.join(undeclared)}")
    failing = [entry for entry in listed if entry.get("error")]
    extras = [entry for entry in failing if _needs_own_extra(entry)]
    if done.returncode != 0 and (len(extras) < len(failing) or not failing):
        broken = "\n".join(f"{e['kind']}/{e['name']} ({e['distribution']}): {e['error']}" for e in failing)
        raise StepFailed("agl plugins --check", f"exited with {done.returncode}\n{broken or done.stderr[-TAIL:]}")
    if not [entry for entry in mine if not entry.get("error")]:
        raise StepFailed("agl plugins --check", f"none of {dist.name}'s entry points loads")
    for entry in [e for e in extras if e.get("distribution") == dist.name]:
        say(f"{dist.label}: note: {entry['kind']}/{entry['name']} needs an extra that is not installed here "
            f"({entry['error'].rsplit(': ', 1)[-1]}); not a failure")  # fmt: skip
    names = ", ".join(f"{e['kind']}:{e['name']}" for e in mine)
    say(f"{dist.label}: agl plugins --check lists {names} ({time.monotonic() - started:.1f}s)")

    if alone:
        return
    smoke = dist.folder / "tests" / "smoke.py"
    if not smoke.is_file():
        raise StepFailed("tests/smoke.py", f"{dist.folder.relative_to(ROOT)} has none: every plugin needs its smoke "
                         "use (start from plugins/_template/tests/smoke.py)")  # fmt: skip
    started = time.monotonic()
    shutil.copy2(smoke, cwd / "smoke.py")
    for helper in smoke.parent.glob("_*.py"):  # the tests' own helper modules it may import (a server to start)
        shutil.copy2(helper, cwd / helper.name)
    output = run("tests/smoke.py", [str(venv / "bin" / "python"), "smoke.py"], timeout=TIMEOUTS["smoke"], cwd=cwd,
                 env=env)  # fmt: skip
    dist.timings["smoke"] = time.monotonic() - started
    last = [line for line in output.splitlines() if line.strip()][-1:] or ["(no output)"]
    say(f"{dist.label}: smoke passed ({dist.timings['smoke']:.1f}s): {last[0][:200]}")


def _needs_own_extra(entry: dict) -> bool:
    """Whether a load error is an optional part of the entry's own distribution that is not installed (an extra:
    e.g. the kernel's `http` store without `agl-kernel[client]`): what installing a wheel without extras means, so
    it is reported as a note and not counted against the plugin. A missing dependency that is not an extra of the
    entry's own distribution (an undeclared one) still fails."""
    hint = rf"Install it with: pip install '{re.escape(entry.get('distribution') or '')}\[[\w,-]+\]'"
    return re.search(hint, entry.get("error") or "") is not None


def select(only: list[str]) -> tuple[list[Path], set[Path]]:
    """Every distribution folder under plugins/ (all are built: one may depend on another), and those to check."""
    folders = sorted(p for p in PLUGINS_DIR.iterdir() if (p / "pyproject.toml").is_file())
    if not only:
        return folders, set(folders)
    chosen = {p for p in folders if p.name in only}
    unknown = set(only) - {p.name for p in chosen}
    if unknown:
        names = ", ".join(p.name for p in folders)
        raise SystemExit(f"no plugin folder named {', '.join(sorted(unknown))} under plugins/; there are: {names}")
    return folders, chosen


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--only",
        action="append",
        default=[],
        metavar="FOLDER",
        help="check only this plugin (its folder's name under plugins/; may be repeated)",
    )
    parser.add_argument("--keep", metavar="DIR", help="work in DIR (emptied first) and keep the wheels and venvs")
    parser.add_argument("--jobs", type=int, default=2, help="wheels built and venvs checked at once (default: 2)")
    args = parser.parse_args(argv)

    try:
        import setuptools

        if int(setuptools.__version__.split(".")[0]) < 77:
            raise ImportError(f"setuptools {setuptools.__version__}")
    except ImportError as err:
        raise SystemExit(f"this check builds with the running python's setuptools (>= 77), not {err}: run it with "
                         "the dev venv's python (`make plugins-alone`)") from None  # fmt: skip

    folders, chosen = select(args.only)
    kernel = Distribution(KERNEL_DIR)
    plugins = [Distribution(folder) for folder in folders]
    checked = [kernel] + [d for d in plugins if d.folder in chosen]
    work = Path(args.keep).resolve() if args.keep else Path(tempfile.mkdtemp(prefix="agl-plugins-alone-"))
    if args.keep and work.exists():
        shutil.rmtree(work)
    (work / "wheels").mkdir(parents=True)
    (work / "wheelhouse").mkdir()
    (work / "constraints.txt").write_text(CONSTRAINTS)
    say(f"checking that the kernel and {len(checked) - 1} plugin(s) install and work alone, in {work}")
    try:
        failed = _check(kernel, plugins, checked, work, max(1, args.jobs))
    finally:
        if not args.keep:
            shutil.rmtree(work, ignore_errors=True)
    elapsed = time.monotonic() - _started
    if failed:
        print(f"\n{len(failed)} distribution(s) failed ({elapsed:.0f}s):", flush=True)
        for dist in failed:
            assert dist.failure is not None
            print(f"\n--- {dist.label} ({dist.folder.relative_to(ROOT)}): {dist.failure.step} failed", flush=True)
            print(dist.failure.detail.rstrip(), flush=True)
        print("\nFAILED: " + "; ".join(f"{d.label}: {d.failure.step}" for d in failed if d.failure), flush=True)
        return 1
    print(f"the kernel and {len(checked) - 1} plugin(s) install and work alone ({elapsed:.0f}s)", flush=True)
    return 0


def _check(kernel: Distribution, plugins: list[Distribution], checked: list[Distribution], work: Path, jobs: int
           ) -> list[Distribution]:  # fmt: skip
    """Build every wheel, fill the wheelhouse, check the kernel alone, then each plugin of ``checked``; the
    distributions that failed."""
    everything = [kernel, *plugins]
    wheelhouse, constraints = work / "wheelhouse", work / "constraints.txt"

    def failures() -> list[Distribution]:
        return [d for d in everything if d.failure]

    def guarded(dist: Distribution, step: Callable[..., None], *args: Any) -> None:
        try:
            step(dist, *args)
        except StepFailed as failure:
            dist.failure = failure
            say(f"{dist.label}: FAILED: {failure.step}")

    with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
        list(pool.map(lambda d: guarded(d, build_wheel, work, work / "wheels"), everything))
    if failures():
        return failures()

    say(f"collecting the dependencies of the {len(everything)} wheels into one wheelhouse")
    started = time.monotonic()
    try:
        run(
            "collect the dependencies",
            [sys.executable, "-m", "pip", "wheel", "-q", "-w", str(wheelhouse), "-c", str(constraints),
             *[str(d.wheel) for d in everything]],
            timeout=TIMEOUTS["dependencies"],
        )  # fmt: skip
    except StepFailed as failure:
        kernel.failure = failure
        return failures()
    say(f"wheelhouse ready: {len(list(wheelhouse.glob('*.whl')))} wheels ({time.monotonic() - started:.1f}s)")

    # The kernel alone first (it must list no plugin), then the plugins, several at once.
    guarded(kernel, check_alone, kernel, work, wheelhouse, constraints)
    if kernel.failure is None:
        with concurrent.futures.ThreadPoolExecutor(jobs) as pool:
            list(pool.map(lambda d: guarded(d, check_alone, kernel, work, wheelhouse, constraints), checked[1:]))
    return failures()


if __name__ == "__main__":
    sys.exit(main())
