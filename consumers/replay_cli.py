"""``flarestream replay``: re-drive a topic range or an archive into a sink, JSON Lines
or another topic; and the two targets that are not sinks of their own.

::

    flarestream replay --topic T --from-time 2024-05-01T12:00Z --to-time 2024-05-01T13:00Z \\
        --sink tensorboard --logdir /tmp/tb          # any installed sink, its own options
    flarestream replay --archive s3://bucket/archive --jsonl out.jsonl
    flarestream replay --archive ./archive --to-topic flare.analytics.restored

``--sink NAME`` comes last: everything after it is the sink's own options
(``flarestream replay --sink NAME --help`` lists them). Exit codes: 0 done, 1 the
replay failed (broker, archive or sink), 2 usage: bad options, unknown topic, or a
range given with ``--from-*``/``--to-*`` that holds no message.
"""

from __future__ import annotations

import argparse
import base64
import json
import math
import os
import sys
from collections.abc import Mapping, Sequence
from typing import IO, Any

from confluent_kafka import KafkaError, KafkaException, Message, Producer

from flarestream import settings
from flarestream.connection import check_connection
from flarestream.consumers.archive_reader import parse_storage_options, redacted
from flarestream.consumers.deadletter import DeadLetters
from flarestream.consumers.progress import Progress
from flarestream.consumers.registry import available_sinks, load_sink
from flarestream.consumers.replay import (
    ArchiveSource,
    RangeSpec,
    RecordFilter,
    ReplayStats,
    TopicSource,
    Undecodable,
    format_ms,
    parse_time,
    replay,
)
from flarestream.consumers.sink import Delivered, Rejection, Sink
from flarestream.errors import ConfigError, DeliveryError, FlarestreamError
from flarestream.signing import load_public_keys

DESCRIPTION = """\
Re-drive a topic range, or an archive, into an installed sink, JSON Lines or another
topic. Reads with a throwaway consumer group and commits nothing; the end is fixed when
the replay starts. --sink NAME and its options come last (flarestream replay --sink NAME
--help lists them).

exit codes: 0 done; 1 the replay failed (broker, archive file, sink); 2 usage (also an
unknown topic, or a --from/--to range that holds no message)."""

# -- JSON Lines ------------------------------------------------------------------------
NON_FINITE = {math.inf: "Infinity", -math.inf: "-Infinity"}
_ENCODER = json.JSONEncoder(ensure_ascii=False, allow_nan=False)  # reused: saves a build per line


def json_safe(value: Any) -> Any:
    """``value`` as strict JSON: NaN and +-infinity become the strings ``"NaN"``,
    ``"Infinity"``, ``"-Infinity"``; a numpy array becomes ``{"dtype", "shape",
    "base64"}`` (C order, the dtype as numpy spells it, e.g. ``"<f4"``)."""
    cls = type(value)
    if cls is float:
        if math.isfinite(value):
            return value
        return "NaN" if math.isnan(value) else NON_FINITE[value]
    if cls is str or cls is int or cls is bool or value is None:
        return value
    if isinstance(value, dict):
        return {str(k): json_safe(v) for k, v in value.items()}
    if isinstance(value, (list, tuple)):
        return [json_safe(v) for v in value]
    if hasattr(value, "dtype") and hasattr(value, "tobytes") and hasattr(value, "shape"):
        return {
            "dtype": value.dtype.str,
            "shape": list(value.shape),
            "base64": base64.b64encode(value.tobytes(order="C")).decode("ascii"),
        }
    return value


def to_json(d: Delivered) -> dict[str, Any]:
    """One JSON Lines object: Kafka coordinates, then the decoded record."""
    r = d.record
    return {
        "topic": d.topic,
        "partition": d.partition,
        "offset": d.offset,
        "kafka_timestamp_ms": d.timestamp_ms,
        "key": d.key.decode("utf-8", "replace") if d.key is not None else None,
        "record_id": r.record_id,
        "site": r.site,
        "job_id": r.job_id,
        "sender_id": r.sender_id,
        "seq": r.seq,
        "timestamp_ms": r.timestamp_ms,
        "writer": r.writer.name,
        "tag": r.tag,
        "data_type": r.data_type.name,
        "step": r.step,
        "path": r.path,
        "value": json_safe(r.value),
        "kwargs": json_safe(r.kwargs) if r.kwargs else {},
        "schema_version": r.schema_version,
    }


class JsonLinesTarget(Sink):
    """One JSON object per record (see :func:`to_json`) to a file or stdout (``-``).
    The file is replaced; ``flush`` makes what was written durable (fsync)."""

    name = "jsonl"
    description = "one JSON object per record"

    def __init__(self, path: str | os.PathLike[str] = "-") -> None:
        self.path = os.fspath(path)
        self._fo: IO[str] | None = None

    def open(self) -> None:
        if self._fo is None:
            if self.path == "-":
                self._fo = sys.stdout
            else:
                try:
                    self._fo = open(self.path, "w", encoding="utf-8")  # noqa: SIM115
                except OSError as exc:
                    raise ConfigError(f"cannot write {self.path}: {exc.strerror}") from None

    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        assert self._fo is not None, "open() first"
        encode = _ENCODER.encode
        self._fo.write("".join(encode(to_json(d)) + "\n" for d in batch))
        return ()

    def flush(self) -> None:
        if self._fo is not None:
            self._fo.flush()
            if self._fo is not sys.stdout:
                os.fsync(self._fo.fileno())

    def close(self) -> None:
        if self._fo is not None and self._fo is not sys.stdout:
            self._fo.close()
        self._fo = None

    def describe(self) -> Mapping[str, Any]:
        return {"sink": self.name, "path": self.path}


# -- another topic ---------------------------------------------------------------------
class TopicTarget(Sink):
    """Re-produces each message byte for byte, with its key, headers and timestamp,
    through an idempotent producer (so a record keeps its record id). ``flush``
    raises DeliveryError unless every message is confirmed. A replay that is run
    twice into the same topic writes everything twice: audit finds those doubles."""

    name = "topic"
    description = "the original bytes into another topic"

    def __init__(
        self, bootstrap_servers: str, topic: str, client_config: Mapping[str, Any] | None = None
    ) -> None:
        self.bootstrap_servers, self.topic = bootstrap_servers, topic
        self._config = settings.kafka_client_config(client_config)
        self._producer: Producer | None = None
        self._failed: list[str] = []

    def open(self) -> None:
        if self._producer is not None:
            return
        check_connection(self.bootstrap_servers, self._config, who="replay --to-topic")
        self._producer = Producer(
            {
                **self._config,
                "bootstrap.servers": self.bootstrap_servers,
                "enable.idempotence": True,
                "acks": "all",
                "linger.ms": 20,
                "compression.type": "lz4",
                "on_delivery": self._on_delivery,
            }
        )
        try:
            meta = self._producer.list_topics(self.topic, timeout=30)
        except KafkaException as exc:
            raise ConfigError(f"cannot reach {self.bootstrap_servers}: {exc}") from None
        found = meta.topics.get(self.topic)
        if found is None or found.error is not None:
            raise ConfigError(
                f"target topic {self.topic!r} does not exist at {self.bootstrap_servers}; "
                f"create it first: flarestream topic create {self.topic} --partitions N"
            )

    def _produce(self, value: bytes, key: bytes | None, ts: int, headers: Any) -> None:
        assert self._producer is not None, "open() first"
        while True:
            try:
                if ts > 0:
                    self._producer.produce(self.topic, value, key, timestamp=ts, headers=headers)
                else:
                    self._producer.produce(self.topic, value, key, headers=headers)
                return
            except BufferError:
                self._producer.poll(0.1)  # the local queue is full: serve deliveries

    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        for d in batch:
            self._produce(d.raw, d.key, d.timestamp_ms, list(d.headers) or None)
        return ()

    def write_raw(self, message: Undecodable) -> None:
        """Copy a message that is not a record as it is (a faithful copy of a range)."""
        self._produce(message.raw, message.key, message.timestamp_ms, list(message.headers) or None)

    def _on_delivery(self, err: KafkaError | None, msg: Message) -> None:
        if err is not None:
            self._failed.append(err.str())

    def flush(self) -> None:
        if self._producer is None:
            return
        remaining = self._producer.flush(60)
        failed, self._failed = self._failed, []
        if remaining or failed:
            raise DeliveryError(
                f"{remaining + len(failed)} messages not delivered to {self.topic!r}"
                + (f": {failed[0]}" if failed else ""),
                remaining + len(failed),
            )

    def close(self) -> None:
        self._producer = None  # flushed by the last flush(); nothing else to release

    def describe(self) -> Mapping[str, Any]:
        return {"sink": self.name, "topic": self.topic, "bootstrap": self.bootstrap_servers}


# -- command line ----------------------------------------------------------------------
def add_source_arguments(parser: argparse.ArgumentParser, topic_default: str | None) -> None:
    """Where to read, which range and which records: shared by replay and audit."""
    src = parser.add_argument_group("source")
    src.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka bootstrap servers (default: $FLARESTREAM_BOOTSTRAP_SERVERS, "
        "else the local broker)",
    )
    src.add_argument("--topic", default=topic_default, help=f"topic ({topic_default or 'none'})")
    src.add_argument(
        "--archive",
        metavar="ROOT",
        default=None,
        help="an archive sink's root: directory or fsspec URL",
    )
    src.add_argument(
        "--archive-storage-option",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="fsspec option for --archive, repeatable",
    )
    src.add_argument(
        "--archive-topic", default=None, help="only archived records of this original topic"
    )
    rng = parser.add_argument_group("range (offsets and times are [from, to))")
    rng.add_argument(
        "--partition",
        type=int,
        action="append",
        default=None,
        help="only this partition, repeatable",
    )
    rng.add_argument("--from-offset", type=int, default=None, help="first offset, per partition")
    rng.add_argument("--to-offset", type=int, default=None, help="end offset (not included)")
    rng.add_argument(
        "--from-time",
        "--from-timestamp",
        default=None,
        help="Kafka message time: ISO 8601 (UTC if no zone) or epoch ms",
    )
    rng.add_argument("--to-time", "--to-timestamp", default=None, help="end time (not included)")
    flt = parser.add_argument_group("records")
    for flag in ("site", "job", "tag"):
        flt.add_argument(
            f"--{flag}", action="append", default=[], help=f"only this {flag}, repeatable"
        )


def range_spec(args: argparse.Namespace) -> RangeSpec:
    return RangeSpec(
        frozenset(args.partition) if args.partition else None,
        args.from_offset,
        args.to_offset,
        parse_time(args.from_time) if args.from_time else None,
        parse_time(args.to_time) if args.to_time else None,
    )


def record_filter(args: argparse.Namespace) -> RecordFilter:
    return RecordFilter(frozenset(args.site), frozenset(args.job), frozenset(args.tag))


def bootstrap(args: argparse.Namespace) -> str:
    return str(args.bootstrap_servers or settings.default_bootstrap_servers())


def empty_range_error(source: TopicSource) -> ConfigError:
    """The message for a --from/--to range that holds no message."""
    spec = source.spec
    asked = []
    if spec.from_offset is not None or spec.to_offset is not None:
        end = "end" if spec.to_offset is None else spec.to_offset
        asked.append(f"offsets [{spec.from_offset or 0}, {end})")
    if spec.from_time_ms is not None or spec.to_time_ms is not None:
        asked.append(f"times [{format_ms(spec.from_time_ms)}, {format_ms(spec.to_time_ms)})")
    span = source.time_span()
    held = (
        f"its messages span {format_ms(span[0])} to {format_ms(span[1])}"
        if span
        else "it holds no message"
    )
    marks = ", ".join(f"{p.partition}: {p.low}..{p.high}" for p in source.range.partitions)
    return ConfigError(
        f"no message of topic {source.topic!r} is in {' and '.join(asked)}; {held} "
        f"(offsets per partition {marks})"
    )


def add_parser(subparsers: Any) -> None:
    names = ", ".join(sorted(available_sinks())) or "none installed"
    parser = subparsers.add_parser(
        "replay",
        help="re-drive a topic range or an archive into a sink, JSON Lines or a topic",
        description=DESCRIPTION + f"\n\ninstalled sinks: {names}",
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_arguments(parser, settings.DEFAULT_TOPIC)
    out = parser.add_argument_group("target (one of)")
    target = out.add_mutually_exclusive_group(required=True)
    target.add_argument("--jsonl", metavar="FILE", help="JSON Lines to FILE, or - for stdout")
    target.add_argument("--to-topic", metavar="TOPIC", help="the original bytes into TOPIC")
    target.add_argument(
        "--sink",
        nargs=argparse.REMAINDER,
        metavar="NAME [OPTIONS]",
        help="NAME [OPTIONS]: an installed sink and its own options; comes last",
    )
    opts = parser.add_argument_group("replay")
    opts.add_argument("--to-bootstrap-servers", default=None, help="for --to-topic (the same)")
    opts.add_argument(
        "--dlq-topic",
        default=None,
        help="send undecodable and refused records here (default: count them only)",
    )
    opts.add_argument(
        "--no-verify",
        action="store_true",
        help="replay archive files without checking their sha256 first",
    )
    opts.add_argument("--flush-records", type=int, default=10_000, help="(%(default)s)")
    opts.add_argument(
        "--verify-keys",
        metavar="KEYS",
        default=None,
        help="replay only records signed by the site they claim (a directory of <site>.pub "
        "files or a JSON keys file); the others are refused (--dlq-topic)",
    )
    opts.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
    parser.set_defaults(func=run)


def build_target(args: argparse.Namespace) -> Sink:
    if args.jsonl is not None:
        return JsonLinesTarget(args.jsonl)
    if args.to_topic is not None:
        if args.archive is None and args.to_topic == args.topic:
            raise ConfigError("--to-topic must differ from --topic (it would double the topic)")
        return TopicTarget(args.to_bootstrap_servers or bootstrap(args), args.to_topic)
    if not args.sink:
        raise ConfigError(
            "--sink needs a sink name; installed: " + ", ".join(sorted(available_sinks()))
        )
    name, rest = args.sink[0], args.sink[1:]
    try:
        cls = load_sink(name)
    except ImportError as exc:
        raise ConfigError(f"sink {name!r} cannot be loaded: {exc}") from None
    sub = argparse.ArgumentParser(
        prog=f"flarestream replay ... --sink {name}", description=cls.description
    )
    cls.add_arguments(sub)
    return cls.from_args(sub.parse_args(rest))


def run(args: argparse.Namespace) -> int:
    keys = load_public_keys(args.verify_keys)  # bad keys stop the replay before it starts
    sink = build_target(args)
    spec, flt = range_spec(args), record_filter(args)
    source: TopicSource | ArchiveSource
    if args.archive is not None:
        source = ArchiveSource(
            args.archive,
            parse_storage_options(args.archive_storage_option),
            spec,
            flt,
            topic=args.archive_topic,
            verify=not args.no_verify,
        )
        where = f"archive {redacted(args.archive, {})[0]} ({len(source.files)} files)"
        if spec.bounded and not source.files:
            source.close()
            raise ConfigError(f"no archived file holds records in that range of {where}")
    else:
        source = TopicSource(bootstrap(args), args.topic, spec, flt)
        if spec.bounded and source.total == 0:
            try:
                raise empty_range_error(source)
            finally:
                source.close()
        parts = ", ".join(f"{p.partition}:[{p.start},{p.end})" for p in source.range.partitions)
        where = f"topic {args.topic!r} partitions {parts}"
    dead = None
    if args.dlq_topic:
        dead = DeadLetters(bootstrap(args), args.dlq_topic, f"replay-{sink.name}")
    about = json.dumps(sink.describe(), default=str)
    print(f"flarestream replay: {where} -> {about}", file=sys.stderr)
    progress = Progress("replay", source.total, enabled=args.progress)
    try:
        with source:
            stats = _replay(
                source.batches(),
                sink,
                progress=progress,
                dead_letters=dead,
                copy_raw=isinstance(sink, TopicTarget) and not flt.active,
                flush_records=max(1, args.flush_records),
                keys=keys,
            )
    finally:
        progress.finish()
    print(summary(stats), file=sys.stderr)
    return 0


def _replay(*args: Any, **kwargs: Any) -> ReplayStats:
    """:func:`replay`, with an operating-system error as one line, not a traceback."""
    try:
        return replay(*args, **kwargs)
    except OSError as exc:
        raise FlarestreamError(f"replay stopped: {exc}") from exc


def summary(stats: ReplayStats) -> str:
    text = (
        f"flarestream replay: read {stats.read}, written {stats.written}, "
        f"refused {stats.rejected}, undecodable {stats.undecodable}"
    )
    if stats.copied_raw:
        text += f" (copied as they are: {stats.copied_raw})"
    if stats.first_undecodable:
        text += f"; first undecodable: {stats.first_undecodable}"
    if stats.first_rejection:
        text += f"; first refused: {stats.first_rejection}"
    if stats.read and not (stats.written or stats.undecodable or stats.rejected):
        text += "; no record matched --site/--job/--tag"
    return text
