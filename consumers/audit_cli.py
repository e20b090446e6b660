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
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any, TextIO

from flarestream.consumers.archive_files import MANIFEST_SUFFIX, ArchiveError
from flarestream.consumers.archive_reader import (
    ArchivedFile,
    ArchiveReader,
    parse_storage_options,
    redacted,
)
from flarestream.consumers.audit import (
    Interval,
    Location,
    OffsetLedger,
    SequenceAudit,
    as_intervals,
    compare_ids,
    interval_size,
)
from flarestream.consumers.progress import Progress
from flarestream.consumers.provenance import ProvenanceAudit, render_provenance
from flarestream.consumers.replay import (
    RangeSpec,
    RecordFilter,
    TopicRange,
    TopicSource,
    Undecodable,
    file_selected,
    merge_rows,
    open_archive,
    row_item,
)
from flarestream.consumers.replay_cli import (
    add_source_arguments,
    bootstrap,
    empty_range_error,
    range_spec,
    record_filter,
)
from flarestream.consumers.sink import Delivered
from flarestream.errors import ConfigError, FlarestreamError
from flarestream.schemas.codec import default_codec
from flarestream.signing import PublicKeys, load_public_keys

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
SHOWN = 20  # entries per section in the table (the JSON report has up to max_listed)


@dataclass
class AuditConfig:
    bootstrap_servers: str
    topic: str | None = None
    archive: str | None = None
    storage_options: dict[str, Any] = field(default_factory=dict)
    archive_topic: str | None = None
    spec: RangeSpec = field(default_factory=RangeSpec)
    filter: RecordFilter = field(default_factory=RecordFilter)
    max_listed: int = 1000
    progress: bool | None = None
    verify_keys: PublicKeys | str | None = None


class Auditor:
    """Runs one audit; :meth:`run` returns the report (a JSON-ready dict)."""

    def __init__(self, cfg: AuditConfig) -> None:
        if cfg.topic is None and cfg.archive is None:
            raise ConfigError("give --topic, --archive or both")
        self.cfg = cfg
        self.topic_seq = SequenceAudit("topic", max_listed=cfg.max_listed)
        self.archive_seq = SequenceAudit("archive", max_listed=cfg.max_listed)
        self.undecodable: dict[str, list[str]] = {"topic": [], "archive": []}
        self.undecodable_count = {"topic": 0, "archive": 0}
        self.file_problems: list[dict[str, str]] = []
        self.files: dict[str, int] = {"complete": 0, "incomplete": 0, "checked": 0}
        self.scope: str | None = None
        self.same_topic = False
        self.ledger: OffsetLedger | None = None
        self.by_offset = {"missing": {}, "altered": {}}  # type: dict[str, dict[int, list[Interval]]]
        self.outside_range = 0
        self.topic_read = 0
        self.notes: list[str] = []
        keys = load_public_keys(cfg.verify_keys)  # bad keys fail here, before any reading
        self.provenance = None if keys is None else ProvenanceAudit(keys, cfg.max_listed)

    # -- running ---------------------------------------------------------------------
    def run(self) -> dict[str, Any]:
        cfg = self.cfg
        source = None
        if cfg.topic is not None:
            source = TopicSource(cfg.bootstrap_servers, cfg.topic, cfg.spec, cfg.filter)
        try:
            if source is not None and cfg.spec.bounded and source.total == 0:
                raise empty_range_error(source)
            if cfg.archive is not None:
                self._archive_pass(source.range if source else None)
            if source is not None:
                self._topic_pass(source)
            return self._report(source)
        finally:
            if source is not None:
                source.close()

    def _list_files(self, reader: ArchiveReader) -> list[ArchivedFile]:
        paths = list(reader.store.walk())
        present = set(paths)
        for p in paths:  # a manifest whose data file is gone: those records are lost
            if p.endswith(MANIFEST_SUFFIX) and p[: -len(MANIFEST_SUFFIX)] not in present:
                self._problem(
                    p[: -len(MANIFEST_SUFFIX)], "data file missing (its manifest is there)"
                )
        try:
            return list(reader.files(include_incomplete=True))
        except ArchiveError:
            pass  # one unreadable manifest ends the listing: go directory by directory
        files: list[ArchivedFile] = []
        for job, site, day in sorted({tuple(p.split("/")[:3]) for p in paths if p.count("/") == 3}):
            try:
                files += reader.files(job, site, day, include_incomplete=True)
            except ArchiveError as exc:
                self._problem(f"{job}/{site}/{day}", str(exc))
        return files

    def _archive_pass(self, topic_range: TopicRange | None) -> None:
        cfg = self.cfg
        with open_archive(cfg.archive or "", cfg.storage_options, default_codec()) as reader:
            files = self._list_files(reader)
            topics = {f.topic for f in files}
            self.scope = cfg.archive_topic or (cfg.topic if cfg.topic in topics else None)
            self.same_topic = cfg.topic is not None and self.scope == cfg.topic
            spec = cfg.spec
            if cfg.topic is not None and not self.same_topic:  # offsets name another topic
                spec = RangeSpec(from_time_ms=spec.from_time_ms, to_time_ms=spec.to_time_ms)
            if self.same_topic and topic_range is not None:
                self.ledger = OffsetLedger(
                    (p.partition, p.start, p.end) for p in topic_range.partitions
                )
            self.files["incomplete"] = sum(1 for f in files if not f.complete)
            chosen = [f for f in files if file_selected(f, spec, cfg.filter, self.scope)]
            self.files["complete"] = sum(1 for f in files if f.complete)
            self.files["checked"] = len(chosen)
            for f in chosen:
                try:
                    for problem in reader.verify(f, deep=False):
                        self._problem(f.path, problem.split(": ", 1)[-1])
                except (OSError, ValueError) as exc:
                    self._problem(f.path, f"cannot be read: {exc}")
            self._archive_rows(reader, chosen, spec, topic_range)

    def _archive_rows(
        self,
        reader: ArchiveReader,
        files: list[ArchivedFile],
        spec: RangeSpec,
        topic_range: TopicRange | None,
    ) -> None:
        counts: dict[str, int] = {}
        codec = default_codec()
        unreadable = set()

        def on_error(f: ArchivedFile, exc: Exception) -> None:
            unreadable.add(f.path)
            self._problem(f.path, f"unreadable after {counts.get(f.path, 0)} rows: {exc}")

        total = sum(f.manifest.record_count for f in files if f.manifest is not None)
        progress = Progress("audit archive", total, enabled=self.cfg.progress)
        for f, row in merge_rows(reader, files, on_error):
            progress.advance()
            counts[f.path] = counts.get(f.path, 0) + 1
            item = row_item(f, row, spec, self.cfg.filter, codec)
            if item is None:
                continue
            if self.same_topic and topic_range is not None:
                pr = topic_range.get(item.partition)
                if pr is None or not pr.start <= item.offset < pr.end:
                    self.outside_range += 1
                    continue
            if isinstance(item, Undecodable):
                self._undecodable("archive", item)
                continue
            r = item.record
            where = Location(item.topic, item.partition, item.offset, f.path)
            self.archive_seq.observe(r.job_id, r.site, r.sender_id, r.seq, where)
            if self.provenance is not None:
                self.provenance.observe("archive", item, str(where))
            if self.ledger is not None:
                self.ledger.add(item.partition, item.offset, item.raw)
        progress.finish()
        for f in files:
            m = f.manifest
            if (
                m is not None
                and f.path not in unreadable
                and counts.get(f.path, 0) != m.record_count
            ):
                self._problem(
                    f.path, f"holds {counts.get(f.path, 0)} rows, manifest says {m.record_count}"
                )

    def _topic_pass(self, source: TopicSource) -> None:
        progress = Progress("audit topic", source.total, enabled=self.cfg.progress)
        try:
            for batch in source.batches():
                self.topic_read += batch.read
                progress.advance(batch.read)
                for item in batch.items:
                    if isinstance(item, Delivered):
                        self._topic_record(item)
                    else:
                        self._undecodable("topic", item)
        finally:
            progress.finish()

    def _topic_record(self, d: Delivered) -> None:
        r = d.record
        where = Location(d.topic, d.partition, d.offset)
        self.topic_seq.observe(r.job_id, r.site, r.sender_id, r.seq, where)
        if self.provenance is not None:
            self.provenance.observe("topic", d, str(where))
        if self.ledger is not None:
            verdict = self.ledger.match(d.partition, d.offset, d.raw)
            if verdict != "ok":
                spans = self.by_offset[verdict].setdefault(d.partition, [])
                if spans and spans[-1][1] == d.offset - 1:
                    spans[-1] = (spans[-1][0], d.offset)
                else:
                    spans.append((d.offset, d.offset))

    def _undecodable(self, source: str, u: Undecodable) -> None:
        self.undecodable_count[source] += 1
        if len(self.undecodable[source]) < self.cfg.max_listed:
            self.undecodable[source].append(f"{u.where}: {u.reason}")

    def _problem(self, path: str, problem: str) -> None:
        self.file_problems.append({"path": path, "problem": problem})

    # -- the report ------------------------------------------------------------------
    def _report(self, source: TopicSource | None) -> dict[str, Any]:
        cfg = self.cfg
        topic_range = source.range if source else None
        gaps_checked = not cfg.filter.tags
        if not gaps_checked:
            self.notes.append("gaps not computed: --tag leaves out records of the same senders")
        from_start = {
            "topic": bool(topic_range and topic_range.from_start),
            "archive": (
                topic_range.from_start
                if self.same_topic and topic_range
                else cfg.spec.from_time_ms is None and not cfg.spec.from_offset
            ),
        }
        senders, problems = [], {}
        for audit in (self.topic_seq, self.archive_seq):
            src = audit.source
            if (src == "topic" and source is None) or (src == "archive" and cfg.archive is None):
                continue
            missing = 0
            for s in audit.sorted_senders():
                gaps = s.gaps(from_start[src]) if gaps_checked else []
                missing += interval_size(gaps)
                senders.append(
                    {
                        "source": src,
                        "job_id": s.job_id,
                        "site": s.site,
                        "sender_id": s.sender_id,
                        "records": s.records,
                        "first_seq": s.seqs.min,
                        "last_seq": s.seqs.max,
                        "gaps": [list(g) for g in gaps],
                        "missing": interval_size(gaps),
                        "duplicates": s.duplicates,
                        "out_of_order": s.out_of_order,
                    }
                )
            problems[f"{src}.gaps"] = missing
            problems[f"{src}.duplicates"] = sum(s.duplicates for s in audit.senders.values())
            problems[f"{src}.out_of_order"] = sum(s.out_of_order for s in audit.senders.values())
            problems[f"{src}.undecodable"] = self.undecodable_count[src]
            if self.provenance is not None:
                problems[f"{src}.provenance"] = self.provenance.failed(src)
        if cfg.archive is not None:
            problems["archive.file_problems"] = len(self.file_problems)
        reconciliation = self._reconcile(source, problems) if source and cfg.archive else None
        report = {
            "ok": not any(problems.values()),  # reconciliation added its problems above
            "problems": problems,
            "topic": _topic_json(source, self.topic_read, self.topic_seq.records),
            "archive": None
            if cfg.archive is None
            else {
                "root": redacted(cfg.archive, {})[0],
                "scope_topic": self.scope,
                **self.files,
                "records": self.archive_seq.records,
                "outside_topic_range": self.outside_range,
                "problems": self.file_problems,
            },
            "senders": senders,
            "duplicates": [
                {
                    "source": a.source,
                    "record_id": d.record_id,
                    "first": str(d.first) if d.first else None,
                    "again": str(d.again),
                }
                for a in (self.topic_seq, self.archive_seq)
                for d in a.duplicates
            ],
            "out_of_order": [
                {
                    "source": a.source,
                    "record_id": o.record_id,
                    "after_seq": o.after_seq,
                    "where": str(o.where),
                }
                for a in (self.topic_seq, self.archive_seq)
                for o in a.out_of_order
            ],
            "undecodable": [
                {"source": k, "where": w} for k, v in self.undecodable.items() for w in v
            ],
            "reconciliation": reconciliation,
            "provenance": None if self.provenance is None else self.provenance.report(),
            "notes": self.notes,
        }
        return report

    def _reconcile(self, source: TopicSource, problems: dict[str, int]) -> dict[str, Any]:
        to_archive = compare_ids(self.topic_seq, self.archive_seq)
        to_topic = compare_ids(self.archive_seq, self.topic_seq)
        whole = source.range.whole_topic
        strict = self.same_topic or whole
        missing = _id_list(to_archive)
        only_archive = _id_list(to_topic)
        doubled = [
            {"record_id": f"{d.sender_id}-{seq}", "topic": t, "archive": a}
            for d in to_archive
            for seq, t, a in d.extra
        ]
        fewer = [
            {"record_id": f"{d.sender_id}-{seq}", "topic": t, "archive": a}
            for d in to_topic
            for seq, a, t in d.extra
        ]
        counts = {
            "missing_from_archive": sum(m["count"] for m in missing),
            "doubled_in_archive": len(doubled),
            "fewer_copies_in_archive": len(fewer),
            "not_in_topic": sum(m["count"] for m in only_archive),
        }
        for key, n in counts.items():
            problems[f"reconcile.{key}"] = n if key != "not_in_topic" or strict else 0
        if not strict and only_archive:
            self.notes.append(
                f"{counts['not_in_topic']} archived records are not in the topic range; not a "
                "failure because the range is not the whole topic"
            )
        by_offset, cap = None, self.cfg.max_listed
        if self.ledger is not None:
            unmatched = as_intervals_by_partition(self.ledger.unmatched())
            by_offset = {
                "missing_from_archive": _spans(self.by_offset["missing"]),
                "altered_in_archive": _spans(self.by_offset["altered"]),
                "held_twice": [f"{source.topic}[{p}]@{o}" for p, o in self.ledger.doubled[:cap]],
                "not_in_topic": _spans(unmatched),
            }
            counts["offsets_missing"] = _count(self.by_offset["missing"])
            counts["offsets_altered"] = _count(self.by_offset["altered"])
            counts["offsets_held_twice"] = len(self.ledger.doubled)
            counts["offsets_not_in_topic"] = _count(unmatched)
            for key in ("offsets_missing", "offsets_altered", "offsets_held_twice"):
                problems[f"reconcile.{key}"] = counts[key]
            problems["reconcile.offsets_not_in_topic"] = counts["offsets_not_in_topic"]
        else:
            self.notes.append(
                f"offsets not compared: the archive's records are of topic {self.scope!r}"
                if self.scope
                else "offsets not compared: the archive holds other topics"
            )
        return {
            "archive_scope": self.scope,
            "counts": counts,
            "by_record_id": {
                "missing_from_archive": missing[:cap],
                "doubled_in_archive": doubled[:cap],
                "fewer_copies_in_archive": fewer[:cap],
                "not_in_topic": only_archive[:cap],
                "not_in_topic_is_failure": strict,
            },
            "by_offset": by_offset,
        }


def as_intervals_by_partition(pairs: Iterator[tuple[int, int]]) -> dict[int, list[Interval]]:
    by: dict[int, list[int]] = {}
    for p, o in pairs:
        by.setdefault(p, []).append(o)
    return {p: as_intervals(sorted(v)) for p, v in by.items()}


def _count(spans: dict[int, list[Interval]]) -> int:
    return sum(interval_size(v) for v in spans.values())


def _spans(spans: dict[int, list[Interval]]) -> list[dict[str, Any]]:
    return [
        {"partition": p, "offsets": [list(i) for i in v]} for p, v in sorted(spans.items()) if v
    ]


def _id_list(diffs: list[Any]) -> list[dict[str, Any]]:
    return [
        {
            "job_id": d.job_id,
            "site": d.site,
            "sender_id": d.sender_id,
            "seqs": [list(i) for i in d.missing],
            "count": interval_size(d.missing),
        }
        for d in diffs
        if d.missing
    ]


def _topic_json(source: TopicSource | None, read: int, records: int) -> dict[str, Any] | None:
    if source is None:
        return None
    return {
        "name": source.topic,
        "bootstrap": source.bootstrap_servers,
        "messages_read": read,
        "records": records,
        "whole_topic": source.range.whole_topic,
        "partitions": [
            {"partition": p.partition, "start": p.start, "end": p.end, "low": p.low, "high": p.high}
            for p in source.range.partitions
        ],
    }


# -- the table ---------------------------------------------------------------------------
def _seqs(spans: list[list[int]]) -> str:
    return ", ".join(f"{a}" if a == b else f"{a}..{b}" for a, b in spans[:10]) + (
        ", ..." if len(spans) > 10 else ""
    )


def _ids(sender: str, spans: list[list[int]]) -> str:
    """Record ids of sequence intervals: ``s-5``, ``s-7..s-9``."""
    return ", ".join(
        f"{sender}-{a}" if a == b else f"{sender}-{a}..{sender}-{b}" for a, b in spans[:10]
    ) + (", ..." if len(spans) > 10 else "")


def _section(out: TextIO, title: str, lines: list[str]) -> None:
    if lines:
        print(f"\n{title} ({len(lines)}{'+' if len(lines) >= 1000 else ''})", file=out)
        for line in lines[:SHOWN]:
            print(f"  {line}", file=out)
        if len(lines) > SHOWN:
            print(f"  ... {len(lines) - SHOWN} more in the JSON report (--json FILE)", file=out)


def render(report: dict[str, Any], out: TextIO) -> None:
    """The report as a readable table and sections."""
    t, a = report["topic"], report["archive"]
    print("flarestream audit", file=out)
    if t:
        parts = " ".join(f"{p['partition']}:[{p['start']},{p['end']})" for p in t["partitions"])
        print(f"  topic {t['name']!r}: {t['messages_read']} messages, offsets {parts}", file=out)
    if a:
        print(
            f"  archive {a['root']}: {a['complete']} complete files ({a['checked']} in scope, "
            f"{a['incomplete']} incomplete), {a['records']} records in scope",
            file=out,
        )
    header = (
        "SOURCE",
        "JOB",
        "SITE",
        "SENDER",
        "RECORDS",
        "FIRST",
        "LAST",
        "MISSING",
        "DUPLICATES",
        "OUT-OF-ORDER",
    )
    rows = [header] + [
        (
            s["source"],
            s["job_id"],
            s["site"],
            s["sender_id"],
            str(s["records"]),
            str(s["first_seq"]),
            str(s["last_seq"]),
            str(s["missing"]),
            str(s["duplicates"]),
            str(s["out_of_order"]),
        )
        for s in report["senders"]
    ]
    widths = [max(len(r[i]) for r in rows) for i in range(len(header))]
    print(file=out)
    for r in rows:
        print("  ".join(c.ljust(w) for c, w in zip(r, widths, strict=True)).rstrip(), file=out)
    _section(
        out,
        "Gaps",
        [
            f"{s['source']}: {s['job_id']}/{s['site']}: missing {_ids(s['sender_id'], s['gaps'])}"
            for s in report["senders"]
            if s["gaps"]
        ],
    )
    _section(
        out,
        "Duplicates",
        [
            f"{d['source']}: record {d['record_id']} at {d['first'] or '(earlier)'} "
            f"and again at {d['again']}"
            for d in report["duplicates"]
        ],
    )
    _section(
        out,
        "Out of order",
        [
            f"{o['source']}: record {o['record_id']} after seq {o['after_seq']} at {o['where']}"
            for o in report["out_of_order"]
        ],
    )
    _section(out, "Undecodable", [f"{u['source']}: {u['where']}" for u in report["undecodable"]])
    if report.get("provenance"):
        render_provenance(report["provenance"], out, SHOWN)
    if a:
        _section(
            out,
            "Archive files that do not match their manifest",
            [f"{p['path']}: {p['problem']}" for p in a["problems"]],
        )
    rec = report["reconciliation"]
    if rec:
        _render_reconciliation(rec, out)
    for note in report["notes"]:
        print(f"\nnote: {note}", file=out)
    failed = {k: v for k, v in report["problems"].items() if v}
    verdict = (
        "OK: everything reconciles"
        if report["ok"]
        else "FAILED: " + ", ".join(f"{k} {v}" for k, v in failed.items())
    )
    print(f"\nRESULT: {verdict}", file=out)


def _render_reconciliation(rec: dict[str, Any], out: TextIO) -> None:
    ids, n = rec["by_record_id"], rec["counts"]
    print("\nReconciliation (topic vs archive)", file=out)
    print(
        f"  by record id: {n['missing_from_archive']} missing from the archive, "
        f"{n['doubled_in_archive']} doubled in the archive, {n['fewer_copies_in_archive']} "
        f"with fewer copies in the archive, {n['not_in_topic']} only in the archive",
        file=out,
    )
    for m in ids["missing_from_archive"][:SHOWN]:
        print(f"    missing from archive: {_ids(m['sender_id'], m['seqs'])}", file=out)
    for m in ids["doubled_in_archive"][:SHOWN]:
        print(
            f"    doubled in archive: {m['record_id']} ({m['archive']}x, topic {m['topic']}x)",
            file=out,
        )
    for m in ids["not_in_topic"][:SHOWN]:
        print(f"    only in archive: {_ids(m['sender_id'], m['seqs'])}", file=out)
    off = rec["by_offset"]
    if off:
        print(
            f"  by offset: {n['offsets_missing']} missing from the archive, "
            f"{n['offsets_altered']} altered in the archive, {n['offsets_held_twice']} held "
            f"twice, {n['offsets_not_in_topic']} archived but not in the topic",
            file=out,
        )
        for key, label in (
            ("missing_from_archive", "missing from archive"),
            ("altered_in_archive", "altered in archive"),
            ("not_in_topic", "archived but not in topic"),
        ):
            for s in off[key][:SHOWN]:
                print(
                    f"    by offset, {label}: partition {s['partition']} "
                    f"offsets {_seqs(s['offsets'])}",
                    file=out,
                )
        for w in off["held_twice"][:SHOWN]:
            print(f"    by offset, held twice in archive: {w}", file=out)


# -- command line ------------------------------------------------------------------------
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
    out.add_argument(
        "--progress",
        action=argparse.BooleanOptionalAction,
        default=None,
        help="progress bar on stderr (default: when stderr is a terminal)",
    )
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
