"""Which part of a topic to read: the range asked for (:class:`RangeSpec`), and that
range resolved against the broker (:func:`resolve_range`, giving a
:class:`TopicRange` of :class:`PartitionRange`).

Offsets are ``[from, to)``. Times are ``[from, to)`` in Kafka message time (ms):
resolved to offsets with ``offsets_for_times`` (the first offset whose timestamp is
at or after the bound); a source checks each record's time as well, so only records
inside the window are read. The watermarks captured when the range is resolved end
it: records produced later are not in it.
"""

from __future__ import annotations

import datetime as dt
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

from confluent_kafka import Consumer, KafkaException, TopicPartition

from flarestream.errors import BrokerError, ConfigError

_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class RangeSpec:
    """What part of a topic (or of an archive's original coordinates) to read."""

    partitions: frozenset[int] | None = None
    from_offset: int | None = None
    to_offset: int | None = None  # exclusive
    from_time_ms: int | None = None
    to_time_ms: int | None = None  # exclusive

    def __post_init__(self) -> None:
        for name in ("from_offset", "to_offset"):
            value = getattr(self, name)
            if value is not None and value < 0:
                raise ConfigError(f"{name.replace('_', '-')} must be >= 0, got {value}")
        lo, hi = self.from_offset, self.to_offset
        if lo is not None and hi is not None and hi < lo:
            raise ConfigError(f"to-offset {hi} is before from-offset {lo}")
        start, end = self.from_time_ms, self.to_time_ms
        if start is not None and end is not None and end <= start:
            raise ConfigError(f"to-time {format_ms(end)} is not after from-time {format_ms(start)}")

    @property
    def bounded(self) -> bool:
        """True when any bound narrows the range."""
        return any(
            v is not None
            for v in (self.from_offset, self.to_offset, self.from_time_ms, self.to_time_ms)
        )

    def time_ok(self, ts: int) -> bool:
        return (self.from_time_ms is None or ts >= self.from_time_ms) and (
            self.to_time_ms is None or ts < self.to_time_ms
        )

    def offset_ok(self, offset: int) -> bool:
        return (self.from_offset is None or offset >= self.from_offset) and (
            self.to_offset is None or offset < self.to_offset
        )


def parse_time(text: str) -> int:
    """Milliseconds since the epoch from an integer (ms) or ISO 8601 text (UTC when it
    names no zone). ConfigError otherwise."""
    text = text.strip()
    if text.lstrip("-").isdigit():
        return int(text)
    iso = text[:-1] + "+00:00" if text.endswith(("Z", "z")) else text
    try:
        moment = dt.datetime.fromisoformat(iso)
    except ValueError:
        raise ConfigError(
            f"cannot read time {text!r}: give ISO 8601 (2024-05-01T12:00:00Z; UTC when no "
            "zone is given) or milliseconds since the epoch"
        ) from None
    if moment.tzinfo is None:
        moment = moment.replace(tzinfo=dt.timezone.utc)
    return (moment - _EPOCH) // dt.timedelta(milliseconds=1)  # exact: no float rounding


def format_ms(ms: int | None) -> str:
    """A millisecond timestamp as ISO 8601 UTC (for messages)."""
    if ms is None:
        return "-"
    try:
        moment = _EPOCH + dt.timedelta(milliseconds=ms)
    except OverflowError:
        return f"{ms} ms"
    return moment.isoformat(timespec="milliseconds").replace("+00:00", "Z")


@dataclass(frozen=True)
class PartitionRange:
    partition: int
    start: int
    end: int  # exclusive
    low: int  # the watermarks when the range was resolved
    high: int

    @property
    def size(self) -> int:
        return max(0, self.end - self.start)


@dataclass(frozen=True)
class TopicRange:
    """A resolved range: per partition, the offsets to read."""

    topic: str
    partitions: tuple[PartitionRange, ...]
    spec: RangeSpec = field(default_factory=RangeSpec)

    @property
    def total(self) -> int:
        return sum(p.size for p in self.partitions)

    @property
    def from_start(self) -> bool:
        """Every partition is read from offset 0 (nothing deleted, no lower bound)."""
        return all(p.start == 0 for p in self.partitions) and self.spec.from_time_ms is None

    @property
    def whole_topic(self) -> bool:
        """Everything the topic ever held up to the captured end is in the range."""
        return self.from_start and not self.spec.bounded and self.spec.partitions is None

    def get(self, partition: int) -> PartitionRange | None:
        return next((p for p in self.partitions if p.partition == partition), None)


def _kafka_call(what: str, bootstrap: str, call: Callable[[], Any]) -> Any:
    try:
        return call()
    except KafkaException as exc:
        raise BrokerError(
            f"{what} failed at {bootstrap}: {exc.args[0].str() if exc.args else exc}; check "
            "--bootstrap-servers and that the broker is running"
        ) from None


def resolve_range(
    consumer: Consumer, bootstrap: str, topic: str, spec: RangeSpec, timeout: float = 30
) -> TopicRange:
    """Capture the watermarks and resolve ``spec`` to offsets. ConfigError for an
    unknown topic or partition; BrokerError when the broker does not answer."""
    meta = _kafka_call("listing topics", bootstrap, lambda: consumer.list_topics(topic, timeout))
    found = meta.topics.get(topic)
    if found is None or found.error is not None or not found.partitions:
        raise ConfigError(
            f"topic {topic!r} does not exist at {bootstrap}; check --topic "
            "(`flarestream topic list` shows the topics)"
        )
    parts = sorted(found.partitions)
    if spec.partitions is not None:
        unknown = sorted(spec.partitions - set(parts))
        if unknown:
            raise ConfigError(f"topic {topic!r} has partitions {parts}, not {unknown}")
        parts = [p for p in parts if p in spec.partitions]

    def marks(p: int) -> tuple[int, int]:
        tp = TopicPartition(topic, p)
        low, high = _kafka_call(
            "reading watermarks", bootstrap, lambda: consumer.get_watermark_offsets(tp, timeout)
        )
        return int(low), int(high)

    wm = {p: marks(p) for p in parts}

    def by_time(ms: int | None) -> dict[int, int]:
        if ms is None:
            return {}
        asked = [TopicPartition(topic, p, ms) for p in parts]
        answer = _kafka_call(
            "looking up offsets by time",
            bootstrap,
            lambda: consumer.offsets_for_times(asked, timeout),
        )
        # -1: no message at or after that time: the partition's end
        return {
            tp.partition: (tp.offset if tp.offset >= 0 else wm[tp.partition][1]) for tp in answer
        }

    time_starts, time_ends = by_time(spec.from_time_ms), by_time(spec.to_time_ms)
    ranges = []
    for p in parts:
        low, high = wm[p]
        start = max(low, spec.from_offset or 0, time_starts.get(p, 0))
        end = min(high, high if spec.to_offset is None else spec.to_offset, time_ends.get(p, high))
        ranges.append(PartitionRange(p, start, max(start, end), low, high))
    return TopicRange(topic, tuple(ranges), spec)


def time_span(
    consumer: Consumer, topic_range: TopicRange, timeout: float = 5
) -> tuple[int, int] | None:
    """(earliest, latest) Kafka timestamp of the first and last message of each
    partition, or None for an empty topic: what a "no data in that window" message
    shows the user."""
    stamps: list[int] = []
    for p in topic_range.partitions:
        for offset in {p.low, p.high - 1} if p.high > p.low else ():
            consumer.assign([TopicPartition(topic_range.topic, p.partition, offset)])
            for msg in consumer.consume(1, timeout=timeout):
                if msg.error() is None:
                    stamps.append(msg.timestamp()[1])
    consumer.unassign()
    return (min(stamps), max(stamps)) if stamps else None
