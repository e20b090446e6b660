"""The audit report: an :class:`~flarestream.consumers.auditor.Auditor`'s findings as
one JSON-ready dict (what ``--json`` writes and the table shows).

Lists are bounded by ``max_listed``; every count is exact. ``problems`` maps each
check (``topic.gaps``, ``archive.file_problems``, ``reconcile.offsets_missing``, ...)
to how many failed it, and ``ok`` is True only when all are zero.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

from flarestream.consumers.archive_reader import redacted
from flarestream.consumers.audit import Interval, as_intervals, compare_ids, interval_size
from flarestream.consumers.topic_source import TopicSource

if TYPE_CHECKING:  # the auditor calls build_report: a runtime import would be circular
    from flarestream.consumers.auditor import Auditor


def build_report(auditor: Auditor, source: TopicSource | None) -> dict[str, Any]:
    """The audit's findings as a JSON-ready report: ``ok`` is True only when every
    count in ``problems`` is zero. Notes on what was not checked are added to
    ``auditor.notes``."""
    cfg = auditor.cfg
    topic_range = source.range if source else None
    gaps_checked = not cfg.filter.tags
    if not gaps_checked:
        auditor.notes.append("gaps not computed: --tag leaves out records of the same senders")
    from_start = {
        "topic": bool(topic_range and topic_range.from_start),
        "archive": (
            topic_range.from_start
            if auditor.same_topic and topic_range
            else cfg.spec.from_time_ms is None and not cfg.spec.from_offset
        ),
    }
    senders, problems = [], {}
    for audit in (auditor.topic_seq, auditor.archive_seq):
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
        problems[f"{src}.undecodable"] = auditor.undecodable_count[src]
        if auditor.provenance is not None:
            problems[f"{src}.provenance"] = auditor.provenance.failed(src)
    if cfg.archive is not None:
        problems["archive.file_problems"] = len(auditor.file_problems)
    reconciliation = _reconcile(auditor, source, problems) if source and cfg.archive else None
    report = {
        "ok": not any(problems.values()),  # reconciliation added its problems above
        "problems": problems,
        "topic": _topic_json(source, auditor.topic_read, auditor.topic_seq.records),
        "archive": None
        if cfg.archive is None
        else {
            "root": redacted(cfg.archive, {})[0],
            "scope_topic": auditor.scope,
            **auditor.files,
            "records": auditor.archive_seq.records,
            "outside_topic_range": auditor.outside_range,
            "problems": auditor.file_problems,
        },
        "senders": senders,
        "duplicates": [
            {
                "source": a.source,
                "record_id": d.record_id,
                "first": str(d.first) if d.first else None,
                "again": str(d.again),
            }
            for a in (auditor.topic_seq, auditor.archive_seq)
            for d in a.duplicates
        ],
        "out_of_order": [
            {
                "source": a.source,
                "record_id": o.record_id,
                "after_seq": o.after_seq,
                "where": str(o.where),
            }
            for a in (auditor.topic_seq, auditor.archive_seq)
            for o in a.out_of_order
        ],
        "undecodable": [
            {"source": k, "where": w} for k, v in auditor.undecodable.items() for w in v
        ],
        "reconciliation": reconciliation,
        "provenance": None if auditor.provenance is None else auditor.provenance.report(),
        "notes": auditor.notes,
    }
    return report


def _reconcile(auditor: Auditor, source: TopicSource, problems: dict[str, int]) -> dict[str, Any]:
    """Topic range vs archive, by record id and (same topic) by offset; adds its
    problem counts to ``problems``."""
    to_archive = compare_ids(auditor.topic_seq, auditor.archive_seq)
    to_topic = compare_ids(auditor.archive_seq, auditor.topic_seq)
    whole = source.range.whole_topic
    strict = auditor.same_topic or whole
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
        auditor.notes.append(
            f"{counts['not_in_topic']} archived records are not in the topic range; not a "
            "failure because the range is not the whole topic"
        )
    by_offset, cap = None, auditor.cfg.max_listed
    if auditor.ledger is not None:
        unmatched = as_intervals_by_partition(auditor.ledger.unmatched())
        by_offset = {
            "missing_from_archive": _spans(auditor.by_offset["missing"]),
            "altered_in_archive": _spans(auditor.by_offset["altered"]),
            "held_twice": [f"{source.topic}[{p}]@{o}" for p, o in auditor.ledger.doubled[:cap]],
            "not_in_topic": _spans(unmatched),
        }
        counts["offsets_missing"] = _count(auditor.by_offset["missing"])
        counts["offsets_altered"] = _count(auditor.by_offset["altered"])
        counts["offsets_held_twice"] = len(auditor.ledger.doubled)
        counts["offsets_not_in_topic"] = _count(unmatched)
        for key in ("offsets_missing", "offsets_altered", "offsets_held_twice"):
            problems[f"reconcile.{key}"] = counts[key]
        problems["reconcile.offsets_not_in_topic"] = counts["offsets_not_in_topic"]
    else:
        auditor.notes.append(
            f"offsets not compared: the archive's records are of topic {auditor.scope!r}"
            if auditor.scope
            else "offsets not compared: the archive holds other topics"
        )
    return {
        "archive_scope": auditor.scope,
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
