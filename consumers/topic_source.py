"""Reads a range of a topic, for replay and audit, without touching any live group.

Guarantees:

- :class:`TopicSource` reads with a throwaway consumer group
  (``flarestream.replay.<uuid>``), assigns partitions explicitly, never subscribes
  and never commits: no live group's offsets move.
- The range is fixed when the source opens: the high watermarks then (or the
  resolved ``to`` bounds) end it; records produced later are not read.
- Per partition, records come in offset order; a record outside a time bound is
  left out (see :mod:`flarestream.consumers.topic_range`).
"""

from __future__ import annotations

import logging
import time
import uuid
from collections.abc import Iterator, Mapping
from typing import Any

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from flarestream.connection import check_connection
from flarestream.consumers.replay_source import Batch, Item, RecordFilter, Source, decode_item
from flarestream.consumers.topic_range import (
    PartitionRange,
    RangeSpec,
    resolve_range,
    time_span,
)
from flarestream.errors import BrokerError, ConfigError
from flarestream.schemas.codec import Codec, default_codec
from flarestream.settings import kafka_client_config

# the logger replay has always used: log filters and handlers set up for it keep working
log = logging.getLogger("flarestream.consumers.replay")

REPLAY_GROUP_PREFIX = "flarestream.replay."


def open_consumer(
    bootstrap_servers: str, client_config: Mapping[str, Any] | None = None
) -> Consumer:
    """A consumer in a new throwaway group that never commits."""
    client = kafka_client_config(client_config)
    check_connection(bootstrap_servers, client, who="replay/audit")
    settings = {
        **client,
        "bootstrap.servers": bootstrap_servers,
        "group.id": f"{REPLAY_GROUP_PREFIX}{uuid.uuid4().hex}",
        "enable.auto.commit": False,
        "enable.auto.offset.store": False,
        "enable.partition.eof": True,
        "auto.offset.reset": "earliest",
        "logger": log,
    }
    try:
        return Consumer(settings)
    except (KafkaException, TypeError, ValueError) as exc:
        raise ConfigError(f"invalid consumer setting: {exc}") from None


class TopicSource(Source):
    """Reads a range of a topic (see the module doc). The range is resolved, and the
    watermarks that end it captured, when the source is made (ConfigError for an
    unknown topic or partition). Use as a context manager, or call :meth:`close`."""

    def __init__(
        self,
        bootstrap_servers: str,
        topic: str,
        spec: RangeSpec | None = None,
        record_filter: RecordFilter | None = None,
        *,
        client_config: Mapping[str, Any] | None = None,
        codec: Codec | None = None,
        batch_size: int = 2000,
        idle_timeout_s: float = 60.0,
    ) -> None:
        self.bootstrap_servers = bootstrap_servers
        self.topic = topic
        self.spec = spec or RangeSpec()
        self.filter = record_filter or RecordFilter()
        self.codec = codec or default_codec()
        self.batch_size = batch_size
        self.idle_timeout_s = idle_timeout_s
        self.consumer = open_consumer(bootstrap_servers, client_config)
        try:
            self.range = resolve_range(self.consumer, bootstrap_servers, topic, self.spec)
        except BaseException:
            self.consumer.close()
            raise

    @property
    def total(self) -> int:
        return self.range.total

    def time_span(self) -> tuple[int, int] | None:
        return time_span(self.consumer, self.range)

    def batches(self) -> Iterator[Batch]:
        """Every message of the range once, in offset order per partition."""
        todo = {p.partition: p for p in self.range.partitions if p.size}
        if not todo:
            return
        self.consumer.assign([TopicPartition(self.topic, p, r.start) for p, r in todo.items()])
        last_seen = time.monotonic()
        while todo:
            messages = self.consumer.consume(self.batch_size, timeout=0.5)
            items: list[Item] = []
            read = 0
            for msg in messages:
                p, offset, err = msg.partition(), msg.offset(), msg.error()
                if p is None or offset is None:
                    continue
                r = todo.get(p)
                if r is None:
                    continue
                if err is not None:
                    if err.code() == KafkaError._PARTITION_EOF:
                        if offset >= r.end:
                            self._done(todo, p)  # e.g. the range ends in control records
                        continue
                    if err.fatal():
                        raise BrokerError(f"consumer failed: {err.str()}")
                    log.warning("replay consumer: %s", err.str())
                    continue
                if offset >= r.end:
                    self._done(todo, p)
                    continue
                read += 1
                if offset + 1 >= r.end:
                    self._done(todo, p)
                item = self._item(msg, p, offset)
                if item is not None:
                    items.append(item)
            if read:
                last_seen = time.monotonic()
                yield Batch(items, read)
            elif todo and time.monotonic() - last_seen > self.idle_timeout_s:
                left = ", ".join(f"{p} at {r.start}..{r.end}" for p, r in sorted(todo.items()))
                raise BrokerError(
                    f"no message from {self.topic!r} partitions {left} for "
                    f"{self.idle_timeout_s:g} s; is the broker at {self.bootstrap_servers} up?"
                )

    def _done(self, todo: dict[int, PartitionRange], partition: int) -> None:
        if todo.pop(partition, None) is not None:
            self.consumer.pause([TopicPartition(self.topic, partition)])

    def _item(self, msg: Any, partition: int, offset: int) -> Item | None:
        ts = msg.timestamp()[1]
        if not self.spec.time_ok(ts):
            return None
        return decode_item(
            self.topic,
            partition,
            offset,
            ts,
            msg.value() or b"",
            msg.key(),
            tuple(msg.headers() or ()),
            codec=self.codec,
            record_filter=self.filter,
        )

    def close(self) -> None:
        self.consumer.close()
