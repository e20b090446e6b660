"""``flarestream audit``: what exactly did each site report, and does every copy hold all
of it?

::

    flarestream audit --topic T [--from-time ... --to-time ...] --archive ROOT --json report.json

For a topic range and/or an archive, per job, site and sender: record count, first
and last sequence number, gaps, duplicates, out-of-order records, undecodable
messages (accounting in :mod:`flarestream.consumers.audit`). Every archive file is
checked against its manifest (size, sha256, row count). With both a topic and an
archive, a reconciliation: each record of the topic range is in the archive exactly
once, by record id and, when the archive was written from this topic, by offset
with the same bytes. With ``--verify-keys``, provenance: per source and site, records
signed by the site they claim, unsigned, with a bad signature, or of an unknown site;
every record that does not verify is named (a record forged by site A claiming to be
site B names A when A's key is known) and fails the audit.

Scope of the archive: its records of ``--archive-topic``; by default of the audited
topic when the archive holds it (then only the rows inside the topic range), else
every record it holds (a topic rebuilt from the archive is compared by record id).

Exit codes: 0 everything reconciles; 1 anything is missing, doubled, out of order,
altered, undecodable or (with ``--verify-keys``) not signed by its site; 2 usage (bad
options, unknown topic, a ``--from``/``--to`` range that holds no message, an archive
root that does not exist, missing or bad keys).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

from flarestream.consumers.archive_reader import parse_storage_options
from flarestream.consumers.audit_table import render
from flarestream.consumers.auditor import AuditConfig, Auditor
from flarestream.consumers.source_options import (
    add_progress_argument,
    add_source_arguments,
    bootstrap,
    range_spec,
    record_filter,
)
from flarestream.errors import ConfigError, FlarestreamError

# the auditor, importable from here as documented in docs/replay-and-audit.md
__all__ = ["AuditConfig", "Auditor", "add_parser", "run"]

DESCRIPTION = """\
For a topic range and/or an archive, per job, site and sender: records, first and last
sequence number, gaps, duplicates, out-of-order records, undecodable messages; every
archive file against its manifest (size, sha256, rows); with both, a reconciliation: each
record of the topic range in the archive exactly once, by record id and by offset. With
--verify-keys, provenance per site: records signed by the site they claim, unsigned, with
a bad signature, of an unknown site; each record that does not verify is named.

exit codes: 0 everything reconciles; 1 anything missing, doubled, out of order, altered,
undecodable or not signed by its site (--verify-keys); 2 usage (also an unknown topic, a
--from/--to range that holds no message, missing or bad keys)."""


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "audit",
        help="count, check and reconcile what a topic range and/or an archive hold",
        description=DESCRIPTION,
        formatter_class=argparse.RawDescriptionHelpFormatter,
    )
    add_source_arguments(parser, None)
    out = parser.add_argument_group("report")
    out.add_argument(
        "--json", metavar="FILE", default=None, help="write the JSON report (- for stdout)"
    )
    out.add_argument(
        "--max-listed",
        type=int,
        default=1000,
        help="duplicates, out-of-order and undecodable messages listed per source (%(default)s)",
    )
    out.add_argument(
        "--verify-keys",
        metavar="KEYS",
        default=None,
        help="check every record's signature against the sites' public keys (a directory "
        "of <site>.pub files or a JSON keys file) and report provenance per site",
    )
    add_progress_argument(out)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    if args.max_listed < 1:
        raise ConfigError("--max-listed must be >= 1")
    cfg = AuditConfig(
        bootstrap(args),
        args.topic,
        args.archive,
        parse_storage_options(args.archive_storage_option),
        args.archive_topic,
        range_spec(args),
        record_filter(args),
        args.max_listed,
        args.progress,
        args.verify_keys,
    )
    auditor = Auditor(cfg)  # checks the options before anything is read or written
    report_file = None
    if args.json and args.json != "-":
        try:  # before the audit: an unwritable path should not cost a long run
            report_file = open(args.json, "w", encoding="utf-8")  # noqa: SIM115
        except OSError as exc:
            raise ConfigError(
                f"cannot write the JSON report to {args.json}: {exc.strerror}"
            ) from None
    try:
        report = auditor.run()
        if report_file is not None:
            json.dump(report, report_file, indent=1)
    except OSError as exc:  # e.g. an archive root that cannot be listed
        raise FlarestreamError(f"audit stopped: {exc}") from exc
    finally:
        if report_file is not None:
            report_file.close()
    if args.json == "-":
        json.dump(report, sys.stdout, indent=1)
        print()
    else:
        render(report, sys.stdout)
    return 0 if report["ok"] else 1
