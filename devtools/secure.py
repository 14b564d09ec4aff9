"""The material of a secured local Kafka (SASL_SSL, SCRAM-SHA-512): passwords, TLS, client configs.

``SecureMaterial(directory)`` keeps in one directory (``.local/secure/`` for ``anting
run`` and ``anting kafka``; a temporary one in the tests):

* ``credentials.json`` (mode 0600): a random password per principal of
  ``services.acls.CLIENT_PRINCIPALS`` and the brokers' own, made once and reused, because
  the SCRAM users are written into the KRaft metadata when the storage is formatted and
  the configs handed out must stay valid across restarts;
* ``ca.pem`` / ``ca-key.pem`` and ``broker.pem`` / ``broker-key.pem``: a throwaway CA
  made anew at every start (``trustme``) and the brokers' certificate it signs, valid for
  ``127.0.0.1`` and ``localhost`` so that clients verifying host names (librdkafka's and
  Java's default, ``ssl.endpoint.identification.algorithm=https``) accept it; the client
  configs name ``ca.pem`` by path, so they survive the new CA;
* per principal, ready-made client configs written once the bootstrap is known:
  ``kcat-<principal>.conf`` (librdkafka properties, for ``kcat -F``),
  ``<principal>.properties`` (Java clients: ``kafka-console-consumer
  --consumer.config``) and ``<principal>.env`` (the ``KAFKA_*`` variables Anting's
  services read, shared/settings.py). All mode 0600.

Passwords never go to stdout or a log: callers print paths, not contents.
"""

from __future__ import annotations

import json
import os
import secrets
from pathlib import Path
from typing import TYPE_CHECKING

from services.acls import BROKER, CLIENT_PRINCIPALS

if TYPE_CHECKING:
    from shared.settings import AntingSettings

__all__ = ["KCAT_MECHANISM", "MECHANISM", "SecureMaterial", "credentials_digest", "provision"]

MECHANISM = "SCRAM-SHA-512"
"""The SASL mechanism of the client listener: the services, Java clients, the brokers."""

KCAT_MECHANISM = "PLAIN"
"""The mechanism of the ``kcat-*.conf`` files, over the same TLS listener and for the
same users and passwords. Why not SCRAM there: librdkafka before 2.6.1 appends the
client nonce twice in SCRAM's final message, which Kafka 4 (strict RFC 5802 nonce
check) refuses as "invalid credentials" (confluentinc/librdkafka#4895), and the kcat
most systems ship (Debian 12's: librdkafka 2.0.2) is older. PLAIN inside TLS whose
certificate and host name the client verifies is what managed Kafka services offer
librdkafka clients; it shows the password to the broker, which SCRAM does not. With a
librdkafka of 2.6.1 or later, ``sasl.mechanisms=SCRAM-SHA-512`` in the same file works
too."""


def _write_private(path: Path, text: str) -> None:
    """Write ``text`` to ``path`` readable by its owner only (created 0600, never wider
    for a moment)."""
    path.parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as f:
        f.write(text)
    os.chmod(path, 0o600)


class SecureMaterial:
    """Passwords, TLS files and client configs in ``directory`` (created, mode 0700).

    ``issue_tls()`` makes the CA and the broker's certificate (call it once per start of a
    broker or cluster, before its nodes are prepared); ``write_client_configs(bootstrap)``
    the per-principal files. Passwords are made on first use and kept in
    ``credentials.json``."""

    def __init__(self, directory: Path) -> None:
        self.dir = Path(directory)
        self.dir.mkdir(parents=True, exist_ok=True)
        os.chmod(self.dir, 0o700)
        self._passwords: dict[str, str] | None = None

    # ------------------------------------------------------------------ credentials

    @property
    def credentials_file(self) -> Path:
        """``credentials.json``: principal → password (0600)."""
        return self.dir / "credentials.json"

    def passwords(self) -> dict[str, str]:
        """Principal → password for every client principal and the broker's, made (32
        random URL-safe characters; safe inside ``--add-scram``'s bracket syntax and JAAS
        quotes) for those missing and saved."""
        if self._passwords is None:
            saved: dict[str, str] = {}
            if self.credentials_file.is_file():
                saved = dict(json.loads(self.credentials_file.read_text()))
            wanted = (BROKER, *CLIENT_PRINCIPALS)
            missing = [p for p in wanted if p not in saved]
            for p in missing:
                saved[p] = secrets.token_urlsafe(24)
            if missing or not self.credentials_file.is_file():
                _write_private(self.credentials_file, json.dumps(saved, indent=2) + "\n")
            self._passwords = saved
        return self._passwords

    def password(self, principal: str) -> str:
        """The password of ``principal``; ``KeyError`` for one not in the table."""
        return self.passwords()[principal]

    def scram_format_args(self) -> list[str]:
        """``kafka-storage format`` arguments creating a SCRAM-SHA-512 user per principal
        (the client principals and the brokers' own, which signs in to other brokers
        with it): ``--add-scram SCRAM-SHA-512=[name=...,password=...]`` each."""
        args: list[str] = []
        for principal, password in self.passwords().items():
            args += ["--add-scram", f"{MECHANISM}=[name={principal},password={password}]"]
        return args

    # ------------------------------------------------------------------ TLS

    @property
    def ca_file(self) -> Path:
        """The CA certificate clients trust (``ssl.ca.location``, ``KAFKA_SSL_CAFILE``)."""
        return self.dir / "ca.pem"

    @property
    def broker_cert(self) -> Path:
        """The brokers' certificate chain (PEM)."""
        return self.dir / "broker.pem"

    @property
    def broker_key(self) -> Path:
        """The brokers' private key (PKCS#8 PEM, unencrypted, 0600)."""
        return self.dir / "broker-key.pem"

    def issue_tls(self) -> None:
        """A new CA and a broker certificate for 127.0.0.1 and localhost, written to
        ``ca.pem``, ``ca-key.pem``, ``broker.pem`` and ``broker-key.pem`` (keys 0600).
        RSA: Java's PEM key store reads an unencrypted PKCS#8 key of any kind, RSA is the
        one every TLS stack of the clients (librdkafka, Java, Python) takes."""
        import trustme
        from cryptography.hazmat.primitives import serialization

        ca = trustme.CA(key_type=trustme.KeyType.RSA, organization_name="Anting local CA")
        leaf = ca.issue_cert("127.0.0.1", "localhost", common_name="anting-broker",
                             key_type=trustme.KeyType.RSA)
        key = serialization.load_pem_private_key(leaf.private_key_pem.bytes(), password=None)
        pkcs8 = key.private_bytes(serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8,
                                  serialization.NoEncryption()).decode()
        _write_private(self.dir / "ca-key.pem", ca.private_key_pem.bytes().decode())
        _write_private(self.broker_key, pkcs8)
        _write_private(self.broker_cert, "".join(b.bytes().decode() for b in leaf.cert_chain_pems))
        _write_private(self.ca_file, ca.cert_pem.bytes().decode())

    # ------------------------------------------------------------------ the broker

    def broker_properties(self, client_listener: str = "SASL_SSL") -> list[str]:
        """``server.properties`` lines for the security of a node whose listeners are
        ``client_listener`` (SASL_SSL, SCRAM-SHA-512: clients and the other brokers) and
        ``CONTROLLER`` (SASL_PLAINTEXT, PLAIN: the brokers' own login only). The client
        listener also takes PLAIN for the client users (``KCAT_MECHANISM`` says why).

        Why PLAIN on the controller listener: SCRAM credentials live in the metadata log
        the controllers themselves serve, so the quorum's own links use a login that needs
        no metadata (PLAIN, as in Kafka's KRaft examples); and a PLAINTEXT listener's
        principal is ``User:ANONYMOUS``, which would have to be a super user: anyone on
        the machine could then change ACLs through the controller (Kafka 4 lets admin
        clients talk to controllers). The listener is on loopback, so the password does
        not cross a network in clear. Requires ``issue_tls()`` first: the key and the
        certificates are inlined as PEM (``ssl.keystore.key``,
        ``ssl.keystore.certificate.chain``, ``ssl.truststore.certificates``; newlines as
        ``\\n``, which Java's properties reader turns back), so no key store file or
        password is involved."""
        name = client_listener.lower()
        pw = self.password(BROKER)

        def inline(path: Path) -> str:
            return path.read_text().strip().replace("\n", "\\n")

        plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
                 f'username="{BROKER}" password="{pw}" user_{BROKER}="{pw}";')
        # the client listener's PLAIN users (for librdkafka clients, see KCAT_MECHANISM):
        # the same users and passwords as SCRAM's
        client_plain = ("org.apache.kafka.common.security.plain.PlainLoginModule required "
                        + " ".join(f'user_{p}="{self.password(p)}"' for p in CLIENT_PRINCIPALS) + ";")
        scram = ("org.apache.kafka.common.security.scram.ScramLoginModule required "
                 f'username="{BROKER}" password="{pw}";')
        return [
            f"sasl.enabled.mechanisms={MECHANISM},{KCAT_MECHANISM}",
            f"listener.name.{name}.sasl.enabled.mechanisms={MECHANISM},{KCAT_MECHANISM}",
            f"listener.name.{name}.{MECHANISM.lower()}.sasl.jaas.config={scram}",
            f"listener.name.{name}.{KCAT_MECHANISM.lower()}.sasl.jaas.config={client_plain}",
            f"sasl.mechanism.inter.broker.protocol={MECHANISM}",
            "listener.name.controller.sasl.enabled.mechanisms=PLAIN",
            f"listener.name.controller.plain.sasl.jaas.config={plain}",
            "sasl.mechanism.controller.protocol=PLAIN",
            "ssl.keystore.type=PEM",
            f"ssl.keystore.certificate.chain={inline(self.broker_cert)}",
            f"ssl.keystore.key={inline(self.broker_key)}",
            "ssl.truststore.type=PEM",  # the brokers' own client side, to other brokers
            f"ssl.truststore.certificates={inline(self.ca_file)}",
            "ssl.client.auth=none",
            "authorizer.class.name=org.apache.kafka.metadata.authorizer.StandardAuthorizer",
            "allow.everyone.if.no.acl.found=false",
            "super.users=" + ";".join(f"User:{u}" for u in (BROKER, "anting-admin")),
        ]

    # ------------------------------------------------------------------ clients

    def env(self, principal: str, bootstrap: str) -> dict[str, str]:
        """The ``KAFKA_*`` variables (shared/settings.py) of ``principal`` on ``bootstrap``,
        to merge into a service's environment."""
        return {
            "KAFKA_BOOTSTRAP_SERVERS": bootstrap,
            "KAFKA_SECURITY_PROTOCOL": "SASL_SSL",
            "KAFKA_SASL_MECHANISM": MECHANISM,
            "KAFKA_SASL_USERNAME": principal,
            "KAFKA_SASL_PASSWORD": self.password(principal),
            "KAFKA_SSL_CAFILE": str(self.ca_file),
        }

    def librdkafka_config(self, principal: str, bootstrap: str) -> dict[str, str]:
        """librdkafka properties of ``principal`` (kcat, confluent-kafka)."""
        return {
            "bootstrap.servers": bootstrap,
            "security.protocol": "SASL_SSL",
            "sasl.mechanisms": MECHANISM,
            "sasl.username": principal,
            "sasl.password": self.password(principal),
            "ssl.ca.location": str(self.ca_file),
        }

    def settings(self, principal: str, bootstrap: str, topic_prefix: str = "") -> AntingSettings:
        """Anting settings of ``principal`` on ``bootstrap`` (for in-process clients)."""
        from shared.settings import AntingSettings, KafkaSettings

        kafka = KafkaSettings(
            bootstrap_servers=bootstrap, security_protocol="SASL_SSL", sasl_mechanism=MECHANISM,
            sasl_username=principal, sasl_password=self.password(principal),
            ssl_cafile=str(self.ca_file))
        return AntingSettings(kafka=kafka, topic_prefix=topic_prefix)

    def aiokafka_options(self, principal: str, bootstrap: str) -> dict[str, object]:
        """aiokafka client keyword arguments of ``principal`` (the readiness checks)."""
        import ssl

        return {
            "bootstrap_servers": bootstrap,
            "security_protocol": "SASL_SSL",
            "sasl_mechanism": MECHANISM,
            "sasl_plain_username": principal,
            "sasl_plain_password": self.password(principal),
            "ssl_context": ssl.create_default_context(cafile=str(self.ca_file)),
        }

    def kcat_config(self, principal: str) -> Path:
        """``kcat-<principal>.conf`` (written by ``write_client_configs``)."""
        return self.dir / f"kcat-{principal}.conf"

    def java_config(self, principal: str) -> Path:
        """``<principal>.properties`` for Java clients (written by ``write_client_configs``)."""
        return self.dir / f"{principal}.properties"

    def env_file(self, principal: str) -> Path:
        """``<principal>.env``: ``KAFKA_*=...`` lines (written by ``write_client_configs``)."""
        return self.dir / f"{principal}.env"

    def write_client_configs(self, bootstrap: str) -> None:
        """Write the kcat, Java and env files of every client principal for ``bootstrap``."""
        for principal in CLIENT_PRINCIPALS:
            conf = {**self.librdkafka_config(principal, bootstrap), "sasl.mechanisms": KCAT_MECHANISM}
            _write_private(self.kcat_config(principal),
                           f"# kcat -F {self.kcat_config(principal)} -L\n"
                           f"# {KCAT_MECHANISM} inside TLS: any librdkafka signs in with it; with librdkafka\n"
                           f"# 2.6.1 or later sasl.mechanisms={MECHANISM} works too\n"
                           + "".join(f"{k}={v}\n" for k, v in conf.items()))
            pw = self.password(principal)
            java = [
                f"bootstrap.servers={bootstrap}",
                "security.protocol=SASL_SSL",
                f"sasl.mechanism={MECHANISM}",
                "sasl.jaas.config=org.apache.kafka.common.security.scram.ScramLoginModule required "
                f'username="{principal}" password="{pw}";',
                "ssl.truststore.type=PEM",
                f"ssl.truststore.location={self.ca_file}",
            ]
            _write_private(self.java_config(principal), "\n".join(java) + "\n")
            _write_private(self.env_file(principal), "".join(
                f"{k}={v}\n" for k, v in self.env(principal, bootstrap).items()))


def credentials_digest(material: SecureMaterial) -> str:
    """A SHA-256 over the SCRAM users and their passwords: kept beside a formatted data
    dir, so that a start with other credentials (``credentials.json`` removed, the data
    kept) is refused with a message instead of every client failing to sign in."""
    import hashlib

    return hashlib.sha256(json.dumps(material.passwords(), sort_keys=True).encode()).hexdigest()


async def provision(material: SecureMaterial, bootstrap: str, topic_prefix: str = "") -> list[str]:
    """Make a freshly started secured broker or cluster usable: the client configs written
    for ``bootstrap``, the ACL table applied for ``topic_prefix`` and every contract topic
    created, both as ``anting-admin``. Returns the topics created. Raises
    ``confluent_kafka.KafkaException`` when an ACL is refused, and what
    ``shared.kafka.ensure_topics`` raises."""
    import asyncio

    from services.acls import ADMIN, acl_table, apply_acls
    from shared.kafka import ensure_topics

    material.write_client_configs(bootstrap)
    await asyncio.to_thread(apply_acls, material.librdkafka_config(ADMIN, bootstrap), acl_table(topic_prefix))
    return await ensure_topics(material.settings(ADMIN, bootstrap, topic_prefix))
