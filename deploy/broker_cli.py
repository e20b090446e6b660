"""``flarestream broker start|stop|status``: the local development Kafka broker.

``start`` prints progress on stderr and the bootstrap address as the last line of
stdout, so ``BOOTSTRAP=$(flarestream broker start | tail -n1)`` works.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flarestream import settings
from flarestream.deploy.broker import LocalBroker, read_state
from flarestream.errors import ConfigError


def _default_data_dir() -> Path:
    return settings.home_dir() / "broker"


def _progress(message: str) -> None:
    print(f"flarestream broker: {message}", file=sys.stderr, flush=True)


def add_parser(subparsers: Any) -> None:
    """Register ``broker`` and its ``start``/``stop``/``status`` subcommands."""
    parser = subparsers.add_parser(
        "broker",
        help="run a local single-node Kafka (KRaft) on 127.0.0.1",
        description="Run a real single-node Kafka on 127.0.0.1 for development. Needs "
        "Java 17+; the Kafka jars are fetched once with Maven into the cache directory "
        "(FLARESTREAM_CACHE).",
    )
    commands = parser.add_subparsers(dest="broker_command", metavar="ACTION", required=True)

    def data_dir_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="the broker's directory: config, data, logs, pid "
            "(default: $FLARESTREAM_HOME/broker, i.e. ~/.flarestream/broker)",
        )

    start = commands.add_parser(
        "start",
        help="start the broker and print its bootstrap address",
        description="Start the broker in the background, wait until it serves requests, "
        "and print its bootstrap address as the last line of stdout.",
    )
    start.add_argument(
        "--port",
        type=int,
        default=None,
        help="client port on 127.0.0.1; 0 picks a free one (default: the port this data "
        f"dir used before, else {settings.LOCAL_BROKER_PORT})",
    )
    start.add_argument(
        "--timeout",
        type=float,
        default=120.0,
        help="seconds to wait for the broker to serve (default: 120)",
    )
    start.add_argument(
        "--secure",
        action="store_true",
        help="TLS (test CA), SCRAM-SHA-512 logins, mutual TLS and ACLs: see "
        "docs/security.md (a data dir set up this way always starts this way)",
    )
    start.add_argument(
        "--site",
        action="append",
        default=[],
        metavar="NAME",
        help="with --secure: a user that may only write to --topic (repeatable); its "
        "settings go to DATA_DIR/clients/NAME.env (mode 0600, password never printed)",
    )
    start.add_argument(
        "--sink",
        action="append",
        default=[],
        metavar="NAME",
        help="with --secure: user sink-NAME that may read --topic and write its "
        "dead-letter topic (repeatable); settings in DATA_DIR/clients/sink-NAME.env",
    )
    start.add_argument(
        "--topic",
        default=settings.DEFAULT_TOPIC,
        help="with --secure: the topic the ACLs name (%(default)s; dead letters: TOPIC.dlq)",
    )
    data_dir_option(start)
    start.set_defaults(func=_start)

    stop = commands.add_parser("stop", help="stop the broker (data is kept)")
    stop.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for a clean shutdown before killing it (default: 30)",
    )
    data_dir_option(stop)
    stop.set_defaults(func=_stop)

    status = commands.add_parser(
        "status", help="say whether the broker runs (exit 0 if running, 1 if not)"
    )
    data_dir_option(status)
    status.set_defaults(func=_status)

    from flarestream.deploy.cluster_cli import add_cluster_parser

    add_cluster_parser(commands)


def _broker(args: argparse.Namespace, port: int | None = None) -> LocalBroker:
    return LocalBroker(args.data_dir or _default_data_dir(), port=port)


def _start(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or _default_data_dir()
    port = args.port
    if port is None:
        port = read_state(data_dir).get("port") or settings.LOCAL_BROKER_PORT
    if args.secure or read_state(data_dir).get("secure"):
        from flarestream.deploy.security import SecureBroker, check_users, provision

        check_users(args.site, args.sink)  # before starting anything
        secure = SecureBroker(data_dir, port=port or None)
        address = secure.start(timeout=args.timeout, log=_progress)
        _progress(f"running (pid {secure.pid}, data in {secure.data_dir}, log {secure.log_path})")
        _progress(f"SASL_SSL (SCRAM-SHA-512) at {address}, mutual TLS at {secure.mtls_bootstrap}")
        for user, path in provision(secure, args.topic, args.site, args.sink).items():
            _progress(f"settings of {user}: {path} (load with: set -a; . {path}; set +a)")
        print(address, flush=True)
        return 0
    if args.site or args.sink:
        raise ConfigError("--site and --sink make users of a secure broker: add --secure")
    broker = LocalBroker(data_dir, port=port or None)  # 0: any free port
    address = broker.start(timeout=args.timeout, log=_progress)
    _progress(f"running (pid {broker.pid}, data in {broker.data_dir}, log {broker.log_path})")
    print(address, flush=True)
    return 0


def _stop(args: argparse.Namespace) -> int:
    broker = _broker(args)
    if broker.stop(timeout=args.timeout):
        print(f"stopped (data kept in {broker.data_dir})")
    else:
        print(f"not running (data dir {broker.data_dir})")
    return 0


def _status(args: argparse.Namespace) -> int:
    broker = _broker(args)
    pid = broker.pid
    if pid is None:
        print(f"stopped (data dir {broker.data_dir})")
        return 1
    print(f"running at {broker.bootstrap} (pid {pid}, data dir {broker.data_dir})")
    return 0
