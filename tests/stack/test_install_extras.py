"""`make run` installs the runtime dependencies and the `run` extra only; `make test`,
`make lint` and `make bench` add `dev`; what `anting run` imports needs nothing of `dev`."""

from __future__ import annotations

import re
import subprocess
import sys
import tomllib
from importlib.metadata import packages_distributions
from pathlib import Path

from packaging.requirements import Requirement

REPO = Path(__file__).resolve().parents[2]


def _name(dist: str) -> str:
    """A distribution's normalized name (PEP 503): ``py_spy`` and ``Py-Spy`` are one."""
    return re.sub(r"[-_.]+", "-", dist).lower()


def _make_n(target: str) -> str:
    """The commands `make` would run for ``target`` from scratch (-B: every stamp stale)."""
    return subprocess.run(["make", "--no-print-directory", "-n", "-B", target], cwd=REPO,
                          capture_output=True, text=True, check=True, timeout=30).stdout


def _installs(commands: str) -> list[str]:
    """The lines that install the project and its dependencies (not the installer, uv)."""
    return [line for line in commands.splitlines() if " install " in line and "-e '." in line]


def test_make_run_installs_no_dev_tooling() -> None:
    """`make run`'s install names the `run` extra, never `dev`."""
    installs = _installs(_make_n("run"))
    assert installs and all("'.[run]'" in line for line in installs), installs


def test_test_lint_and_bench_install_dev() -> None:
    """`make test`, `make lint` and `make bench` install the `dev` extra (the lock still pins it)."""
    for target in ("test", "lint", "bench"):
        installs = _installs(_make_n(target))
        assert any("'.[dev]'" in line and "-c requirements.lock" in line for line in installs), (target, installs)


def test_what_anting_run_imports_needs_no_dev_package() -> None:
    """Every module `anting run` loads (devtools, the CLI, each service's entry) imports with
    the `dev` extra's packages made unimportable."""
    meta = tomllib.loads((REPO / "pyproject.toml").read_text())["project"]
    dev = {_name(Requirement(r).name) for r in meta["optional-dependencies"]["dev"]}
    needed = {_name(Requirement(r).name) for r in meta["dependencies"]}
    needed |= {_name(Requirement(r).name) for r in meta["optional-dependencies"]["run"]}
    dev_only = dev - needed - {"anting"}
    # a module only dev distributions provide (not a namespace shared with a runtime one,
    # as opentelemetry is)
    blocked = sorted(mod for mod, dists in packages_distributions().items()
                     if {_name(d) for d in dists} <= dev_only and not mod.startswith("_"))
    assert "pytest" in blocked and "hypothesis" in blocked
    code = f"""
import sys
class Block:
    def find_spec(self, name, path=None, target=None):
        if name.split(".")[0] in {blocked!r}:
            raise ImportError("dev-only package imported: " + name)
sys.meta_path.insert(0, Block())
import devtools.stack, devtools.localkafka, devtools.secure, services.acls
import devtools.prometheus, devtools.demo_receiver, devtools.console, devtools.supervisor
import services.cli, services.ingest.main, services.enrich.main, services.notify.main
import services.insights.main
"""
    result = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stderr[-3000:]
