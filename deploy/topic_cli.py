"""``flarestream topic create|describe|list``: topic tools for any Kafka.

``create`` is idempotent: it prints ``created`` or ``exists`` (exit 0) and refuses
(exit 1) a topic that exists with other settings.
"""

from __future__ import annotations

import argparse
from typing import Any

from flarestream import settings
from flarestream.deploy.topics import create_topic, describe_topic, list_topics
from flarestream.errors import ConfigError


def add_parser(subparsers: Any) -> None:
    """Register ``topic`` and its ``create``/``describe``/``list`` subcommands."""
    parser = subparsers.add_parser(
        "topic",
        help="create, describe and list Kafka topics",
        description="Create (idempotently), describe and list Kafka topics.",
    )
    commands = parser.add_subparsers(dest="topic_command", metavar="ACTION", required=True)

    def common(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--bootstrap-servers",
            default=None,
            help="Kafka to talk to (default: $FLARESTREAM_BOOTSTRAP_SERVERS, else "
            f"{settings.LOCAL_BROKER_HOST}:{settings.LOCAL_BROKER_PORT})",
        )
        sub.add_argument(
            "--timeout", type=float, default=30.0, help="seconds to wait (default: 30)"
        )

    create = commands.add_parser(
        "create",
        help="create a topic unless it exists with the same settings",
        description="Create a topic. Prints 'created', or 'exists' when it already exists "
        "with the same partitions, replication factor and given settings; fails (exit 1) "
        "naming the differences otherwise.",
    )
    create.add_argument("name", help="topic name")
    create.add_argument("--partitions", type=int, required=True, help="number of partitions")
    create.add_argument(
        "--replication-factor", type=int, required=True, help="replicas per partition"
    )
    create.add_argument("--retention-ms", type=int, default=None, help="retention.ms")
    create.add_argument(
        "--config",
        action="append",
        default=[],
        metavar="KEY=VALUE",
        help="another topic setting (repeatable), e.g. --config cleanup.policy=delete",
    )
    common(create)
    create.set_defaults(func=_create)

    describe = commands.add_parser("describe", help="show a topic's partitions and settings")
    describe.add_argument("name", help="topic name")
    common(describe)
    describe.set_defaults(func=_describe)

    listing = commands.add_parser("list", help="list topic names")
    listing.add_argument(
        "--all", action="store_true", help="include internal topics (__consumer_offsets, ...)"
    )
    common(listing)
    listing.set_defaults(func=_list)


def _bootstrap(args: argparse.Namespace) -> str:
    return str(args.bootstrap_servers or settings.default_bootstrap_servers())


def _parse_config(items: list[str]) -> dict[str, str]:
    config: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key:
            raise ConfigError(f"--config wants KEY=VALUE, got {item!r}")
        config[key] = value
    return config


def _create(args: argparse.Namespace) -> int:
    created = create_topic(
        _bootstrap(args),
        args.name,
        partitions=args.partitions,
        replication_factor=args.replication_factor,
        retention_ms=args.retention_ms,
        config=_parse_config(args.config),
        timeout=args.timeout,
    )
    print("created" if created else "exists")
    return 0


def _describe(args: argparse.Namespace) -> int:
    info = describe_topic(_bootstrap(args), args.name, timeout=args.timeout)
    print(f"topic: {info.name}")
    print(f"partitions: {info.partitions}")
    print(f"replication_factor: {info.replication_factor}")
    print(f"retention.ms: {info.config.get('retention.ms')}")
    for key, value in sorted(info.overrides.items()):
        if key != "retention.ms":
            print(f"{key}: {value}")
    return 0


def _list(args: argparse.Namespace) -> int:
    for name in list_topics(_bootstrap(args), timeout=args.timeout, include_internal=args.all):
        print(name)
    return 0
