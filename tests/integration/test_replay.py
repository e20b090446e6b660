"""``flarestream replay`` against a real broker: a time window into TensorBoard, offsets
into JSON Lines, an archive into a new topic, no commits to any group, clear errors."""

from __future__ import annotations

import base64
import json
import math
import time
import uuid
from pathlib import Path

import numpy as np
import pytest
from confluent_kafka import Consumer, TopicPartition
from confluent_kafka.admin import AdminClient
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from flarestream.consumers import LoopConfig, run_sink
from flarestream.consumers.archive import ArchiveSink
from flarestream.consumers.archive_reader import ArchiveReader
from flarestream.consumers.archive_source import ArchiveSource
from flarestream.consumers.replay import replay
from flarestream.consumers.replay_targets import JsonLinesTarget
from flarestream.consumers.tensorboard_sink import TensorBoardSink
from flarestream.consumers.topic_source import REPLAY_GROUP_PREFIX, TopicSource
from flarestream.deploy import create_topic
from flarestream.producer import AnalyticsSender
from flarestream.schemas import AnalyticsDataType

pytestmark = pytest.mark.integration

JOB = "job-replay"


def now_ms() -> int:
    return time.time_ns() // 1_000_000


def send_steps(bootstrap: str, topic: str, steps: range, sites: tuple[str, ...]) -> None:
    """One scalar per step and site; returns once the broker has them all."""
    for site in sites:
        with AnalyticsSender(site=site, job_id=JOB, bootstrap_servers=bootstrap, topic=topic) as s:
            for step in steps:
                s.add_scalar("loss", step / 8, global_step=step)


def between_windows() -> int:
    """A moment strictly between what was sent before and what is sent after."""
    time.sleep(0.05)
    moment = now_ms()
    time.sleep(0.05)
    return moment


def tensorboard_scalars(logdir: Path) -> dict[str, list[tuple[int, float]]]:
    """(step, value) of tag 'loss' per site, read with TensorBoard's own reader."""
    out = {}
    for site_dir in sorted((logdir / JOB).iterdir()):
        acc = EventAccumulator(str(site_dir), size_guidance={"scalars": 0})
        acc.Reload()
        out[site_dir.name] = [(e.step, e.value) for e in acc.Scalars("loss")]
    return out


def drain_archive(bootstrap: str, topic: str, root: Path) -> None:
    sink = ArchiveSink(root, max_age_s=0.5)
    config = LoopConfig(
        bootstrap_servers=bootstrap,
        topic=topic,
        group=f"archive-{uuid.uuid4().hex}",
        until_end=True,
        flush_interval_s=0.5,
    )
    run_sink(sink, config, handle_signals=False)


def raw_messages(bootstrap: str, topic: str) -> list[tuple[bytes | None, bytes, int]]:
    """(key, value, timestamp) of every message of a topic."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}"})
    parts = consumer.list_topics(topic, timeout=30).topics[topic].partitions
    total = 0
    for p in parts:
        total += consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
    consumer.assign([TopicPartition(topic, p, 0) for p in parts])
    out = []
    deadline = time.monotonic() + 60
    while len(out) < total and time.monotonic() < deadline:
        for m in consumer.consume(500, timeout=1):
            if m.error() is None:
                out.append((m.key(), m.value(), m.timestamp()[1]))
    consumer.close()
    assert len(out) == total
    return out


def filled_partition(bootstrap: str, topic: str) -> int:
    """The one partition of a topic that holds messages."""
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"t-{uuid.uuid4().hex}"})
    highs = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(3)}
    c.close()
    [part] = [p for p, high in highs.items() if high]
    return part


def test_time_window_into_fresh_tensorboard_logdir_holds_exactly_that_window(
    kafka_bootstrap: str, topic: str, tmp_path: Path, run_cli
) -> None:
    sites = ("site-1", "site-2")
    send_steps(kafka_bootstrap, topic, range(0, 10), sites)
    start = between_windows()
    send_steps(kafka_bootstrap, topic, range(10, 25), sites)
    end = between_windows()
    send_steps(kafka_bootstrap, topic, range(25, 30), sites)

    start_iso = time.strftime("%Y-%m-%dT%H:%M:%S", time.gmtime(start / 1000))
    start_iso += f".{start % 1000:03d}Z"
    result = run_cli(
        "replay", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
        "--from-time", start_iso, "--to-time", str(end),
        "--sink", "tensorboard", "--logdir", str(tmp_path / "tb"),
    )  # fmt: skip

    assert result.rc == 0, result.err
    expected = [(step, pytest.approx(step / 8)) for step in range(10, 25)]
    assert tensorboard_scalars(tmp_path / "tb") == {site: expected for site in sites}
    assert "replay: 30 records" in result.err  # the final summary line, also without a TTY
    assert "written 30" in result.err


def test_replay_commits_to_no_group_and_stops_at_the_end_seen_at_start(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    send_steps(kafka_bootstrap, topic, range(20), ("site-1",))
    live = f"flarestream.live-{uuid.uuid4().hex[:8]}"
    out = tmp_path / "live.jsonl"
    run_sink(
        JsonLinesTarget(out),
        LoopConfig(bootstrap_servers=kafka_bootstrap, topic=topic, group=live, until_end=True,
                   flush_interval_s=0.5),
        handle_signals=False,
    )  # fmt: skip
    admin = AdminClient({"bootstrap.servers": kafka_bootstrap})

    def committed() -> dict[int, int]:
        c = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": live})
        tps = c.committed([TopicPartition(topic, p) for p in range(3)], timeout=30)
        c.close()
        return {tp.partition: tp.offset for tp in tps}

    before = committed()
    assert sum(o for o in before.values() if o > 0) == 20

    with TopicSource(kafka_bootstrap, topic) as source:
        send_steps(kafka_bootstrap, topic, range(20, 30), ("site-1",))  # after the start
        replayed = tmp_path / "replay.jsonl"
        stats = replay(source.batches(), JsonLinesTarget(replayed))

    lines = [json.loads(line) for line in replayed.read_text().splitlines()]
    assert [r["step"] for r in lines] == list(range(20))
    assert stats.read == stats.written == 20
    assert committed() == before
    groups = [g.group_id for g in admin.list_consumer_groups().result().valid]
    assert live in groups
    assert not [g for g in groups if g.startswith(REPLAY_GROUP_PREFIX)]


def test_offset_range_of_one_partition_into_json_lines(
    kafka_bootstrap: str, topic: str, tmp_path: Path, run_cli
) -> None:
    with AnalyticsSender(
        site="site-1", job_id=JOB, bootstrap_servers=kafka_bootstrap, topic=topic
    ) as s:
        for step in range(6):
            s.add_scalar("loss", step / 2, global_step=step)
        s.add_scalar("bad", math.nan, global_step=6)
        s.add_scalars("acc", {"up": math.inf, "down": -math.inf}, global_step=7)
        s.add_image("img", np.arange(6, dtype=np.uint16).reshape(2, 3), global_step=8)
        s.add("hp", {"lr": 0.1}, AnalyticsDataType.PARAMETERS)
    part = filled_partition(kafka_bootstrap, topic)
    out = tmp_path / "out.jsonl"

    result = run_cli(
        "replay", "--bootstrap-servers", kafka_bootstrap, "--topic", topic,
        "--partition", str(part), "--from-offset", "4", "--to-offset", "10", "--jsonl", str(out),
    )  # fmt: skip

    assert result.rc == 0, result.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["partition"], r["offset"], r["seq"]) for r in rows] == [
        (part, o, o) for o in range(4, 10)
    ]
    assert [r["value"] for r in rows[:2]] == [2.0, 2.5]
    assert rows[2]["tag"] == "bad" and rows[2]["value"] == "NaN"
    assert rows[3]["value"] == {"up": "Infinity", "down": "-Infinity"}
    img = rows[4]["value"]
    assert (img["dtype"], img["shape"]) == ("<u2", [2, 3])
    assert np.frombuffer(base64.b64decode(img["base64"]), "<u2").tolist() == list(range(6))
    assert rows[5]["value"] == {"lr": 0.1} and rows[5]["key"] == "site-1"
    assert all(r["record_id"] == f"{r['sender_id']}-{r['seq']}" for r in rows)


def test_archive_into_new_topic_keeps_bytes_keys_and_times_and_audit_reconciles(
    kafka_bootstrap: str, topic: str, tmp_path: Path, run_cli
) -> None:
    send_steps(kafka_bootstrap, topic, range(40), ("site-1", "site-2", "site-3"))
    root = tmp_path / "archive"
    drain_archive(kafka_bootstrap, topic, root)
    restored = f"{topic}.restored"
    create_topic(kafka_bootstrap, restored, partitions=2, replication_factor=1)

    result = run_cli(
        "replay", "--bootstrap-servers", kafka_bootstrap, "--archive", str(root),
        "--to-topic", restored,
    )  # fmt: skip
    assert result.rc == 0, result.err
    assert "written 120" in result.err

    original = sorted(raw_messages(kafka_bootstrap, topic))
    assert sorted(raw_messages(kafka_bootstrap, restored)) == original

    report = tmp_path / "report.json"
    audit = run_cli(
        "audit", "--bootstrap-servers", kafka_bootstrap, "--topic", restored,
        "--archive", str(root), "--json", str(report),
    )  # fmt: skip
    assert audit.rc == 0, audit.out + audit.err
    assert "RESULT: OK" in audit.out
    data = json.loads(report.read_text())
    assert data["ok"] and data["topic"]["records"] == 120 and data["archive"]["records"] == 120
    assert data["reconciliation"]["by_record_id"]["not_in_topic_is_failure"]


def test_archive_into_json_lines_filtered_by_site_in_offset_order(
    kafka_bootstrap: str, topic: str, tmp_path: Path, run_cli
) -> None:
    send_steps(kafka_bootstrap, topic, range(30), ("site-1", "site-2"))
    root = tmp_path / "archive"
    drain_archive(kafka_bootstrap, topic, root)
    with ArchiveReader(root) as reader:
        expected = sorted(
            (r.partition, r.offset, r.record.seq)
            for r in reader.all_records()
            if r.record.site == "site-2"
        )
    out = tmp_path / "site2.jsonl"

    result = run_cli("replay", "--archive", str(root), "--site", "site-2", "--jsonl", str(out))

    assert result.rc == 0, result.err
    rows = [json.loads(line) for line in out.read_text().splitlines()]
    assert [(r["partition"], r["offset"], r["seq"]) for r in rows] == expected
    assert len(rows) == 30 and {r["site"] for r in rows} == {"site-2"}


def test_bad_input_gets_a_clear_message_and_exit_code_never_a_traceback(
    kafka_bootstrap: str, topic: str, tmp_path: Path, run_cli
) -> None:
    send_steps(kafka_bootstrap, topic, range(3), ("site-1",))
    base = ("replay", "--bootstrap-servers", kafka_bootstrap)
    out = str(tmp_path / "x.jsonl")

    unknown = run_cli(*base, "--topic", f"no-such-{uuid.uuid4().hex}", "--jsonl", out)
    assert unknown.rc == 2 and "does not exist" in unknown.err

    empty = run_cli(*base, "--topic", topic, "--from-time", "2001-01-01T00:00:00Z",
                    "--to-time", "2001-01-02T00:00:00Z", "--jsonl", out)  # fmt: skip
    assert empty.rc == 2
    assert "no message of topic" in empty.err and "its messages span" in empty.err

    backwards = run_cli(*base, "--topic", topic, "--from-offset", "5", "--to-offset", "2",
                        "--jsonl", out)  # fmt: skip
    assert backwards.rc == 2 and "before from-offset" in backwards.err

    no_root = run_cli(*base, "--archive", str(tmp_path / "nowhere"), "--jsonl", out)
    assert no_root.rc == 2 and "is not a directory" in no_root.err

    root = tmp_path / "archive"
    drain_archive(kafka_bootstrap, topic, root)
    data = next(root.rglob("*.avro"))
    data.write_bytes(data.read_bytes()[:-20])  # truncated after it was written
    broken = run_cli(*base, "--archive", str(root), "--jsonl", out)
    assert broken.rc == 1 and data.name in broken.err and "audit" in broken.err

    unchecked = run_cli(*base, "--archive", str(root), "--no-verify", "--jsonl", out)
    assert unchecked.rc == 1 and "cannot read archive file" in unchecked.err

    for r in (unknown, empty, backwards, no_root, broken, unchecked):
        assert "Traceback" not in r.err + r.out


def test_backfill_from_archive_then_the_live_sink_shows_every_record_once(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    """The how-to of docs/replay-and-audit.md: history from the archive into a new sink,
    then the live sink on the same logdir as a new group; it skips what replay wrote."""
    send_steps(kafka_bootstrap, topic, range(20), ("site-1", "site-2"))
    root, logdir = tmp_path / "archive", tmp_path / "tb-new"
    drain_archive(kafka_bootstrap, topic, root)
    with ArchiveSource(str(root)) as source:
        assert replay(source.batches(), TensorBoardSink(logdir)).written == 40
    send_steps(kafka_bootstrap, topic, range(20, 25), ("site-1", "site-2"))  # live since

    config = LoopConfig(bootstrap_servers=kafka_bootstrap, topic=topic,
                        group=f"flarestream.tb-new-{uuid.uuid4().hex[:6]}", until_end=True,
                        flush_interval_s=0.5)  # fmt: skip
    run_sink(TensorBoardSink(logdir), config, handle_signals=False)

    expected = [(step, pytest.approx(step / 8)) for step in range(25)]
    assert tensorboard_scalars(logdir) == {"site-1": expected, "site-2": expected}
