"""`ANTING_RUN_SECURITY=sasl_ssl anting run` (what ``ANTING_RUN_SECURITY=sasl_ssl make run``
runs): a secured local broker of its own, each service under its own SCRAM user, the seed
enriched and delivered, the printed kcat line working as printed, no password in the
output, and Ctrl-C leaving nothing running."""

from __future__ import annotations

import json
import os
import re
import shlex
import signal
import subprocess
import sys
import threading
from pathlib import Path

import orjson
import psutil
import pytest

from devtools.localkafka import free_port
from tests.stack.test_make_run import SEED_ACCEPTED, SEED_IDS, Stack, _pump

pytestmark = [pytest.mark.kafka, pytest.mark.slow]


def test_secured_stack_runs_the_seed_each_service_as_its_own_user(tmp_path: Path) -> None:
    state = tmp_path / "state"
    ports = {"ingest": free_port(), "enrich": free_port(), "notify": free_port(), "insights": free_port()}
    kafka_port = free_port()
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAFKA_") and k not in ("ANTING_NOTIFY_ALLOW_NETWORKS", "ANTING_API_KEYS")}
    env.update({
        "ANTING_RUN_SECURITY": "sasl_ssl",
        "ANTING_RUN_KAFKA_PORT": str(kafka_port),
        "ANTING_RUN_PROMETHEUS": "false",
        "ANTING_RUN_STATE_DIR": str(state),
        **{f"ANTING_{name.upper()}_PORT": str(port) for name, port in ports.items()},
        "PYTHONUNBUFFERED": "1",
    })
    proc = subprocess.Popen([str(Path(sys.executable).parent / "anting"), "run"], env=env, cwd=tmp_path,
                            stdout=subprocess.PIPE, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL)
    st = Stack(proc, env, None, ports, tmp_path / "anting-run.log")  # type: ignore[arg-type]
    threading.Thread(target=_pump, args=(st,), daemon=True).start()
    try:
        out = st.wait_for(SEED_ACCEPTED, timeout=300)
        secure = state / "secure"
        assert f"SASL_SSL (SCRAM-SHA-512; PLAIN for kcat) on 127.0.0.1:{kafka_port}" in out

        # each service runs as its own user
        children = {" ".join(c.cmdline()[-2:]): c for c in psutil.Process(proc.pid).children()}
        for name in ports:
            child_env = children[f"serve {name}"].environ()
            assert child_env["KAFKA_SECURITY_PROTOCOL"] == "SASL_SSL"
            assert child_env["KAFKA_SASL_USERNAME"] == f"anting-{name}"

        # the printed example works as printed (relative to where anting run was started)
        line = re.search(r"e\.g\. (\S*kcat -F \S+kcat-reader\.conf -C -t enriched-events)", out)
        assert line is not None, out
        argv = shlex.split(line.group(1))
        got = None
        for _ in range(30):
            got = subprocess.run([*argv, "-o", "beginning", "-e", "-f", "%s\n"], cwd=tmp_path,
                                 capture_output=True, text=True, timeout=60)
            ids = {orjson.loads(v)["id"] for v in got.stdout.splitlines() if v.startswith("{")}
            if ids >= set(SEED_IDS):
                break
        assert got is not None and got.returncode == 0, got.stderr if got else ""
        assert ids >= set(SEED_IDS)

        # the material is private and no password reached the output
        passwords = json.loads((secure / "credentials.json").read_text())
        assert set(passwords) >= {"anting-admin", "anting-ingest", "anting-enrich", "anting-notify",
                                  "anting-insights", "publisher", "reader"}
        assert (secure / "credentials.json").stat().st_mode & 0o077 == 0
        assert (secure / "kcat-reader.conf").stat().st_mode & 0o077 == 0
        st.wait_for(r"enriched", timeout=30)
        everything = st.output()
        for principal, password in passwords.items():
            assert password not in everything, f"{principal}'s password was printed"
    finally:
        if proc.poll() is None:
            children_all = psutil.Process(proc.pid).children(recursive=True)
            proc.send_signal(signal.SIGINT)
            try:
                code = proc.wait(90)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait()
                code = None
            _, alive = psutil.wait_procs(children_all, timeout=30)
    assert code == 0
    assert not alive, [p.pid for p in alive]
