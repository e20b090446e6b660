"""``flarestream audit`` against a real broker and a real archive: each kind of damage
is found and named, a clean copy reconciles, bad input is a usage error."""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import pytest
from confluent_kafka import Producer

from flarestream.consumers import LoopConfig, run_sink
from flarestream.consumers.archive import ArchiveSink
from flarestream.consumers.archive_files import MANIFEST_SUFFIX
from flarestream.producer import AnalyticsSender
from flarestream.schemas import AnalyticsDataType, Codec, Record

pytestmark = pytest.mark.integration

JOB = "job-audit"
T0 = 1_700_000_000_000


def record(site: str, sender: str, seq: int) -> bytes:
    codec = Codec()
    return codec.encode(
        Record(
            site, JOB, sender, seq, T0 + seq, "loss", AnalyticsDataType.SCALAR, seq / 4, step=seq
        )
    )


def produce(bootstrap: str, topic: str, messages: list[tuple[str, bytes]]) -> None:
    """(site, value) messages in order, keyed by site, all on partition 0."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for site, value in messages:
        producer.produce(topic, value, site.encode(), partition=0)
    assert producer.flush(30) == 0


def archive(bootstrap: str, topic: str, root: Path) -> None:
    config = LoopConfig(
        bootstrap_servers=bootstrap,
        topic=topic,
        group=f"archive-{uuid.uuid4().hex}",
        until_end=True,
        flush_interval_s=0.5,
    )
    run_sink(ArchiveSink(root, max_age_s=0.5), config, handle_signals=False)


def audit(run_cli, bootstrap: str, tmp_path: Path, *args: str) -> tuple[int, str, dict]:
    report = tmp_path / f"report-{uuid.uuid4().hex[:6]}.json"
    result = run_cli("audit", "--bootstrap-servers", bootstrap, *args, "--json", str(report))
    assert "Traceback" not in result.err + result.out
    return result.rc, result.out, json.loads(report.read_text()) if report.exists() else {}


def test_gap_duplicate_undecodable_and_altered_file_are_each_found_by_name(
    kafka_bootstrap: str, topic: str, tmp_path: Path, run_cli
) -> None:
    clean = [("site-1", record("site-1", "clean", s)) for s in range(10)]
    gapped = [("site-2", record("site-2", "gapped", s)) for s in range(10) if s != 6]
    doubled = [("site-3", record("site-3", "doubled", s)) for s in range(5)]
    doubled.append(doubled[2])  # the same bytes produced twice
    produce(kafka_bootstrap, topic, [*clean, *gapped, *doubled, ("site-1", b"not a record")])
    root = tmp_path / "archive"
    archive(kafka_bootstrap, topic, root)

    rc, out, before = audit(run_cli, kafka_bootstrap, tmp_path, "--topic", topic)
    assert rc == 1
    assert {k for k, v in before["problems"].items() if v} == {
        "topic.gaps", "topic.duplicates", "topic.undecodable"
    }  # fmt: skip

    altered = next((root / JOB / "site-1").rglob("*.avro"))
    data = bytearray(altered.read_bytes())
    data[len(data) // 2] ^= 0x01  # one bit, after the file and its manifest were written
    altered.write_bytes(bytes(data))
    rc, out, report = audit(
        run_cli, kafka_bootstrap, tmp_path, "--topic", topic, "--archive", str(root)
    )

    assert rc == 1
    gaps = {(s["source"], s["sender_id"]): s["gaps"] for s in report["senders"] if s["gaps"]}
    assert gaps == {("topic", "gapped"): [[6, 6]], ("archive", "gapped"): [[6, 6]]}
    assert "missing gapped-6" in out
    dupes = [(d["source"], d["record_id"], d["first"], d["again"]) for d in report["duplicates"]]
    assert ("topic", "doubled-2", f"{topic}[0]@21", f"{topic}[0]@24") in dupes
    assert "record doubled-2" in out
    assert [u["where"] for u in report["undecodable"]] == [
        f"{topic}[0]@25: message does not start with the Avro single-object marker "
        "C3 01 (got 6e 6f)"
    ]
    assert f"{topic}[0]@25" in out
    rel = altered.relative_to(root).as_posix()
    assert {"path": rel, "problem": "sha256 differs from the manifest"} in report["archive"][
        "problems"
    ]
    assert f"{rel}: sha256 differs from the manifest" in out
    assert report["problems"]["archive.file_problems"] >= 1 and not report["ok"]
    assert "RESULT: FAILED" in out


def test_topic_and_its_archive_reconcile_by_offset_and_record_id(
    kafka_bootstrap: str, topic: str, tmp_path: Path, run_cli
) -> None:
    for site in ("site-1", "site-2"):
        with AnalyticsSender(
            site=site, job_id=JOB, bootstrap_servers=kafka_bootstrap, topic=topic
        ) as s:
            for step in range(25):
                s.add_scalar("loss", step / 3, global_step=step)
    root = tmp_path / "archive"
    archive(kafka_bootstrap, topic, root)

    rc, out, report = audit(
        run_cli, kafka_bootstrap, tmp_path, "--topic", topic, "--archive", str(root)
    )

    assert rc == 0, out
    assert "RESULT: OK: everything reconciles" in out
    rec = report["reconciliation"]
    assert rec["by_offset"] == {
        "missing_from_archive": [], "altered_in_archive": [], "held_twice": [], "not_in_topic": []
    }  # fmt: skip
    counts = [(s["source"], s["records"], s["first_seq"], s["last_seq"]) for s in report["senders"]]
    assert counts == [
        ("topic", 25, 0, 24), ("topic", 25, 0, 24), ("archive", 25, 0, 24), ("archive", 25, 0, 24)
    ]  # fmt: skip


def test_deleted_archive_file_shows_as_missing_records_and_offsets(
    kafka_bootstrap: str, topic: str, tmp_path: Path, run_cli
) -> None:
    produce(kafka_bootstrap, topic, [("site-1", record("site-1", "s1", n)) for n in range(8)])
    produce(kafka_bootstrap, topic, [("site-2", record("site-2", "s2", n)) for n in range(4)])
    root = tmp_path / "archive"
    archive(kafka_bootstrap, topic, root)
    [data] = (root / JOB / "site-2").rglob("*.avro")
    data.unlink()  # the manifest stays: the file was lost, not never written

    rc, _, report = audit(
        run_cli, kafka_bootstrap, tmp_path, "--topic", topic, "--archive", str(root)
    )

    assert rc == 1
    ids = report["reconciliation"]["by_record_id"]["missing_from_archive"]
    assert [(m["sender_id"], m["seqs"]) for m in ids] == [("s2", [[0, 3]])]
    assert report["reconciliation"]["by_offset"]["missing_from_archive"] == [
        {"partition": 0, "offsets": [[8, 11]]}
    ]
    problems = report["archive"]["problems"]
    assert problems == [
        {
            "path": data.relative_to(root).as_posix(),
            "problem": "data file missing (its manifest is there)",
        }
    ]
    assert (data.parent / (data.name + MANIFEST_SUFFIX)).exists()


def test_archive_alone_reports_what_it_holds_per_job_and_site(
    kafka_bootstrap: str, topic: str, tmp_path: Path, run_cli
) -> None:
    late = record("site-1", "late", 3)
    msgs = [("site-1", record("site-1", "late", n)) for n in (0, 1, 2, 4, 5)] + [("site-1", late)]
    produce(kafka_bootstrap, topic, msgs)
    root = tmp_path / "archive"
    archive(kafka_bootstrap, topic, root)

    rc, out, report = audit(run_cli, kafka_bootstrap, tmp_path, "--archive", str(root))

    assert rc == 1
    assert report["topic"] is None and report["reconciliation"] is None
    [sender] = report["senders"]
    assert (sender["source"], sender["job_id"], sender["site"]) == ("archive", JOB, "site-1")
    assert (sender["records"], sender["missing"], sender["out_of_order"]) == (6, 0, 1)
    assert report["out_of_order"][0]["record_id"] == "late-3"
    assert "late-3 after seq 5" in out


def test_usage_errors_exit_2_with_a_message(
    kafka_bootstrap: str, topic: str, tmp_path: Path, run_cli
) -> None:
    produce(kafka_bootstrap, topic, [("site-1", record("site-1", "u", 0))])
    base = ("audit", "--bootstrap-servers", kafka_bootstrap)

    nothing = run_cli(*base)
    assert nothing.rc == 2 and "--topic, --archive or both" in nothing.err
    unknown = run_cli(*base, "--topic", f"missing-{uuid.uuid4().hex}")
    assert unknown.rc == 2 and "does not exist" in unknown.err
    window = run_cli(
        *base, "--topic", topic, "--from-time", "1999-01-01", "--to-time", "1999-01-02"
    )
    assert window.rc == 2 and "no message of topic" in window.err
    bad_time = run_cli(*base, "--topic", topic, "--from-time", "yesterday")
    assert bad_time.rc == 2 and "cannot read time 'yesterday'" in bad_time.err
    for r in (nothing, unknown, window, bad_time):
        assert "Traceback" not in r.err
