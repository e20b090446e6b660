"""Command-line options shared by ``flarestream replay`` and ``flarestream audit``:
where to read (topic or archive), which range and which records, and turning them
into a :class:`~flarestream.consumers.topic_range.RangeSpec` and a
:class:`~flarestream.consumers.replay_source.RecordFilter`.
"""

from __future__ import annotations

import argparse
from typing import Any

from flarestream import settings
from flarestream.consumers.replay_source import RecordFilter
from flarestream.consumers.topic_range import RangeSpec, format_ms, parse_time
from flarestream.consumers.topic_source import TopicSource
from flarestream.errors import ConfigError


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


def add_progress_argument(group: Any) -> None:
    """``--progress/--no-progress``: the same switch for replay and audit."""
    group.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
