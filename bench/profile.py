"""Profile one step: py-spy attached to every service the step starts, stacks
summarised by self time and by inclusive time (``python -m bench --profile enrich.eos``)."""

from __future__ import annotations

import collections
import re
import sys
from collections.abc import Callable
from pathlib import Path

from bench import procs

FRAME = re.compile(r"^(?P<func>.*?) \((?P<file>[^:()]+)(?::(?P<line>\d+))?\)$")


def _short(frame: str) -> str:
    """'handle (/x/.venv/lib/python3.11/site-packages/aiokafka/producer.py:123)' →
    'aiokafka/producer.py:handle'."""
    m = FRAME.match(frame)
    if m is None:
        return frame
    path = m["file"]
    for marker in ("site-packages/", "/lib/python3.11/", "/work/main/"):
        if marker in path:
            path = path.split(marker, 1)[1]
            break
    else:
        parts = Path(path).parts
        path = "/".join(parts[-3:])
    return f"{path}:{m['func']}"


def summarise(raw: Path, top: int = 25) -> str:
    """Self and inclusive sample shares from py-spy's raw (collapsed) output."""
    self_t: collections.Counter[str] = collections.Counter()
    incl: collections.Counter[str] = collections.Counter()
    files: collections.Counter[str] = collections.Counter()
    total = 0
    for line in raw.read_text(errors="replace").splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = [_short(f) for f in stack.split(";") if f and not f.startswith("process ")
                  and not f.startswith("thread ")]
        if not frames:
            continue
        self_t[frames[-1]] += n
        for f in set(frames):
            incl[f] += n
        for pkg in {f.split("/", 1)[0] if "/" in f else f.split(":", 1)[0] for f in frames}:
            files[pkg] += n
    if total == 0:
        return f"{raw.name}: no samples\n"
    out = [f"{raw.name}: {total} samples", "", "self time:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in self_t.most_common(top)]
    out += ["", "inclusive time:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in incl.most_common(top)]
    out += ["", "inclusive time by top-level package:"]
    out += [f"  {n / total:6.1%}  {f}" for f, n in files.most_common(15)]
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
