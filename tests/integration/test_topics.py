"""Topic tools against a real Kafka: idempotent creation, refusal of mismatches, the CLI."""

from __future__ import annotations

import uuid
from collections.abc import Callable
from typing import Any

import pytest

from flarestream.deploy import create_topic, describe_topic, list_topics
from flarestream.errors import ConfigError, TopicError


def _name(stem: str) -> str:
    return f"test.{stem}.{uuid.uuid4().hex[:10]}"


@pytest.mark.integration
def test_create_topic_is_idempotent(kafka_bootstrap: str) -> None:
    name = _name("idempotent")
    assert create_topic(kafka_bootstrap, name, 4, 1, retention_ms=3_600_000) is True
    assert create_topic(kafka_bootstrap, name, 4, 1, retention_ms=3_600_000) is False
    assert create_topic(kafka_bootstrap, name, 4, 1) is False  # retention not asked: not compared
    info = describe_topic(kafka_bootstrap, name)
    assert (info.name, info.partitions, info.replication_factor) == (name, 4, 1)
    assert info.config["retention.ms"] == "3600000"
    assert info.overrides == {"retention.ms": "3600000"}
    assert name in list_topics(kafka_bootstrap)


@pytest.mark.integration
def test_create_topic_refuses_different_settings(kafka_bootstrap: str) -> None:
    name = _name("mismatch")
    create_topic(
        kafka_bootstrap, name, 2, 1, retention_ms=60_000, config={"cleanup.policy": "delete"}
    )
    with pytest.raises(TopicError) as caught:
        create_topic(kafka_bootstrap, name, 3, 1, retention_ms=1_000)
    message = str(caught.value)
    assert "partitions 2 (wanted 3)" in message
    assert "retention.ms=60000 (wanted 1000)" in message
    with pytest.raises(TopicError, match=r"replication factor 1 \(wanted 2\)"):
        create_topic(kafka_bootstrap, name, 2, 2)
    with pytest.raises(TopicError, match=r"cleanup.policy=delete \(wanted compact\)"):
        create_topic(kafka_bootstrap, name, 2, 1, config={"cleanup.policy": "compact"})
    assert describe_topic(kafka_bootstrap, name).partitions == 2  # nothing was altered


@pytest.mark.integration
def test_create_topic_reports_what_the_broker_refuses(kafka_bootstrap: str) -> None:
    with pytest.raises(TopicError, match=r"(?i)replication"):
        create_topic(kafka_bootstrap, _name("rf"), 1, 99)
    with pytest.raises(TopicError, match="does not exist"):
        describe_topic(kafka_bootstrap, _name("missing"))


@pytest.mark.integration
def test_topic_fixture_gives_a_fresh_topic(kafka_bootstrap: str, topic: str) -> None:
    info = describe_topic(kafka_bootstrap, topic)
    assert (info.partitions, info.replication_factor) == (3, 1)


@pytest.mark.integration
def test_topic_cli(kafka_bootstrap: str, run_cli: Callable[..., Any]) -> None:
    name = _name("cli")
    common = ("--bootstrap-servers", kafka_bootstrap)
    create = ("topic", "create", name, "--partitions", "2", "--replication-factor", "1")
    first = run_cli(*create, "--retention-ms", "120000", *common)
    assert (first.rc, first.out.strip()) == (0, "created")
    second = run_cli(*create, "--retention-ms", "120000", *common)
    assert (second.rc, second.out.strip()) == (0, "exists")
    clash = run_cli(
        "topic", "create", name, "--partitions", "5", "--replication-factor", "1", *common
    )
    assert clash.rc == 1 and "partitions 2 (wanted 5)" in clash.err

    described = run_cli("topic", "describe", name, *common)
    assert described.rc == 0
    assert "partitions: 2" in described.out and "retention.ms: 120000" in described.out
    listed = run_cli("topic", "list", *common)
    assert listed.rc == 0 and name in listed.out.split()
    bad = run_cli(
        "topic",
        "create",
        name,
        "--partitions",
        "2",
        "--replication-factor",
        "1",
        "--config",
        "oops",
        *common,
    )
    assert bad.rc == 2 and "KEY=VALUE" in bad.err


@pytest.mark.parametrize(
    ("kwargs", "fragment"),
    [
        ({"name": ""}, "illegal topic name"),
        ({"name": "has space"}, "illegal topic name"),
        ({"name": ".."}, "illegal topic name"),
        ({"name": "x" * 250}, "illegal topic name"),
        ({"partitions": 0}, "partitions must be"),
        ({"partitions": True}, "partitions must be"),
        ({"replication_factor": 1.0}, "replication_factor must be"),
        ({"retention_ms": -2}, "retention_ms must be"),
        ({"retention_ms": 5, "config": {"retention.ms": "6"}}, "contradicts"),
        ({"config": {"cleanup.policy": 1}}, "must map names to strings"),
        ({"timeout": 0}, "timeout must be"),
        ({"bootstrap_servers": ""}, "bootstrap_servers"),
    ],
)
def test_create_topic_validates_before_any_network_call(
    kwargs: dict[str, Any], fragment: str
) -> None:
    args: dict[str, Any] = {"bootstrap_servers": "127.0.0.1:1", "name": "ok", "partitions": 1}
    args |= {"replication_factor": 1} | kwargs
    with pytest.raises(ConfigError, match=fragment):
        create_topic(**args)
