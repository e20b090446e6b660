"""Record provenance against a real broker: sites sign, consumers verify.

Two sites with their own keys send honest records; site A also forges records that
claim to be site B (a sender for "site-b" holding A's key, as a compromised site A
could run), and a keyless sender sends unsigned records. A sink started with
``--verify-keys`` must take only the honest records; the forged and unsigned ones go
to the dead-letter topic with the reason; ``flarestream audit --verify-keys`` reports
provenance per site, names every forged record and exits 1; the archive keeps the
signatures, so the archive verifies later on its own.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from flarestream.consumers import LoopConfig, run_sink
from flarestream.consumers.archive import ArchiveSink
from flarestream.consumers.archive_reader import ArchiveReader
from flarestream.deploy import create_topic
from flarestream.producer import AnalyticsSender
from flarestream.schemas import default_codec
from flarestream.signing import SIGNATURE_HEADER, PublicKeys, Verdict, write_key_pair

pytestmark = pytest.mark.integration

JOB = "job-provenance"
HONEST = {"site-a": 30, "site-b": 25}
FORGED, UNSIGNED = 4, 3


def send(bootstrap: str, topic: str, site: str, key: Path | None, n: int, value: float) -> None:
    with AnalyticsSender(site=site, job_id=JOB, bootstrap_servers=bootstrap, topic=topic,
                         signing_key=key) as s:  # fmt: skip
        for i in range(n):
            s.add_scalar("loss", value + i, global_step=i)


@pytest.fixture
def keys(tmp_path: Path) -> Path:
    for site in HONEST:
        write_key_pair(tmp_path / "keys", site)
    return tmp_path / "keys"


@pytest.fixture
def mixed_topic(kafka_bootstrap: str, topic: str, keys: Path) -> str:
    """Honest records of both sites, A's forgeries claiming B, unsigned records."""
    for site, n in HONEST.items():
        send(kafka_bootstrap, topic, site, keys / f"{site}.key", n, 1.0)
    send(kafka_bootstrap, topic, "site-b", keys / "site-a.key", FORGED, 666.0)  # A forges B
    send(kafka_bootstrap, topic, "site-a", None, UNSIGNED, 999.0)  # nobody signed
    return topic


def topic_messages(bootstrap: str, topic: str) -> list[Any]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}"})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts])
        out: list[Any] = []
        while len(out) < sum(ends.values()):
            out += [m for m in consumer.consume(500, 2) if m.error() is None]
        return out
    finally:
        consumer.close()


def drain_archive(bootstrap: str, topic: str, root: Path, keys: Path) -> Any:
    config = LoopConfig(
        bootstrap_servers=bootstrap, topic=topic, group=f"g-{uuid.uuid4().hex}",
        until_end=True, flush_interval_s=0.5, verify_keys=keys,
    )  # fmt: skip
    return run_sink(ArchiveSink(root, max_age_s=0.5), config, handle_signals=False)


def test_forged_and_unsigned_records_go_to_the_dlq_and_honest_ones_to_the_sink(
    kafka_bootstrap: str, mixed_topic: str, keys: Path, tmp_path: Path
) -> None:
    stats = drain_archive(kafka_bootstrap, mixed_topic, tmp_path / "archive", keys)
    assert (stats.consumed, stats.dead_lettered) == (sum(HONEST.values()) + FORGED + UNSIGNED,
                                                     FORGED + UNSIGNED)  # fmt: skip
    public = PublicKeys.load(keys)
    with ArchiveReader(tmp_path / "archive") as reader:
        archived = list(reader.all_records(job_id=JOB))
    by_site: dict[str, list[float]] = {}
    for rec in archived:
        by_site.setdefault(rec.record.site, []).append(rec.record.value)
        # the archive keeps the signature: it verifies later, without the topic
        assert public.check(rec.record.site, rec.raw, rec.headers) is Verdict.VERIFIED
    assert {s: sorted(v) for s, v in by_site.items()} == {
        s: [1.0 + i for i in range(n)] for s, n in HONEST.items()
    }
    dlq = topic_messages(kafka_bootstrap, f"{mixed_topic}.dlq")
    errors = []
    for m in dlq:
        headers = dict(m.headers() or [])
        record = default_codec().decode(m.value())
        errors.append((record.site, record.value, headers["flarestream.dlq.error"].decode()))
        if record.value >= 666.0 and record.value < 999.0:  # forged: kept its signature
            assert SIGNATURE_HEADER in headers
    forged = [e for e in errors if 666.0 <= e[1] < 999.0]
    unsigned = [e for e in errors if e[1] >= 999.0]
    assert len(forged) == FORGED and len(unsigned) == UNSIGNED and len(errors) == len(dlq)
    for site, _, error in forged:
        assert site == "site-b"
        assert error.startswith("signature does not verify for site 'site-b'")
        assert "key of site 'site-a'" in error
    for site, _, error in unsigned:
        assert site == "site-a" and error.startswith("unsigned")


def test_audit_reports_provenance_per_site_and_names_each_forged_record(
    kafka_bootstrap: str, mixed_topic: str, keys: Path, tmp_path: Path, run_cli: Any
) -> None:
    report_path = tmp_path / "report.json"
    result = run_cli("audit", "--bootstrap-servers", kafka_bootstrap, "--topic", mixed_topic,
                     "--verify-keys", str(keys), "--json", str(report_path))  # fmt: skip
    assert result.rc == 1, result.err
    report = json.loads(report_path.read_text())
    assert report["problems"]["topic.provenance"] == FORGED + UNSIGNED
    rows = {s["site"]: s for s in report["provenance"]["sites"]}
    assert rows["site-a"] | {"source": "topic"} == {
        "source": "topic", "site": "site-a", "verified": HONEST["site-a"],
        "unsigned": UNSIGNED, "bad_signature": 0, "unknown_signer": 0,
    }  # fmt: skip
    assert (rows["site-b"]["verified"], rows["site-b"]["bad_signature"]) == (HONEST["site-b"],
                                                                             FORGED)  # fmt: skip
    codec = default_codec()
    forged_at = {
        f"{m.topic()}[{m.partition()}]@{m.offset()}"
        for m in topic_messages(kafka_bootstrap, mixed_topic)
        if 666.0 <= codec.decode(m.value()).value < 999.0
    }
    named = [f for f in report["provenance"]["failures"] if f["verdict"] == "bad_signature"]
    assert {f["where"] for f in named} == forged_at
    assert all((f["site"], f["signed_by"]) == ("site-b", "site-a") for f in named)
    # the text report names them too
    text = run_cli("audit", "--bootstrap-servers", kafka_bootstrap, "--topic", mixed_topic,
                   "--verify-keys", str(keys))  # fmt: skip
    assert text.rc == 1 and "Provenance" in text.out
    for where in forged_at:
        assert where in text.out
    assert "key of site 'site-a'" in text.out and "topic.provenance 7" in text.out


def test_archive_keeps_signatures_so_it_and_a_topic_restored_from_it_verify(
    kafka_bootstrap: str, mixed_topic: str, keys: Path, tmp_path: Path, run_cli: Any
) -> None:
    root = tmp_path / "archive"
    drain_archive(kafka_bootstrap, mixed_topic, root, keys)
    result = run_cli("audit", "--archive", str(root), "--verify-keys", str(keys), "--json", "-")
    assert result.rc == 0, result.out + result.err
    report = json.loads(result.out)
    assert {(s["site"], s["verified"]) for s in report["provenance"]["sites"]} == set(
        HONEST.items()
    )
    assert report["provenance"]["failures"] == []
    restored = f"{mixed_topic}.restored"
    create_topic(kafka_bootstrap, restored, partitions=3, replication_factor=1)
    copy = run_cli("replay", "--bootstrap-servers", kafka_bootstrap, "--archive", str(root),
                   "--to-topic", restored)  # fmt: skip
    assert copy.rc == 0, copy.err
    again = run_cli("audit", "--bootstrap-servers", kafka_bootstrap, "--topic", restored,
                    "--verify-keys", str(keys), "--json", "-")  # fmt: skip
    assert again.rc == 0, again.out + again.err
    verified = {s["site"]: s["verified"] for s in json.loads(again.out)["provenance"]["sites"]}
    assert verified == HONEST


def test_replay_with_verify_keys_passes_on_only_records_of_their_own_site(
    kafka_bootstrap: str, mixed_topic: str, keys: Path, tmp_path: Path, run_cli: Any
) -> None:
    out = tmp_path / "out.jsonl"
    result = run_cli("replay", "--bootstrap-servers", kafka_bootstrap, "--topic", mixed_topic,
                     "--verify-keys", str(keys), "--jsonl", str(out))  # fmt: skip
    assert result.rc == 0, result.err
    lines = [json.loads(line) for line in out.read_text().splitlines()]
    assert sorted((x["site"], x["value"]) for x in lines) == sorted(
        (s, 1.0 + i) for s, n in HONEST.items() for i in range(n)
    )
    assert f"refused {FORGED + UNSIGNED}" in result.err


def test_missing_keys_stop_the_sink_command_before_anything_is_written(
    kafka_bootstrap: str, topic: str, tmp_path: Path, run_cli: Any
) -> None:
    send(kafka_bootstrap, topic, "site-a", None, 3, 1.0)
    root = tmp_path / "archive"
    result = run_cli("sink", "archive", "--root", str(root), "--bootstrap-servers",
                     kafka_bootstrap, "--topic", topic, "--until-end",
                     "--verify-keys", str(tmp_path / "no-such-keys"))  # fmt: skip
    assert result.rc == 2 and "no-such-keys" in result.err
    assert not root.exists()
    audit = run_cli("audit", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
                    "--verify-keys", str(tmp_path / "no-such-keys"))  # fmt: skip
    assert audit.rc == 2 and "no-such-keys" in audit.err
