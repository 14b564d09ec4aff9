"""The refusal lines, readiness reasons and backoff of shared/kafka_access.py, without a
broker (the secured broker's own tests are tests/security/test_refusals.py)."""

from __future__ import annotations

import logging
from typing import cast

import aiokafka.errors as Errors
import pytest
from aiokafka import AIOKafkaConsumer

from shared.kafka import TransientKafkaLogs
from shared.kafka_access import (
    AccessRefused,
    AccessStatus,
    Backoff,
    Doing,
    check_subscription,
    denial,
    is_access_error,
    principal,
)
from shared.settings import KafkaSettings

KAFKA = KafkaSettings(security_protocol="SASL_SSL", sasl_mechanism="SCRAM-SHA-512",
                      sasl_username="anting-enrich", sasl_password="secret")
ENRICH = Doing(reads=("announcements", "agreements"), writes=("enriched-events", "dead-letters"),
               group="anting-enrich", transactional_id="anting-enrich-0")


@pytest.mark.parametrize(("error", "line"), [
    (Errors.TopicAuthorizationFailedError({"enriched-events"}),
     "kafka: User:anting-enrich may not Write Topic:enriched-events (TOPIC_AUTHORIZATION_FAILED)"),
    (Errors.TopicAuthorizationFailedError("announcements"),
     "kafka: User:anting-enrich may not Read Topic:announcements (TOPIC_AUTHORIZATION_FAILED)"),
    (Errors.GroupAuthorizationFailedError("anting-enrich"),
     "kafka: User:anting-enrich may not Read Group:anting-enrich (GROUP_AUTHORIZATION_FAILED)"),
    (Errors.TransactionalIdAuthorizationFailed("anting-enrich-0"),
     "kafka: User:anting-enrich may not Write TransactionalId:anting-enrich-0 "
     "(TRANSACTIONAL_ID_AUTHORIZATION_FAILED)"),
    (Errors.ClusterAuthorizationFailedError(),
     "kafka: User:anting-enrich may not IdempotentWrite Cluster:kafka-cluster (CLUSTER_AUTHORIZATION_FAILED)"),
])
def test_a_denial_names_principal_operation_and_resource(error: Errors.KafkaError, line: str) -> None:
    assert denial(error, KAFKA, ENRICH) == line
    assert is_access_error(error)


def test_a_denial_without_a_topic_name_names_what_the_client_does() -> None:
    # aiokafka sometimes raises with a sentence, not the topic: the Doing's topics, by operation
    error = Errors.TopicAuthorizationFailedError("TxnOffsetCommit announcements-0 for group 'x'")
    assert denial(error, KAFKA, Doing(reads=("announcements",))) == \
        "kafka: User:anting-enrich may not Read Topic:announcements (TOPIC_AUTHORIZATION_FAILED)"


def test_a_denial_found_under_the_error_raised_from_it() -> None:
    try:
        try:
            raise Errors.GroupAuthorizationFailedError("anting-notify")
        except Errors.KafkaError as inner:
            raise RuntimeError("the session failed") from inner
    except RuntimeError as outer:
        assert denial(outer, KAFKA, Doing()) == \
            "kafka: User:anting-enrich may not Read Group:anting-notify (GROUP_AUTHORIZATION_FAILED)"


def test_other_errors_are_no_denial() -> None:
    for error in (Errors.KafkaConnectionError("x"), Errors.NotLeaderForPartitionError(), ValueError("x")):
        assert denial(error, KAFKA, ENRICH) is None
        assert not is_access_error(error)
    assert denial(AccessRefused("kafka: said"), KAFKA, ENRICH) == "kafka: said"


def test_an_access_error_aiokafka_passes_on_as_its_repr_is_a_denial() -> None:
    # aiokafka's OffsetFetch answer refused by a topic ACL reaches poll this way
    wrapped = Errors.KafkaError(repr(Errors.TopicAuthorizationFailedError()))
    assert denial(wrapped, KAFKA, Doing(reads=("enriched-events",))) == \
        "kafka: User:anting-enrich may not Read Topic:enriched-events (TOPIC_AUTHORIZATION_FAILED)"
    assert is_access_error(wrapped)
    for other in (Errors.KafkaError(repr(Errors.NotLeaderForPartitionError())),
                  Errors.KafkaError("Unexpected error during coordination ValueError('x')"),
                  Errors.KafkaError(repr(ValueError("TopicAuthorizationFailedError()")))):
        assert denial(other, KAFKA, ENRICH) is None
        assert not is_access_error(other)


class _Cluster:
    unauthorized_topics: set[str] = {"b", "z"}


class _Client:
    cluster = _Cluster()


class _Consumer:
    _client = _Client()

    def __init__(self, *topics: str) -> None:
        self.topics = frozenset(topics)

    def subscription(self) -> frozenset[str]:
        return self.topics


def test_a_subscribed_topic_the_metadata_refuses_is_raised_named() -> None:
    check_subscription(cast(AIOKafkaConsumer, _Consumer("a", "c")))  # none refused: nothing
    with pytest.raises(Errors.TopicAuthorizationFailedError) as raised:
        check_subscription(cast(AIOKafkaConsumer, _Consumer("a", "b")))
    assert denial(raised.value, KAFKA, Doing(reads=("a", "b"))) == \
        "kafka: User:anting-enrich may not Read Topic:b (TOPIC_AUTHORIZATION_FAILED)"


def test_the_principal_without_sasl_is_anonymous() -> None:
    assert principal(KafkaSettings()) == "User:ANONYMOUS"
    assert principal(KAFKA) == "User:anting-enrich"


def test_a_refusal_is_logged_once_per_window_and_counted(caplog: pytest.LogCaptureFixture) -> None:
    status = AccessStatus(window=30.0)
    caplog.set_level(logging.WARNING, "shared.kafka_access")
    for _ in range(5):
        status.refused("kafka: User:a may not Write Topic:t (TOPIC_AUTHORIZATION_FAILED)", "session")
    errors = [r for r in caplog.records if r.levelno == logging.ERROR]
    assert len(errors) == 1 and errors[0].getMessage().startswith("kafka: User:a may not Write Topic:t")
    assert status.reason == "kafka: User:a may not Write Topic:t (TOPIC_AUTHORIZATION_FAILED)"
    status.window = 0.0  # the window has passed: the next line says how many were left out
    status.refused("kafka: User:a may not Write Topic:t (TOPIC_AUTHORIZATION_FAILED)", "session")
    assert "(4 more times since the last such line)" in caplog.records[-1].getMessage()


def test_readiness_holds_the_oldest_refusal_until_each_is_restored(caplog: pytest.LogCaptureFixture) -> None:
    status = AccessStatus()
    status.refused("kafka: first", "events.poll")
    status.refused("kafka: second", "retries.poll")
    assert status.reason == "kafka: first"
    caplog.set_level(logging.WARNING, "shared.kafka_access")
    status.restored("events.poll")
    assert status.reason == "kafka: second"
    assert caplog.records[-1].getMessage() == "kafka: access restored (was: first)"
    status.restored("retries.poll")
    status.restored("retries.poll")  # nothing refused: nothing said
    assert status.reason is None
    assert sum("access restored" in r.getMessage() for r in caplog.records) == 2


def test_backoff_doubles_to_its_cap_and_resets() -> None:
    backoff = Backoff(first=1.0, cap=5.0)
    assert [backoff.delay() for _ in range(5)] == [1.0, 2.0, 4.0, 5.0, 5.0]
    backoff.reset()
    assert backoff.delay() == 1.0


@pytest.mark.parametrize("message", [
    'Unable connect to "127.0.0.1:9093": [Error 58] SaslAuthenticationFailed: Authentication failed',
    'Unable connect to "127.0.0.1:9093": [SSL: CERTIFICATE_VERIFY_FAILED] certificate verify failed',
    "Not authorized to read from topic enriched-events.",
    "Topic enriched-events is not authorized for this client",
])
def test_aiokafkas_own_refusal_lines_are_lowered_and_rate_limited(message: str) -> None:
    quiet = TransientKafkaLogs(every=30.0)
    first = logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, message, (), None)
    again = logging.LogRecord("aiokafka", logging.ERROR, __file__, 1, message, (), None)
    assert quiet.filter(first) and first.levelno == logging.INFO
    assert not quiet.filter(again)
