"""Profile one step: py-spy attached to every service the step starts, stacks
summarised by self time and by inclusive time (``python -m bench --profile enrich.eos``)."""

from __future__ import annotations

import collections
import re
import sys
from collections.abc import Callable
from pathlib import Path

from bench import procs

REPO_ROOT = Path(__file__).resolve().parent.parent

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """'handle (/x/.venv/lib/python3.11/site-packages/aiokafka/producer.py:123)' →
    'aiokafka/producer.py:handle'."""
    m = FRAME.match(frame)
    if m is None:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "/lib/python3.11/", f"{REPO_ROOT}/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        parts = Path(path).parts
        path = "/".join(parts[-3:])
    return f"{path}:{m['func']}"


def _package(frame: str) -> str:
    path = frame.split(":", 1)[0]
    return path.split("/", 1)[0] if "/" in path else path.removesuffix(".py")


def summarise(raw: Path, top: int = 25) -> str:
    """Self time (where the CPU is) and our own code's inclusive time from py-spy's raw
    (collapsed) output. Coroutines run from uvloop's C loop appear as stacks of their own,
    so the inclusive share of frames above them means little: only ours is listed."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    pkg: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        total += n
        self_t[frames[-1]] += n
        pkg[_package(frames[-1])] += n
        for f in set(frames):
            if f.startswith(("services/", "shared/")) and not f.startswith(
                    ("services/cli.py", "shared/runtime.py")):
                incl[f] += n
    if total == 0:
        return f"{raw.name}: no samples\n"
    out = [f"{raw.name}: {total} samples of a busy thread", "", "self time:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in self_t.most_common(top)]
    out += ["", "self time by package:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in pkg.most_common(15)]
    out += ["", "inclusive time of our own code:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in incl.most_common(top)]
    return "\n".join(out) + "\n"


def run(key: str, fn: Callable[[], None], scratch: Path) -> None:
    out_dir = scratch.parent / f"profile-{key}"
    out_dir.mkdir(parents=True, exist_ok=True)
    procs.PROFILE_DIR = out_dir
    try:
        fn()
    finally:
        procs.PROFILE_DIR = None
        procs.stop_profilers()
    for raw in sorted(out_dir.glob("*.raw")):
        text = summarise(raw)
        (raw.with_suffix(".txt")).write_text(text)
        print(text, file=sys.stderr)
    print(f"bench: profiles in {out_dir}", file=sys.stderr)
