"""The audit report as a readable table and sections (``flarestream audit`` without
``--json -``). Each section lists its first :data:`SHOWN` entries and says how many
more the JSON report holds; the last line is the verdict.
"""

from __future__ import annotations

from typing import Any, TextIO

from flarestream.consumers.provenance import render_provenance

SHOWN = 20  # entries per section in the table (the JSON report has up to max_listed)


def _spans_text(spans: list[list[int]], prefix: str = "") -> str:
    """The first 10 inclusive intervals as text: ``5, 7..9``; with ``prefix`` (a sender
    and ``-``), record ids: ``s-5, s-7..s-9``."""
    return ", ".join(
        f"{prefix}{a}" if a == b else f"{prefix}{a}..{prefix}{b}" for a, b in spans[:10]
    ) + (", ..." if len(spans) > 10 else "")


def _ids(sender: str, spans: list[list[int]]) -> str:
    """Record ids of sequence intervals: ``s-5``, ``s-7..s-9``."""
    return _spans_text(spans, f"{sender}-")


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
                    f"offsets {_spans_text(s['offsets'])}",
                    file=out,
                )
        for w in off["held_twice"][:SHOWN]:
            print(f"    by offset, held twice in archive: {w}", file=out)
