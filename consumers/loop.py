"""The consumer loop: one process per sink, each its own consumer group.

Order of work (the checkpoint order): poll -> decode -> ``sink.write`` -> on the
flush schedule ``sink.flush`` -> dead-letter producer flushed -> commit exactly
the offsets the sink reported durable. So after a crash the loop resumes at the
last commit and the sink, idempotent on Kafka coordinates or record ids, shows
every record once.

- Flushes on size (``flush_records``) and on time (``flush_interval_s``, also when
  the stream is idle), so dashboards stay near-live and memory stays bounded.
- Undecodable messages and records the sink refuses go to the dead-letter topic
  with their original bytes, key and headers, plus headers naming the source
  topic, partition, offset, the sink and the error. Nothing is dropped silently.
- Revoked partitions are flushed and committed; lost partitions are dropped from
  the sink without committing.
- ``until_end``: capture the high watermarks at start, consume up to them, flush,
  commit, return. SIGINT/SIGTERM (via :meth:`stop`): flush, commit, close.
- ``verify_keys``: every record must carry a signature that verifies under the
  public key of the site it claims (:mod:`flarestream.signing`); any other record
  goes to the dead-letter topic, never to the sink. The keys are loaded when the
  loop is made (ConfigError for missing or bad keys, before anything is read).
"""

from __future__ import annotations

import logging
import os
import time
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import (
    OFFSET_BEGINNING,
    Consumer,
    KafkaError,
    KafkaException,
    Message,
    TopicPartition,
)

from flarestream.connection import check_connection
from flarestream.consumers.deadletter import DeadLetters
from flarestream.consumers.sink import Delivered, Rejection, Sink
from flarestream.errors import ConfigError, DecodeError, FlarestreamError
from flarestream.schemas.codec import Codec, default_codec
from flarestream.settings import DEFAULT_TOPIC, default_bootstrap_servers, kafka_client_config
from flarestream.signing import PublicKeys, Verdict, load_public_keys

log = logging.getLogger("flarestream.consumers")

Position = tuple[str, int]
# consumer errors no retry can fix: stop with a clear message instead of polling forever
_FATAL_CODES = frozenset(
    {
        KafkaError.TOPIC_AUTHORIZATION_FAILED,
        KafkaError.GROUP_AUTHORIZATION_FAILED,
        KafkaError.SASL_AUTHENTICATION_FAILED,
        KafkaError._AUTHENTICATION,
    }
)


@dataclass
class LoopConfig:
    """Settings of one consumer loop. ``group`` defaults to ``flarestream.<sink>``,
    ``dlq_topic`` to ``<topic>.dlq``; ``consumer_config`` passes librdkafka
    settings through (security...); ``verify_keys`` (a keys directory or JSON file,
    or :class:`~flarestream.signing.PublicKeys`) turns signature checks on."""

    bootstrap_servers: str = field(default_factory=default_bootstrap_servers)
    topic: str = DEFAULT_TOPIC
    group: str | None = None
    dlq_topic: str | None = None
    flush_interval_s: float = 5.0
    flush_records: int = 10_000
    poll_batch: int = 1_000
    until_end: bool = False
    from_beginning: bool = False
    auto_offset_reset: str = "earliest"
    consumer_config: Mapping[str, Any] = field(default_factory=dict)
    verify_keys: PublicKeys | str | os.PathLike[str] | None = None

    def __post_init__(self) -> None:
        if self.flush_interval_s <= 0:
            raise ConfigError(f"flush interval must be > 0 s, got {self.flush_interval_s}")
        if self.flush_records < 1 or self.poll_batch < 1:
            raise ConfigError("flush_records and poll_batch must be >= 1")
        if self.auto_offset_reset not in ("earliest", "latest"):
            raise ConfigError(
                f"auto_offset_reset must be earliest or latest, got {self.auto_offset_reset!r}"
            )
        self.verify_keys = load_public_keys(self.verify_keys)  # bad keys fail here, at start


@dataclass
class LoopStats:
    consumed: int = 0
    written: int = 0
    dead_lettered: int = 0
    flushes: int = 0
    commits: int = 0


class ConsumerLoop:
    """Drives one sink from one topic. Not thread-safe, except :meth:`stop`."""

    def __init__(self, sink: Sink, config: LoopConfig, codec: Codec | None = None) -> None:
        self.sink = sink
        self.config = config
        self.group = config.group or f"flarestream.{sink.name}"
        self.dlq_topic = config.dlq_topic or f"{config.topic}.dlq"
        self.codec = codec or default_codec()
        self.keys = load_public_keys(config.verify_keys)
        self.stats = LoopStats()
        self._stopping = False
        self._failed = False
        self._assigned: set[Position] = set()
        self._written: dict[Position, int] = {}  # next offset after every message handled
        self._given: dict[Position, int] = {}  # next offset after the last record the sink took
        self._committed: dict[Position, int] = {}
        self._ends: dict[Position, int] = {}  # until_end: high watermarks at start
        self._done: set[Position] = set()
        self._pending = 0  # records given to the sink since the last flush
        self._first_assignment = True
        self._consumer: Consumer | None = None
        self._dead: DeadLetters | None = None

    def stop(self) -> None:
        """Ask the loop to flush, commit and return (safe from a signal handler)."""
        self._stopping = True

    # -- running ---------------------------------------------------------------
    def run(self) -> LoopStats:
        """Consume until :meth:`stop` or, with ``until_end``, the captured end."""
        cfg = self.config
        client = kafka_client_config(cfg.consumer_config)
        settings = {
            **client,
            "bootstrap.servers": cfg.bootstrap_servers,
            "group.id": self.group,
            "enable.auto.commit": False,
            "enable.auto.offset.store": False,
            "auto.offset.reset": cfg.auto_offset_reset,
            "enable.partition.eof": True,
            "logger": log,
        }
        check_connection(cfg.bootstrap_servers, client, who=f"sink {self.sink.name!r}")
        try:
            self._consumer = Consumer(settings)
        except (KafkaException, TypeError, ValueError) as exc:
            raise ConfigError(f"invalid consumer setting: {exc}") from None
        self._dead = DeadLetters(cfg.bootstrap_servers, self.dlq_topic, self.sink.name, client)
        try:
            self.sink.open()
            if cfg.until_end:
                self._capture_ends()
            self._consumer.subscribe(
                [cfg.topic], on_assign=self._on_assign, on_revoke=self._on_revoke,
                on_lost=self._on_lost,
            )  # fmt: skip
            self._consume()
            self._flush_and_commit(final=True)
        except BaseException:
            # closing the consumer revokes its partitions: nothing may be flushed or
            # committed on the way out of a failure
            self._failed = True
            raise
        finally:
            self._consumer.close()
            self.sink.close()  # also when open() failed: a sink may hold a lock
        return self.stats

    def _capture_ends(self) -> None:
        assert self._consumer is not None
        meta = self._consumer.list_topics(self.config.topic, timeout=30)
        topic = meta.topics.get(self.config.topic)
        if topic is None or topic.error is not None:
            raise FlarestreamError(f"topic {self.config.topic!r} does not exist")
        for p in topic.partitions:
            _, high = self._consumer.get_watermark_offsets(
                TopicPartition(self.config.topic, p), timeout=30
            )
            self._ends[(self.config.topic, p)] = high

    def _consume(self) -> None:
        assert self._consumer is not None
        cfg = self.config
        last_flush = time.monotonic()
        while not self._stopping:
            wait = max(0.0, min(0.5, last_flush + cfg.flush_interval_s - time.monotonic()))
            messages = self._consumer.consume(cfg.poll_batch, timeout=wait)
            if messages:
                self._handle(messages)
            now = time.monotonic()
            if self._pending >= cfg.flush_records or now - last_flush >= cfg.flush_interval_s:
                self._flush_and_commit()
                last_flush = time.monotonic()
            if cfg.until_end and self._assigned and self._assigned <= self._done:
                return

    def _handle(self, messages: Sequence[Message]) -> None:
        batch: list[Delivered] = []
        keys = self.keys
        for msg in messages:
            err = msg.error()
            topic, part, offset = msg.topic(), msg.partition(), msg.offset()
            if err is not None and err.code() in _FATAL_CODES:
                raise FlarestreamError(
                    f"sink {self.sink.name!r} may not read {self.config.topic!r} as group "
                    f"{self.group!r}: {err.str()}; check the ACLs of its user"
                )
            if topic is None or part is None or offset is None:
                if err is not None:
                    log.warning("consumer: %s", err.str())
                continue
            pos = (topic, part)
            if err is not None:
                if err.code() == KafkaError._PARTITION_EOF:
                    if offset >= self._ends.get(pos, 0):
                        self._done.add(pos)
                    continue
                if err.fatal():
                    raise FlarestreamError(f"consumer failed: {err.str()}")
                log.warning("consumer: %s", err.str())
                continue
            if self._ends and offset >= self._ends.get(pos, 0):
                self._done.add(pos)  # beyond the captured end: left for the next run
                continue
            self.stats.consumed += 1
            self._written[pos] = offset + 1
            if offset + 1 >= self._ends.get(pos, offset + 2):
                self._done.add(pos)
            value = msg.value() or b""
            try:
                record = self.codec.decode(value)
            except DecodeError as exc:
                self._dead_letter(msg, f"undecodable: {exc}")
                continue
            headers = msg.headers()
            if keys is not None:
                verdict = keys.check(record.site, value, headers)
                if verdict is not Verdict.VERIFIED:
                    why = keys.explain(verdict, record.site, value, headers)
                    self._dead_letter(msg, why)
                    continue
            ts = msg.timestamp()[1]
            key = msg.key()
            self._given[pos] = offset + 1
            batch.append(
                Delivered(
                    topic, part, offset, ts, value, record,
                    key if isinstance(key, bytes) else None,
                    tuple(headers) if headers else (),  # type: ignore[arg-type]
                )
            )  # fmt: skip
        if batch:
            for rejection in self.sink.write(batch):
                self._reject(rejection)
            self.stats.written += len(batch)
            self._pending += len(batch)

    # -- dead letters ----------------------------------------------------------
    def _dead_letter(self, msg: Message, reason: str) -> None:
        assert self._dead is not None
        self._dead.send(
            msg.topic() or "", msg.partition() or 0, msg.offset() or 0,
            msg.value() or b"", msg.key(), msg.headers(), reason,
        )  # fmt: skip
        self.stats.dead_lettered += 1

    def _reject(self, rejection: Rejection) -> None:
        assert self._dead is not None
        d = rejection.delivered
        self._dead.send(d.topic, d.partition, d.offset, d.raw, d.key, d.headers, rejection.reason)
        self.stats.dead_lettered += 1
        self.stats.written -= 1

    # -- flush and commit ------------------------------------------------------
    def _flush_and_commit(self, final: bool = False) -> None:
        """Flush the sink (``final``: finish it first), then the dead letters, then
        commit what the sink reports durable."""
        assert self._consumer is not None and self._dead is not None
        if final:
            self.sink.finish()
        durable = self.sink.flush()
        self._dead.flush()  # a dead letter must be safe before its offset is committed
        self.stats.flushes += 1
        self._pending = 0
        positions = dict(self._written)
        if durable is not None:
            for pos in positions:
                # a sink durable up to the last record it took also covers the dead
                # letters after that record; otherwise only what it reports
                given = self._given.get(pos)
                if given is not None and durable.get(pos, -1) < given:
                    positions[pos] = durable.get(pos, self._committed.get(pos, -1))
        offsets = [
            TopicPartition(t, p, o)
            for (t, p), o in positions.items()
            if (t, p) in self._assigned and o > self._committed.get((t, p), -1)
        ]
        if not offsets:
            return
        self._consumer.commit(offsets=offsets, asynchronous=False)
        for tp in offsets:
            self._committed[(tp.topic, tp.partition)] = tp.offset
        self.stats.commits += 1

    # -- rebalancing -----------------------------------------------------------
    def _on_assign(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if self.config.from_beginning and self._first_assignment:
            for tp in partitions:
                tp.offset = OFFSET_BEGINNING
            consumer.assign(partitions)
        self._first_assignment = False
        for tp in partitions:
            pos = (tp.topic, tp.partition)
            self._assigned.add(pos)
            if self._ends.get(pos, 1) == 0:
                self._done.add(pos)  # empty partition: nothing to drain

    def _on_revoke(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        if not self._failed:  # after a failure: leave everything as a crash would
            self._flush_and_commit(final=True)
            # the new owner resumes from the commit: the sink must not keep anything
            # (e.g. an open file) for these partitions
            self.sink.drop([(tp.topic, tp.partition) for tp in partitions])
        self._forget(partitions)

    def _on_lost(self, consumer: Consumer, partitions: list[TopicPartition]) -> None:
        positions = [(tp.topic, tp.partition) for tp in partitions]
        self.sink.drop(positions)
        self._forget(partitions)

    def _forget(self, partitions: list[TopicPartition]) -> None:
        for tp in partitions:
            pos = (tp.topic, tp.partition)
            self._assigned.discard(pos)
            self._written.pop(pos, None)
            self._given.pop(pos, None)
            self._committed.pop(pos, None)
