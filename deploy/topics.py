"""Topic tools on top of confluent_kafka's AdminClient: idempotent creation, description
and listing. Arguments are validated before any network call (:class:`ConfigError`);
a broker that does not answer raises :class:`BrokerError`; a topic problem raises
:class:`TopicError`.
"""

from __future__ import annotations

import re
import time
from collections.abc import Mapping
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import KafkaError, KafkaException, TopicCollection
from confluent_kafka.admin import (
    AdminClient,
    ConfigResource,
    ConfigSource,
    NewTopic,
    ResourceType,
)

from flarestream import settings
from flarestream.connection import check_connection
from flarestream.errors import BrokerError, ConfigError, TopicError

_LEGAL_NAME = re.compile(r"[A-Za-z0-9._-]{1,249}")
_UNREACHABLE = {KafkaError._TRANSPORT, KafkaError._TIMED_OUT, KafkaError._ALL_BROKERS_DOWN}
_NOT_YET = {KafkaError.UNKNOWN_TOPIC_OR_PART, KafkaError.LEADER_NOT_AVAILABLE}


@dataclass(frozen=True)
class TopicInfo:
    """What a topic looks like on the broker."""

    name: str
    partitions: int
    replication_factor: int
    config: dict[str, str] = field(default_factory=dict)  # every effective setting
    overrides: dict[str, str] = field(default_factory=dict)  # set on this topic itself


def create_topic(
    bootstrap_servers: str,
    name: str,
    partitions: int,
    replication_factor: int,
    retention_ms: int | None = None,
    config: Mapping[str, str] | None = None,
    timeout: float = 30,
    client_config: Mapping[str, Any] | None = None,
) -> bool:
    """Make sure topic ``name`` exists with these settings; True if this call created it.

    Idempotent: returns False when the topic already exists with the same number of
    partitions, the same replication factor and, for every setting given here
    (``retention_ms``, ``config``), the same value; settings not given are not
    compared. Raises :class:`TopicError` naming every difference when it exists
    otherwise (nothing is altered). On return the topic is visible in the metadata
    with a leader for every partition.
    """
    _check_name(name)
    for what, value in (("partitions", partitions), ("replication_factor", replication_factor)):
        if not _is_int(value) or value < 1:
            raise ConfigError(f"{what} must be an integer >= 1, got {value!r}")
    wanted = _wanted_config(retention_ms, config)
    deadline = _deadline(timeout)
    admin = _admin(bootstrap_servers, client_config)
    new = NewTopic(name, num_partitions=partitions, replication_factor=replication_factor)
    new.config = dict(wanted)
    future = admin.create_topics([new], operation_timeout=timeout, request_timeout=timeout)[name]
    created = True
    try:
        future.result(timeout=timeout + 5)
    except KafkaException as exc:
        err = exc.args[0]
        if not (isinstance(err, KafkaError) and err.code() == KafkaError.TOPIC_ALREADY_EXISTS):
            raise _error(exc, bootstrap_servers, f"could not create topic {name!r}") from exc
        created = False
    info = _describe(admin, bootstrap_servers, name, deadline, wait_for_leaders=True)
    if not created:
        diffs = []
        if info.partitions != partitions:
            diffs.append(f"partitions {info.partitions} (wanted {partitions})")
        if info.replication_factor != replication_factor:
            diffs.append(
                f"replication factor {info.replication_factor} (wanted {replication_factor})"
            )
        for key, want in sorted(wanted.items()):
            if info.config.get(key) != want:
                diffs.append(f"{key}={info.config.get(key)} (wanted {want})")
        if diffs:
            raise TopicError(
                f"topic {name!r} already exists with different settings: {'; '.join(diffs)}. "
                "Use the existing settings, another topic name, or delete the topic first"
            )
    return created


def describe_topic(
    bootstrap_servers: str,
    name: str,
    timeout: float = 30,
    client_config: Mapping[str, Any] | None = None,
) -> TopicInfo:
    """Partitions, replication factor and settings of topic ``name``.

    Raises :class:`TopicError` if it does not exist (no topic is ever auto-created).
    """
    _check_name(name)
    admin = _admin(bootstrap_servers, client_config)
    return _describe(admin, bootstrap_servers, name, _deadline(timeout), wait_for_leaders=False)


def list_topics(
    bootstrap_servers: str,
    timeout: float = 30,
    client_config: Mapping[str, Any] | None = None,
    include_internal: bool = False,
) -> list[str]:
    """Sorted topic names (internal ``__*`` topics only if ``include_internal``)."""
    admin = _admin(bootstrap_servers, client_config)
    _deadline(timeout)
    try:
        metadata = admin.list_topics(timeout=timeout)
    except KafkaException as exc:
        raise _error(exc, bootstrap_servers, "could not list topics") from exc
    names = sorted(metadata.topics)
    return names if include_internal else [n for n in names if not n.startswith("__")]


# -- internals ---------------------------------------------------------------------
def _is_int(value: object) -> bool:
    return isinstance(value, int) and not isinstance(value, bool)


def _check_name(name: object) -> None:
    if not isinstance(name, str) or not _LEGAL_NAME.fullmatch(name) or name in {".", ".."}:
        raise ConfigError(f"illegal topic name {name!r}: use 1-249 characters of A-Z a-z 0-9 . _ -")


def _deadline(timeout: float) -> float:
    if not isinstance(timeout, (int, float)) or isinstance(timeout, bool) or timeout <= 0:
        raise ConfigError(f"timeout must be a number of seconds > 0, got {timeout!r}")
    return time.monotonic() + timeout


def _wanted_config(retention_ms: int | None, config: Mapping[str, str] | None) -> dict[str, str]:
    wanted: dict[str, str] = {}
    for key, value in (config or {}).items():
        if not isinstance(key, str) or not isinstance(value, str) or not key:
            raise ConfigError(f"topic config must map names to strings, got {key!r}: {value!r}")
        wanted[key] = value
    if retention_ms is not None:
        if not _is_int(retention_ms) or retention_ms < -1:
            raise ConfigError(f"retention_ms must be an integer >= -1, got {retention_ms!r}")
        if wanted.get("retention.ms", str(retention_ms)) != str(retention_ms):
            raise ConfigError(
                f"retention_ms={retention_ms} contradicts config retention.ms="
                f"{wanted['retention.ms']}; give it once"
            )
        wanted["retention.ms"] = str(retention_ms)
    return wanted


def _admin(bootstrap_servers: str, client_config: Mapping[str, Any] | None) -> AdminClient:
    if not isinstance(bootstrap_servers, str) or not bootstrap_servers.strip():
        raise ConfigError(f"bootstrap_servers must be 'host:port[,...]', got {bootstrap_servers!r}")
    conf: dict[str, Any] = {"log_level": 0}  # failures are reported as exceptions instead
    conf.update(settings.kafka_client_config(client_config))
    conf["bootstrap.servers"] = bootstrap_servers
    # a refused login or certificate is named as such, not as "no broker there"
    check_connection(bootstrap_servers, conf, who="the topic tool")
    try:
        return AdminClient(conf)
    except KafkaException as exc:
        raise ConfigError(f"invalid Kafka client configuration: {exc}") from exc


def _error(exc: KafkaException, bootstrap: str, what: str) -> Exception:
    err = exc.args[0] if exc.args else None
    if isinstance(err, KafkaError) and err.code() in _UNREACHABLE:
        return BrokerError(
            f"{what}: Kafka at {bootstrap} did not answer ({err.str()}); is a broker "
            "running there? (flarestream broker start)"
        )
    detail = err.str() if isinstance(err, KafkaError) else str(exc)
    return TopicError(f"{what}: {detail}")


def _describe(
    admin: AdminClient, bootstrap: str, name: str, deadline: float, wait_for_leaders: bool
) -> TopicInfo:
    """Describe ``name``, retrying while the metadata is still settling until ``deadline``."""
    while True:
        remaining = max(0.5, deadline - time.monotonic())
        try:
            desc = admin.describe_topics(TopicCollection([name]), request_timeout=remaining)
            topic = desc[name].result(timeout=remaining + 5)
            leaders_ok = all(p.leader is not None for p in topic.partitions)
            if topic.partitions and (leaders_ok or not wait_for_leaders):
                break
            failure: Exception = TopicError(f"topic {name!r} has partitions without a leader")
        except KafkaException as exc:
            err = exc.args[0] if exc.args else None
            if not (isinstance(err, KafkaError) and err.code() in _NOT_YET):
                raise _error(exc, bootstrap, f"could not describe topic {name!r}") from exc
            failure = TopicError(f"topic {name!r} does not exist on {bootstrap}")
            if not wait_for_leaders:
                raise failure from exc
        if time.monotonic() >= deadline:
            raise failure
        time.sleep(0.1)
    resource = ConfigResource(ResourceType.TOPIC, name)
    try:
        future = admin.describe_configs([resource], request_timeout=remaining)[resource]
        entries = future.result(timeout=remaining + 5)
    except KafkaException as exc:
        raise _error(exc, bootstrap, f"could not read the settings of topic {name!r}") from exc
    config = {k: e.value for k, e in entries.items() if e.value is not None}
    overrides = {
        k: e.value
        for k, e in entries.items()
        if e.value is not None
        and getattr(e.source, "value", e.source) == ConfigSource.DYNAMIC_TOPIC_CONFIG.value
    }
    return TopicInfo(
        name=name,
        partitions=len(topic.partitions),
        replication_factor=max(len(p.replicas) for p in topic.partitions),
        config=config,
        overrides=overrides,
    )
