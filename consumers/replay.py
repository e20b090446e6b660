"""Replay: re-drive a range of the topic, or an archive, into any sink.

Sources yield batches of :class:`~flarestream.consumers.sink.Delivered` (and
:class:`Undecodable` messages); :func:`replay` feeds them to any
:class:`~flarestream.consumers.sink.Sink` the way the live consumer loop does
(``open``, ``write``, ``flush``, ``close``). Guarantees:

- :class:`TopicSource` reads with a throwaway consumer group
  (``flarestream.replay.<uuid>``), assigns partitions explicitly, never subscribes
  and never commits: no live group's offsets move.
- The range is fixed when the source opens: the high watermarks then (or the
  resolved ``to`` bounds) end it; records produced later are not replayed.
- Offsets are ``[from, to)``. Times are ``[from, to)`` in Kafka message time (ms):
  resolved to offsets with ``offsets_for_times`` (the first offset whose timestamp
  is at or after the bound) and then checked per record, so only records inside
  the window are replayed.
- Per partition, records reach the sink in offset order; from an archive the
  files of a partition are merged by offset (few open at once).
- Undecodable messages never reach a sink: :func:`replay` counts them, sends them
  to a dead-letter topic when given one, or copies them byte for byte into a
  target that takes raw messages (a topic copy without record filters).
- With ``keys`` (:class:`~flarestream.signing.PublicKeys`), :func:`replay` passes
  on only records signed by the site they claim; the others are refused as the
  live loop refuses them (counted, and sent to the dead-letter topic when given).
"""

from __future__ import annotations

import datetime as dt
import heapq
import itertools
import logging
import os
import time
import uuid
from collections import deque
from collections.abc import Callable, Iterable, Iterator, Mapping
from dataclasses import dataclass, field
from typing import Any, Protocol, Union, runtime_checkable

from confluent_kafka import Consumer, KafkaError, KafkaException, TopicPartition

from flarestream.connection import check_connection
from flarestream.consumers.archive_files import row_headers
from flarestream.consumers.archive_reader import ArchivedFile, ArchiveReader
from flarestream.consumers.deadletter import DeadLetters
from flarestream.consumers.progress import Progress
from flarestream.consumers.sink import Delivered, Rejection, Sink
from flarestream.errors import BrokerError, ConfigError, DecodeError, FlarestreamError
from flarestream.schemas.codec import Codec, default_codec
from flarestream.schemas.record import Record
from flarestream.settings import kafka_client_config
from flarestream.signing import PublicKeys, Verdict

log = logging.getLogger("flarestream.consumers.replay")

REPLAY_GROUP_PREFIX = "flarestream.replay."
_EPOCH = dt.datetime(1970, 1, 1, tzinfo=dt.timezone.utc)


@dataclass(frozen=True)
class Undecodable:
    """A message that is not a flarestream record, and where it was found."""

    topic: str
    partition: int
    offset: int
    timestamp_ms: int
    raw: bytes
    reason: str
    key: bytes | None = None
    headers: tuple[tuple[str, bytes | None], ...] = ()
    file: str | None = None  # the archive file it came from, if any

    @property
    def where(self) -> str:
        at = f"{self.topic}[{self.partition}]@{self.offset}"
        return f"{self.file}: {at}" if self.file else at


Item = Union[Delivered, Undecodable]  # noqa: UP007 - a runtime alias on Python 3.10


@dataclass
class Batch:
    """Items in read order, and how many messages were read to get them (filtered
    ones included: that is the progress made)."""

    items: list[Item]
    read: int


@dataclass(frozen=True)
class RecordFilter:
    """Keep records of these sites, jobs and tags (an empty set keeps all)."""

    sites: frozenset[str] = frozenset()
    jobs: frozenset[str] = frozenset()
    tags: frozenset[str] = frozenset()

    @property
    def active(self) -> bool:
        return bool(self.sites or self.jobs or self.tags)

    def matches(self, r: Record) -> bool:
        return (
            (not self.sites or r.site in self.sites)
            and (not self.jobs or r.job_id in self.jobs)
            and (not self.tags or r.tag in self.tags)
        )


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


# -- the topic -------------------------------------------------------------------------
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


class TopicSource:
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
        raw = msg.value() or b""
        key = msg.key()
        headers = tuple(msg.headers() or ())
        try:
            record = self.codec.decode(raw)
        except DecodeError as exc:
            return Undecodable(self.topic, partition, offset, ts, raw, str(exc), key, headers)
        if not self.filter.matches(record):
            return None
        return Delivered(self.topic, partition, offset, ts, raw, record, key, headers)

    def close(self) -> None:
        self.consumer.close()

    def __enter__(self) -> TopicSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- the archive -----------------------------------------------------------------------
Row = dict[str, Any]


def merge_rows(
    reader: ArchiveReader,
    files: Iterable[ArchivedFile],
    on_error: Callable[[ArchivedFile, Exception], None] | None = None,
) -> Iterator[tuple[ArchivedFile, Row]]:
    """Rows of ``files`` partition by partition, in offset order within each: the
    files of a partition are opened when the merge reaches their first offset, so
    only files whose offsets interleave are open at once. A file that cannot be read
    is passed to ``on_error`` (its remaining rows skipped), or raises ArchiveError."""
    by_part: dict[tuple[str, int], list[ArchivedFile]] = {}
    for f in files:
        by_part.setdefault((f.topic, f.partition), []).append(f)
    for key in sorted(by_part):
        pending = deque(sorted(by_part[key], key=lambda f: (f.first_offset, f.path)))
        heap: list[tuple[int, int, ArchivedFile, Row, Iterator[Row]]] = []
        while heap or pending:
            while pending and (not heap or pending[0].first_offset <= heap[0][0]):
                f = pending.popleft()
                _push(heap, f, reader.rows(f), on_error)
            if heap:
                _, _, f, row, rows = heapq.heappop(heap)
                yield f, row
                _push(heap, f, rows, on_error)


_tie = itertools.count()  # orders heap entries with equal offsets without comparing files


def _push(
    heap: list[tuple[int, int, ArchivedFile, Row, Iterator[Row]]],
    f: ArchivedFile,
    rows: Iterator[Row],
    on_error: Callable[[ArchivedFile, Exception], None] | None,
) -> None:
    try:
        row = next(rows)
    except StopIteration:
        return
    except Exception as exc:  # a corrupt file: fastavro and pyarrow raise many types
        _file_error(f, exc, on_error)
        return
    heapq.heappush(heap, (row["offset"], next(_tie), f, row, rows))


def _file_error(
    f: ArchivedFile, exc: Exception, on_error: Callable[[ArchivedFile, Exception], None] | None
) -> None:
    if on_error is None:
        raise FlarestreamError(
            f"cannot read archive file {f.path}: {type(exc).__name__}: {exc}; run "
            "`flarestream audit --archive ROOT` to see what else is wrong"
        ) from None
    on_error(f, exc)


def open_archive(
    root: str, storage_options: Mapping[str, Any] | None = None, codec: Codec | None = None
) -> ArchiveReader:
    """An :class:`ArchiveReader`; ConfigError when a local root does not exist."""
    reader = ArchiveReader(root, storage_options, codec)
    if reader.store.is_local and not os.path.isdir(reader.store.root):
        reader.close()
        raise ConfigError(f"archive root {root!r} is not a directory; check --archive")
    return reader


def file_selected(
    f: ArchivedFile, spec: RangeSpec, flt: RecordFilter, topic: str | None = None
) -> bool:
    """Whether a complete file may hold records of the range (by its manifest)."""
    m = f.manifest
    if m is None:
        return False
    return (
        (topic is None or f.topic == topic)
        and (spec.partitions is None or f.partition in spec.partitions)
        and (not flt.jobs or f.job_id in flt.jobs)
        and (not flt.sites or f.site in flt.sites)
        and (spec.from_offset is None or m.last_offset >= spec.from_offset)
        and (spec.to_offset is None or m.first_offset < spec.to_offset)
        and (spec.from_time_ms is None or m.max_kafka_timestamp_ms >= spec.from_time_ms)
        and (spec.to_time_ms is None or m.min_kafka_timestamp_ms < spec.to_time_ms)
    )


def row_item(
    f: ArchivedFile, row: Row, spec: RangeSpec, flt: RecordFilter, codec: Codec
) -> Item | None:
    """An archive row as the consumer loop would have delivered it (the key is the
    site, as the sender keys), or None when the range or the filter leaves it out."""
    offset, ts = row["offset"], row["kafka_timestamp_ms"]
    if not (spec.offset_ok(offset) and spec.time_ok(ts)):
        return None
    raw = bytes(row["message"])
    key = row["site"].encode("utf-8")
    headers = row_headers(row)
    try:
        record = codec.decode(raw)
    except DecodeError as exc:
        return Undecodable(
            row["topic"], row["partition"], offset, ts, raw, str(exc), key, headers, f.path
        )
    if not flt.matches(record):
        return None
    return Delivered(row["topic"], row["partition"], offset, ts, raw, record, key, headers)


class ArchiveSource:
    """Reads the archive sink's files as if they were the topic (see the module doc).

    The key of each message is its site (what the sender keys by; the archive does
    not keep keys); its headers are the archived ones (none in files written before
    the archive kept headers). ``verify`` checks each selected file's size and sha256
    against its manifest before anything is replayed."""

    def __init__(
        self,
        root: str,
        storage_options: Mapping[str, Any] | None = None,
        spec: RangeSpec | None = None,
        record_filter: RecordFilter | None = None,
        *,
        topic: str | None = None,
        verify: bool = True,
        codec: Codec | None = None,
        batch_size: int = 2000,
    ) -> None:
        self.spec = spec or RangeSpec()
        self.filter = record_filter or RecordFilter()
        self.topic = topic
        self.codec = codec or default_codec()
        self.batch_size = batch_size
        self.reader = open_archive(root, storage_options, self.codec)
        try:
            self.files = [
                f for f in self._listing() if file_selected(f, self.spec, self.filter, topic)
            ]
            if verify:
                problems = [p for f in self.files for p in self.reader.verify(f, deep=False)]
                if problems:
                    raise FlarestreamError(
                        f"{len(problems)} archive problem(s), nothing replayed: "
                        + "; ".join(problems[:5])
                        + " (run `flarestream audit --archive ...`; --no-verify replays anyway)"
                    )
        except BaseException:
            self.reader.close()
            raise

    def _listing(self) -> Iterator[ArchivedFile]:
        jobs, sites = sorted(self.filter.jobs), sorted(self.filter.sites)
        # a single job (and site) lists only below its directory
        return self.reader.files(
            job_id=jobs[0] if len(jobs) == 1 else None, site=sites[0] if len(sites) == 1 else None
        )

    @property
    def total(self) -> int:
        return sum(f.manifest.record_count for f in self.files if f.manifest is not None)

    def batches(self) -> Iterator[Batch]:
        items: list[Item] = []
        read = 0
        for f, row in merge_rows(self.reader, self.files):
            read += 1
            item = row_item(f, row, self.spec, self.filter, self.codec)
            if item is not None:
                items.append(item)
            if read >= self.batch_size:
                yield Batch(items, read)
                items, read = [], 0
        if read:
            yield Batch(items, read)

    def close(self) -> None:
        self.reader.close()

    def __enter__(self) -> ArchiveSource:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()


# -- driving a sink --------------------------------------------------------------------
@runtime_checkable
class RawTarget(Protocol):
    """A target that can also take a message it cannot decode (a topic copy)."""

    def write_raw(self, message: Undecodable) -> None: ...


@dataclass
class ReplayStats:
    read: int = 0  # messages read from the source (filtered ones included)
    written: int = 0  # records the sink took
    rejected: int = 0  # records the sink refused
    undecodable: int = 0
    copied_raw: int = 0  # undecodable messages copied byte for byte
    flushes: int = 0
    first_undecodable: str | None = None
    first_rejection: str | None = None


def replay(
    batches: Iterable[Batch],
    sink: Sink,
    *,
    progress: Progress | None = None,
    dead_letters: DeadLetters | None = None,
    copy_raw: bool = False,
    flush_records: int = 10_000,
    keys: PublicKeys | None = None,
) -> ReplayStats:
    """Feed ``batches`` to ``sink``: ``open``, ``write`` per run of records, ``flush``
    every ``flush_records`` and at the end, ``close`` always (also after an error,
    as the live loop does). Rejected records and undecodable messages go to
    ``dead_letters`` when given; undecodable ones are copied with ``write_raw``
    instead when ``copy_raw`` and the sink is a :class:`RawTarget`. With ``keys``,
    records whose signature does not verify for their site are refused likewise."""
    stats = ReplayStats()
    pending = 0
    sink.open()
    try:
        for batch in batches:
            run: list[Delivered] = []
            for item in batch.items:
                if isinstance(item, Delivered):
                    site, raw, headers = item.record.site, item.raw, item.headers
                    if keys is None or (v := keys.check(site, raw, headers)) is Verdict.VERIFIED:
                        run.append(item)
                    else:  # refused like the live loop: it never reaches the sink
                        why = keys.explain(v, site, raw, headers)
                        _refuse(sink, Rejection(item, why), stats, dead_letters)
                    continue
                pending += _write(sink, run, stats, dead_letters)
                run = []
                _undecodable(sink, item, stats, dead_letters, copy_raw)
            pending += _write(sink, run, stats, dead_letters)
            stats.read += batch.read
            if progress is not None:
                progress.advance(batch.read)
            if pending >= flush_records:
                _flush(sink, stats, dead_letters)
                pending = 0
        _flush(sink, stats, dead_letters)
    finally:
        sink.close()
    return stats


def _write(sink: Sink, run: list[Delivered], stats: ReplayStats, dead: DeadLetters | None) -> int:
    if not run:
        return 0
    rejections = sink.write(run)
    stats.written += len(run) - len(rejections)
    for r in rejections:
        _refuse(sink, r, stats, dead)
    return len(run)


def _refuse(sink: Sink, r: Rejection, stats: ReplayStats, dead: DeadLetters | None) -> None:
    d = r.delivered
    stats.rejected += 1
    if stats.first_rejection is None:
        stats.first_rejection = f"{d.topic}[{d.partition}]@{d.offset}: {r.reason}"
    if dead is not None:
        dead.send(d.topic, d.partition, d.offset, d.raw, d.key, d.headers, r.reason)
    else:
        log.warning("%s refused %s[%d]@%d: %s", sink.name, d.topic, d.partition, d.offset, r.reason)


def _undecodable(
    sink: Sink, u: Undecodable, stats: ReplayStats, dead: DeadLetters | None, copy_raw: bool
) -> None:
    stats.undecodable += 1
    if stats.first_undecodable is None:
        stats.first_undecodable = f"{u.where}: {u.reason}"
    if copy_raw and isinstance(sink, RawTarget):
        sink.write_raw(u)
        stats.copied_raw += 1
    elif dead is not None:
        dead.send(
            u.topic, u.partition, u.offset, u.raw, u.key, u.headers, f"undecodable: {u.reason}"
        )


def _flush(sink: Sink, stats: ReplayStats, dead: DeadLetters | None) -> None:
    sink.flush()
    if dead is not None:
        dead.flush()
    stats.flushes += 1
