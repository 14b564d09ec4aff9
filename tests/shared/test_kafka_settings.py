"""The Kafka connection settings refuse, at start, what cannot work or would leak a
password: one message naming the variables (``shared.settings.KafkaSettings``)."""

from __future__ import annotations

import os
import ssl
import subprocess
import sys
from pathlib import Path

import pytest

from shared.settings import KafkaSettings, SettingsError, load

REPO = Path(__file__).resolve().parents[2]
SASL = {"KAFKA_SASL_USERNAME": "anting-ingest", "KAFKA_SASL_PASSWORD": "secret"}


@pytest.fixture
def env(monkeypatch: pytest.MonkeyPatch) -> pytest.MonkeyPatch:
    for name in list(os.environ):
        if name.startswith("KAFKA_") or name == "ANTING_ALLOW_INSECURE_SASL":
            monkeypatch.delenv(name)
    return monkeypatch


def _set(env: pytest.MonkeyPatch, **values: str) -> None:
    for name, value in values.items():
        env.setenv(name, value)


def _refused(env: pytest.MonkeyPatch, **values: str) -> str:
    _set(env, **values)
    with pytest.raises(SettingsError) as caught:
        load(KafkaSettings)
    return str(caught.value)


def test_plain_over_plaintext_is_refused_naming_the_variables(env: pytest.MonkeyPatch) -> None:
    msg = _refused(env, KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_MECHANISM="PLAIN", **SASL)
    for name in ("KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT", "KAFKA_SASL_MECHANISM=PLAIN",
                 "KAFKA_SASL_PASSWORD", "SASL_SSL", "ANTING_ALLOW_INSECURE_SASL=true"):
        assert name in msg, msg
    assert "Value error" not in msg and "\n" not in msg.removeprefix("bad setting:\n").strip(), msg


def test_plain_is_the_default_mechanism_and_refused_too(env: pytest.MonkeyPatch) -> None:
    msg = _refused(env, KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", **SASL)
    assert "KAFKA_SASL_MECHANISM=PLAIN (its default)" in msg, msg


def test_plain_over_plaintext_when_allowed(env: pytest.MonkeyPatch) -> None:
    _set(env, KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_MECHANISM="PLAIN",
         ANTING_ALLOW_INSECURE_SASL="true", **SASL)
    opts = load(KafkaSettings).client_options()
    assert opts["sasl_mechanism"] == "PLAIN" and opts["sasl_plain_username"] == "anting-ingest"


def test_scram_over_plaintext_is_not_refused(env: pytest.MonkeyPatch) -> None:
    # SCRAM never sends the password itself (the exchange proves it knows it)
    _set(env, KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_MECHANISM="SCRAM-SHA-512", **SASL)
    assert load(KafkaSettings).client_options()["sasl_mechanism"] == "SCRAM-SHA-512"


@pytest.mark.parametrize("missing", ["KAFKA_SASL_USERNAME", "KAFKA_SASL_PASSWORD"])
def test_sasl_without_credentials(env: pytest.MonkeyPatch, missing: str) -> None:
    given = {k: v for k, v in SASL.items() if k != missing}
    msg = _refused(env, KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_MECHANISM="SCRAM-SHA-512", **given)
    assert f"{missing} is not set" in msg, msg


def test_sasl_credentials_without_a_sasl_protocol(env: pytest.MonkeyPatch) -> None:
    msg = _refused(env, KAFKA_SECURITY_PROTOCOL="SSL", **SASL)
    assert "KAFKA_SECURITY_PROTOCOL=SSL does not authenticate with SASL" in msg, msg


def test_a_missing_cafile(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    msg = _refused(env, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(tmp_path / "ca.pem"))
    assert f"KAFKA_SSL_CAFILE={tmp_path / 'ca.pem'}: no such file" in msg, msg


def test_an_unreadable_cafile(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("x")
    ca.chmod(0)

    def load_as_a_user(cafile: str | None = None) -> ssl.SSLContext:
        # root reads a file of mode 000 anyway: the refusal a service user meets, raised here
        raise PermissionError(13, "Permission denied", cafile)

    env.setattr(ssl, "create_default_context", load_as_a_user)
    msg = _refused(env, KAFKA_SECURITY_PROTOCOL="SASL_SSL", KAFKA_SASL_MECHANISM="SCRAM-SHA-512",
                   KAFKA_SSL_CAFILE=str(ca), **SASL)
    assert "not readable by this process" in msg, msg


def test_a_cafile_without_certificates(env: pytest.MonkeyPatch, tmp_path: Path) -> None:
    ca = tmp_path / "ca.pem"
    ca.write_text("not a certificate\n")
    msg = _refused(env, KAFKA_SECURITY_PROTOCOL="SSL", KAFKA_SSL_CAFILE=str(ca))
    assert "not a file of PEM CA certificates" in msg, msg


def test_tls_verifies_the_certificate_and_the_host_name(env: pytest.MonkeyPatch) -> None:
    _set(env, KAFKA_SECURITY_PROTOCOL="SSL")
    context = load(KafkaSettings).client_options()["ssl_context"]
    assert context.verify_mode == ssl.CERT_REQUIRED and context.check_hostname is True


def test_a_service_refuses_plain_over_plaintext_at_start() -> None:
    """``anting serve ingest`` with PLAIN over SASL_PLAINTEXT: the message, exit code 2, no
    traceback, before any connection is tried (the bootstrap address answers nothing)."""
    env = {k: v for k, v in os.environ.items()
           if not k.startswith("KAFKA_") and k != "ANTING_ALLOW_INSECURE_SASL"}
    env.update(SASL, KAFKA_SECURITY_PROTOCOL="SASL_PLAINTEXT", KAFKA_SASL_MECHANISM="PLAIN",
               KAFKA_BOOTSTRAP_SERVERS="127.0.0.1:9", COLUMNS="300", NO_COLOR="1")
    result = subprocess.run([str(Path(sys.executable).parent / "anting"), "serve", "ingest"],
                            env=env, cwd=REPO, capture_output=True, text=True, timeout=60)
    out = result.stdout + result.stderr
    assert result.returncode == 2, out
    assert "KAFKA_SECURITY_PROTOCOL=SASL_PLAINTEXT with KAFKA_SASL_MECHANISM=PLAIN" in out, out
    assert "ANTING_ALLOW_INSECURE_SASL=true" in out, out
    assert "Traceback" not in out, out
