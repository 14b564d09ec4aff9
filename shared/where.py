"""Where the stack is: one knob for its ports, and the profile ``anting run`` writes.

``ANTING_PORT_OFFSET`` (default 0) moves every port of the local stack together: the
broker ``9092 + N`` (a cluster's nodes the next ones), ingest ``8001 + N``, enrich
``8002 + N``, notify ``8003 + N``, insights ``8004 + N``, Prometheus ``9090 + N``. It
is read by ``anting run``, ``anting kafka``, ``anting serve`` and every client command,
as the default of each port; a port's own variable (``ANTING_NOTIFY_PORT``, ...) still
wins over it.

``anting run`` writes where its stack is to the profile, ``<state dir>/stack.env``
(``.local/stack.env`` in the checkout, or under ``ANTING_RUN_STATE_DIR``), and removes it
when it stops. Every other ``anting`` command reads it for what its environment does not
say. The order, for each address: the environment (the address itself, or what it is
made of: ``ANTING_NOTIFY_URL``, ``ANTING_NOTIFY_HOST``/``_PORT``, ``ANTING_PORT_OFFSET``)
> the profile > the defaults moved by the offset. A profile whose ``anting run`` is no
longer alive (a ``kill -9`` of it) is ignored.
"""

from __future__ import annotations

import os
from collections.abc import Mapping, MutableMapping
from pathlib import Path

__all__ = ["DEFAULT_PORTS", "OFFSET_VARIABLE", "PROFILE_KEYS", "apply_profile", "default_port",
           "port_offset", "profile_path", "read_profile", "remove_profile", "service_url",
           "write_profile"]

OFFSET_VARIABLE = "ANTING_PORT_OFFSET"

#: every port of the local stack before ANTING_PORT_OFFSET moves it
DEFAULT_PORTS = {"kafka": 9092, "ingest": 8001, "enrich": 8002, "notify": 8003, "insights": 8004,
                 "prometheus": 9090}

SERVICES = ("ingest", "enrich", "notify", "insights")

#: what a profile may hold, each with the environment variables that take its place
PROFILE_KEYS: dict[str, tuple[str, ...]] = {
    "KAFKA_BOOTSTRAP_SERVERS": ("KAFKA_BOOTSTRAP_SERVERS", OFFSET_VARIABLE),
    "ANTING_TOPIC_PREFIX": ("ANTING_TOPIC_PREFIX",),
    OFFSET_VARIABLE: (OFFSET_VARIABLE,),
    **{f"ANTING_{s.upper()}_URL": (f"ANTING_{s.upper()}_URL", f"ANTING_{s.upper()}_HOST",
                                   f"ANTING_{s.upper()}_PORT", OFFSET_VARIABLE) for s in SERVICES},
    "ANTING_PROMETHEUS_URL": ("ANTING_PROMETHEUS_URL", "ANTING_RUN_PROMETHEUS_PORT", OFFSET_VARIABLE),
}

_CHECKOUT = Path(__file__).resolve().parent.parent


def port_offset(environ: Mapping[str, str] | None = None) -> int:
    """``ANTING_PORT_OFFSET`` (0 when unset); a value that is not a whole number from 0 to
    55000 raises :class:`shared.settings.SettingsError` naming it."""
    text = (os.environ if environ is None else environ).get(OFFSET_VARIABLE, "").strip()
    if not text:
        return 0
    if not text.isdigit() or int(text) > 55000:
        from shared.settings import SettingsError

        raise SettingsError(f"bad setting:\n  {OFFSET_VARIABLE}: {text!r} is not a whole number "
                            "from 0 to 55000 (it is added to every port of the stack)")
    return int(text)


def default_port(what: str, environ: Mapping[str, str] | None = None) -> int:
    """The port of ``what`` (``kafka``, a service's name, ``prometheus``) when its own
    variable is unset: its usual port moved by ``ANTING_PORT_OFFSET``."""
    return DEFAULT_PORTS[what] + port_offset(environ)


def service_url(service: str, environ: Mapping[str, str] | None = None) -> str:
    """Where ``service`` answers, for a client: ``ANTING_<SERVICE>_URL``, else
    ``http://<ANTING_<SERVICE>_HOST>:<ANTING_<SERVICE>_PORT>`` with the defaults
    (127.0.0.1, the usual port moved by the offset); a wildcard host is asked on loopback."""
    env = os.environ if environ is None else environ
    name = service.upper()
    given = env.get(f"ANTING_{name}_URL", "").strip()
    if given:
        return given.rstrip("/")
    host = env.get(f"ANTING_{name}_HOST", "").strip() or "127.0.0.1"
    if host in ("0.0.0.0", "::"):
        host = "127.0.0.1"
    port = env.get(f"ANTING_{name}_PORT", "").strip() or str(default_port(service, env))
    return f"http://{host}:{port}"


def profile_path(environ: Mapping[str, str] | None = None) -> Path:
    """``<ANTING_RUN_STATE_DIR>/stack.env``, else the checkout's ``.local/stack.env``."""
    env = os.environ if environ is None else environ
    state = env.get("ANTING_RUN_STATE_DIR", "").strip()
    return (Path(state).resolve() if state else _CHECKOUT / ".local") / "stack.env"


def _alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True
    return True


def read_profile(path: Path) -> dict[str, str]:
    """The profile's variables (``{}`` when there is none, or its ``anting run`` is gone)."""
    try:
        text = path.read_text(encoding="utf-8")
    except (FileNotFoundError, NotADirectoryError):
        return {}
    values: dict[str, str] = {}
    for line in text.splitlines():
        line = line.strip()
        if line.startswith("# pid "):
            pid = line.removeprefix("# pid ").split()[0]
            if pid.isdigit() and not _alive(int(pid)):
                return {}
        if not line or line.startswith("#") or "=" not in line:
            continue
        key, _, value = line.partition("=")
        if key in PROFILE_KEYS and value:
            values[key] = value
    return values


def apply_profile(environ: MutableMapping[str, str], path: Path | None = None) -> dict[str, str]:
    """Set in ``environ`` each profile variable the environment does not say (neither it
    nor what it is made of is in it, even empty: ``ANTING_TOPIC_PREFIX=`` says "no
    prefix"); returns what was set."""
    profile = read_profile(path or profile_path(environ))
    taken = {key: value for key, value in profile.items()
             if not any(var in environ for var in PROFILE_KEYS[key])}
    environ.update(taken)
    return taken


def write_profile(path: Path, values: Mapping[str, str], pid: int) -> None:
    """Write the profile of the ``anting run`` with ``pid`` (a file a shell can source:
    ``set -a; . .local/stack.env; set +a``)."""
    unknown = set(values) - set(PROFILE_KEYS)
    assert not unknown, f"not profile variables: {unknown}"
    lines = ["# where the stack of `anting run` is; removed when it stops (README, Configuration)",
             f"# pid {pid}"]
    lines += [f"{k}={v}" for k, v in values.items() if v]
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_text("\n".join(lines) + "\n", encoding="utf-8")
    tmp.replace(path)


def remove_profile(path: Path, pid: int) -> None:
    """Remove the profile if it is still the one of the ``anting run`` with ``pid``."""
    try:
        if f"# pid {pid}\n" in path.read_text(encoding="utf-8"):
            path.unlink()
    except FileNotFoundError:
        pass
