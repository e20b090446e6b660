"""``flarestream sink NAME [options]``: run one sink as its own consumer group.

``flarestream sink --help`` lists the installed sinks. SIGINT and SIGTERM make
the loop flush, commit and exit 0.
"""

from __future__ import annotations

import argparse
import json
import signal
import sys
from types import FrameType
from typing import Any

from flarestream import settings
from flarestream.consumers.loop import ConsumerLoop, LoopConfig, LoopStats
from flarestream.consumers.registry import available_sinks, load_sink
from flarestream.consumers.sink import Sink
from flarestream.signing import load_public_keys


def add_loop_arguments(parser: argparse.ArgumentParser) -> None:
    """The options every sink takes."""
    parser.add_argument(
        "--bootstrap-servers",
        default=None,
        help="Kafka bootstrap servers (default: $FLARESTREAM_BOOTSTRAP_SERVERS, else the "
        "local broker)",
    )
    parser.add_argument("--topic", default=settings.DEFAULT_TOPIC, help="topic (%(default)s)")
    parser.add_argument("--group", default=None, help="consumer group (flarestream.<sink>)")
    parser.add_argument("--dlq-topic", default=None, help="dead-letter topic (<topic>.dlq)")
    parser.add_argument(
        "--until-end",
        action="store_true",
        help="drain: consume up to the end offsets seen at start, flush, commit, exit 0",
    )
    parser.add_argument(
        "--from-beginning", action="store_true", help="re-read the topic from its start"
    )
    parser.add_argument(
        "--flush-interval",
        type=float,
        default=5.0,
        help="seconds between flushes, also when idle (%(default)s)",
    )
    parser.add_argument(
        "--flush-records", type=int, default=10_000, help="records between flushes (%(default)s)"
    )
    parser.add_argument(
        "--verify-keys",
        metavar="KEYS",
        default=None,
        help="require signed records: a directory of <site>.pub files or a JSON keys file; "
        "a record not signed by the site it claims goes to the dead-letter topic",
    )


def loop_config(args: argparse.Namespace) -> LoopConfig:
    return LoopConfig(
        bootstrap_servers=args.bootstrap_servers or settings.default_bootstrap_servers(),
        topic=args.topic,
        group=args.group,
        dlq_topic=args.dlq_topic,
        flush_interval_s=args.flush_interval,
        flush_records=args.flush_records,
        until_end=args.until_end,
        from_beginning=args.from_beginning,
        verify_keys=getattr(args, "verify_keys", None),
    )


def add_parser(subparsers: Any) -> None:
    sinks = available_sinks()
    listing = "\n".join(f"  {name:<12} {ep.value}" for name, ep in sorted(sinks.items()))
    parser = subparsers.add_parser(
        "sink",
        help="run one sink (its own consumer group) from the topic",
        description="Run one sink as its own consumer group.\n\ninstalled sinks:\n" + listing,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    names = parser.add_subparsers(dest="sink_name", metavar="NAME", required=True)
    for name in sorted(sinks):
        try:
            cls = load_sink(name)
        except Exception as exc:  # a broken third-party sink must not break the command
            names.add_parser(name, help=f"(cannot load: {exc})")
            continue
        sub = names.add_parser(name, help=cls.description, description=cls.description)
        add_loop_arguments(sub)
        cls.add_arguments(sub)
        sub.set_defaults(func=run, sink_class=cls)


def run_sink(sink: Sink, config: LoopConfig, handle_signals: bool = True) -> LoopStats:
    """Run ``sink`` until stopped (or drained with ``config.until_end``); the same
    as the command line, from Python."""
    loop = ConsumerLoop(sink, config)
    if handle_signals:

        def stop(signum: int, frame: FrameType | None) -> None:
            loop.stop()

        signal.signal(signal.SIGTERM, stop)
        signal.signal(signal.SIGINT, stop)
    return loop.run()


def run(args: argparse.Namespace) -> int:
    config = loop_config(args)  # first: bad keys stop the command before the sink is made
    sink = args.sink_class.from_args(args)
    keys = load_public_keys(config.verify_keys)  # loaded already: this only narrows the type
    verifying = "" if keys is None else f"verifying signatures of {len(keys)} sites; "
    print(
        f"flarestream sink {sink.name}: group {config.group or 'flarestream.' + sink.name} "
        f"reading {config.topic!r} at {config.bootstrap_servers}; {verifying}"
        f"{json.dumps(sink.describe())}",
        file=sys.stderr,
        flush=True,
    )
    stats = run_sink(sink, config)
    print(
        f"flarestream sink {sink.name}: consumed {stats.consumed}, written {stats.written}, "
        f"dead letters {stats.dead_lettered}, commits {stats.commits}",
        file=sys.stderr,
    )
    return 0
