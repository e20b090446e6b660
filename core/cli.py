"""The ``flarestream`` command. Each subcommand lives beside the code it drives and
registers itself through ``add_parser(subparsers)``; this module only dispatches.

Exit codes: 0 success, 1 the command ran and found a failure, 2 usage or
configuration error. A :class:`FlarestreamError` is printed as one line, never as
a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from flarestream import __version__
from flarestream.errors import ConfigError, FlarestreamError

# (subcommand, module that defines add_parser); imported lazily so `--help` stays fast
SUBCOMMANDS: tuple[tuple[str, str], ...] = (
    ("broker", "flarestream.deploy.broker_cli"),
    ("topic", "flarestream.deploy.topic_cli"),
    ("sink", "flarestream.consumers.sink_cli"),
    ("replay", "flarestream.consumers.replay_cli"),
    ("audit", "flarestream.consumers.audit_cli"),
    ("demo", "flarestream.demo"),
    ("keys", "flarestream.keys_cli"),
)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog="flarestream",
        description="Stream NVFlare analytics through Kafka into TensorBoard, MLflow and archives.",
    )
    parser.add_argument("--version", action="version", version=f"flarestream {__version__}")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for _name, module in SUBCOMMANDS:
        importlib.import_module(module).add_parser(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    try:
        return int(args.func(args) or 0)
    except ConfigError as exc:
        print(f"flarestream {args.command}: {exc}", file=sys.stderr)
        return 2
    except FlarestreamError as exc:
        print(f"flarestream {args.command}: {exc}", file=sys.stderr)
        return 1
    except KeyboardInterrupt:
        return 130


if __name__ == "__main__":
    raise SystemExit(main())
