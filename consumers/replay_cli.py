"""``flarestream replay``: re-drive a topic range or an archive into a sink, JSON Lines
or another topic (those two targets: :mod:`flarestream.consumers.replay_targets`).

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
import json
import sys
from typing import Any

from flarestream import settings
from flarestream.consumers.archive_reader import parse_storage_options, redacted
from flarestream.consumers.archive_source import ArchiveSource
from flarestream.consumers.deadletter import DeadLetters
from flarestream.consumers.progress import Progress
from flarestream.consumers.registry import available_sinks, load_sink
from flarestream.consumers.replay import ReplayStats, replay
from flarestream.consumers.replay_targets import JsonLinesTarget, TopicTarget
from flarestream.consumers.sink import Sink
from flarestream.consumers.source_options import (
    add_progress_argument,
    add_source_arguments,
    bootstrap,
    empty_range_error,
    range_spec,
    record_filter,
)
from flarestream.consumers.topic_source import TopicSource
from flarestream.errors import ConfigError, FlarestreamError
from flarestream.signing import load_public_keys

DESCRIPTION = """\
Re-drive a topic range, or an archive, into an installed sink, JSON Lines or another
topic. Reads with a throwaway consumer group and commits nothing; the end is fixed when
the replay starts. --sink NAME and its options come last (flarestream replay --sink NAME
--help lists them).

exit codes: 0 done; 1 the replay failed (broker, archive file, sink); 2 usage (also an
unknown topic, or a --from/--to range that holds no message)."""


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
    add_progress_argument(opts)
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
