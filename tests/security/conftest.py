"""A secured Kafka for the tests of tests/security: SASL_SSL, SCRAM-SHA-512, ACLs.

The session fixture ``secure_kafka`` starts ONE local KRaft broker on a free port (data
and material in temporary directories: the repository's ``.local/secure`` is never
read or written), applies Anting's ACL table (services/acls.py) for the topic prefix
``""`` and creates every contract topic as ``anting-admin``. It yields a
``SecuredKafka``:

* ``.bootstrap`` ``"127.0.0.1:<port>"``; ``.ca_file`` the CA (PEM) clients must trust;
* ``.env(principal)`` the ``KAFKA_*`` variables of that principal (bootstrap, SASL_SSL,
  SCRAM-SHA-512, user, password, CA file), to merge into a service's environment;
* ``.settings(principal, prefix="")`` an ``AntingSettings`` for in-process clients;
* ``.kcat_config(principal)`` the librdkafka properties file for ``kcat -F``;
  ``.kcat(principal, *args, input=None, timeout=30)`` runs the system's ``kcat -F <that>
  *args`` (as a user would: PLAIN inside TLS, see ``devtools.secure.KCAT_MECHANISM``) and
  returns the ``CompletedProcess`` (text, stdout and stderr captured);
* ``.acls`` the table applied (``services.acls.Acl`` rows); ``.acl(principal, resource,
  name, operation)`` finds one row; ``.remove_acl(acl)`` / ``.restore_acl(acl)`` and
  the context manager ``.without_acl(acl)`` take one away and give it back (the brokers
  apply a change within a moment: retry an assertion on the refusal briefly);
* ``.use_prefix(prefix)`` applies the table for another topic prefix and creates its
  topics (for tests that want topics of their own), returning the rows added;
* ``.admin_config`` librdkafka properties of the super user ``anting-admin``;
  ``.material`` the ``devtools.secure.SecureMaterial``; ``.broker`` the ``LocalKafka``.

Principals: ``anting-ingest``, ``anting-enrich``, ``anting-notify``,
``anting-insights``, ``anting-admin`` (super user), ``publisher`` (writes the input
topics), ``reader`` (reads ``enriched-events`` in groups ``reader-*``).
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import shutil
import subprocess
import tempfile
from collections.abc import Iterator
from pathlib import Path

import pytest

from devtools.localkafka import LocalKafka
from devtools.secure import SecureMaterial
from services import acls
from services.acls import ADMIN, Acl
from shared.kafka import ensure_topics
from shared.settings import AntingSettings, KafkaSettings

KCAT = "/usr/bin/kcat"


class SecuredKafka:
    """A started secured broker, its material and its ACLs (see the module docstring)."""

    def __init__(self, broker: LocalKafka, material: SecureMaterial) -> None:
        self.broker = broker
        self.material = material
        self.acls: list[Acl] = []

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:<port>`` of the SASL_SSL listener."""
        return self.broker.bootstrap

    @property
    def ca_file(self) -> Path:
        """The CA certificate (PEM) that signed the broker's certificate."""
        return self.material.ca_file

    @property
    def admin_config(self) -> dict[str, str]:
        """librdkafka properties of ``anting-admin`` (a super user)."""
        return self.material.librdkafka_config(ADMIN, self.bootstrap)

    def env(self, principal: str) -> dict[str, str]:
        """``KAFKA_*`` variables of ``principal`` on this broker."""
        return self.material.env(principal, self.bootstrap)

    def settings(self, principal: str, prefix: str = "") -> AntingSettings:
        """In-process settings of ``principal`` (topics under ``prefix``)."""
        env = self.env(principal)
        kafka = KafkaSettings(
            bootstrap_servers=self.bootstrap, security_protocol="SASL_SSL",
            sasl_mechanism="SCRAM-SHA-512", sasl_username=principal,
            sasl_password=env["KAFKA_SASL_PASSWORD"], ssl_cafile=env["KAFKA_SSL_CAFILE"])
        return AntingSettings(kafka=kafka, topic_prefix=prefix)

    def kcat_config(self, principal: str) -> Path:
        """The ``kcat -F`` file of ``principal``."""
        return self.material.kcat_config(principal)

    def kcat(self, principal: str, *args: str, input: str | bytes | None = None,
             timeout: float = 30.0, config: Path | None = None) -> subprocess.CompletedProcess[str]:
        """``kcat -F <principal's config> *args`` (``config`` replaces the file), its
        output captured as text; never raises on a non-zero exit."""
        data = input.decode() if isinstance(input, bytes) else input
        return subprocess.run([KCAT, "-F", str(config or self.kcat_config(principal)), *args],
                              input=data, capture_output=True, text=True, timeout=timeout)

    def acl(self, principal: str, resource: str, name: str, operation: str) -> Acl:
        """The applied row matching these; ``LookupError`` when there is none."""
        for a in self.acls:
            if (a.principal, a.resource, a.name, a.operation) == (principal, resource, name, operation):
                return a
        raise LookupError(f"no ACL {principal} {operation} {resource} {name}")

    def remove_acl(self, acl: Acl) -> None:
        """Delete one ACL on the broker."""
        acls.remove_acl(self.admin_config, acl)

    def restore_acl(self, acl: Acl) -> None:
        """Create one ACL again."""
        acls.restore_acl(self.admin_config, acl)

    @contextlib.contextmanager
    def without_acl(self, acl: Acl) -> Iterator[None]:
        """The block runs without ``acl``; restored afterwards."""
        with acls.without_acl(self.admin_config, acl):
            yield

    def use_prefix(self, prefix: str) -> list[Acl]:
        """Apply the ACL table for topics under ``prefix`` and create those topics."""
        rows = acls.acl_table(prefix)
        acls.apply_acls(self.admin_config, rows)
        self.acls += [r for r in rows if r not in self.acls]
        asyncio.run(ensure_topics(self.settings(ADMIN, prefix)))
        return rows


@pytest.fixture(scope="session")
def secure_kafka() -> Iterator[SecuredKafka]:
    """One secured broker for the session (see the module docstring)."""
    if shutil.which(KCAT) is None:
        pytest.fail(f"{KCAT} is needed by the security tests (Debian: apt-get install kcat)")
    secure_dir = Path(tempfile.mkdtemp(prefix="anting-secure-"))
    material = SecureMaterial(secure_dir)
    material.issue_tls()
    # a few prefixes' topics, not the thousands of the main test broker: less heap (the
    # JVM commits all of it at start, -Xms = -Xmx) beside that broker in the same run
    broker = LocalKafka(heap="768m", secure=material)
    broker.start()
    try:
        material.write_client_configs(broker.bootstrap)
        kafka = SecuredKafka(broker, material)
        kafka.use_prefix("")
        yield kafka
    finally:
        broker.stop(timeout=2.0)  # throwaway data: no controlled shutdown to wait for
        shutil.rmtree(secure_dir, ignore_errors=True)


@pytest.fixture
def log_secrets() -> list[str]:
    """Secrets a test made (API keys, tokens) that no log may hold; ``no_secret_in_logs``
    adds every SCRAM user's password."""
    return []


# the smallest secret worth looking for: shorter strings match by chance
_MIN_SECRET = 12


@pytest.fixture(autouse=True)
def no_secret_in_logs(request: pytest.FixtureRequest, log_secrets: list[str]) -> Iterator[None]:
    """After every test of tests/security: no log it wrote (the ``*.log`` files under its
    ``tmp_path``: the services', the stack's, a cluster's brokers') and not the secured
    broker's log hold a password of a Kafka user (the session broker's, and those of any
    material the test made itself) or a secret the test listed in ``log_secrets``. Together the
    tests of this directory run every service on the secured broker, so this is the log
    of the whole secured suite, looked at test by test."""
    # the fixtures' values are taken now: after the test they may be torn down
    kafka: SecuredKafka | None = (request.getfixturevalue("secure_kafka")
                                  if "secure_kafka" in request.fixturenames else None)
    tmp: Path | None = request.getfixturevalue("tmp_path") if "tmp_path" in request.fixturenames else None
    yield
    secrets_ = [s for s in log_secrets if len(s) >= _MIN_SECRET]
    logs: list[Path] = []
    if kafka is not None:
        secrets_ += list(kafka.material.passwords().values())
        logs.append(kafka.broker.log_file)
    if tmp is not None:
        # Kafka's segment files are named by offset (00000000000000000000.log): data, not logs
        logs += [p for p in tmp.rglob("*.log") if p.is_file() and not p.stem.isdigit()]
        # a test that made its own material (a stack, a cluster): its users' passwords too
        for found in tmp.rglob("credentials.json"):
            secrets_ += list(json.loads(found.read_text()).values())
    assert secrets_ or not logs, "no secret to look for: the check would pass vacuously"
    for path in logs:
        if not path.is_file():
            continue
        text = path.read_bytes()
        for secret in secrets_:
            assert secret.encode() not in text, f"a secret is in {path.name}"
