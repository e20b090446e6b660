"""The consumer loop itself, driven with a small in-memory sink."""

from __future__ import annotations

import subprocess
import sys
import textwrap
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from flarestream.consumers import Delivered, LoopConfig, Rejection, Sink, run_sink
from flarestream.producer import AnalyticsDataType, AnalyticsSender

pytestmark = pytest.mark.integration


class MemorySink(Sink):
    name = "memory"

    def __init__(self, durable: Mapping[tuple[str, int], int] | None = None) -> None:
        self.rows: list[Delivered] = []
        self.flushes = 0
        self.durable = durable

    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        self.rows.extend(batch)
        return []

    def flush(self) -> Mapping[tuple[str, int], int] | None:
        self.flushes += 1
        return self.durable


class BrokenSink(MemorySink):
    def flush(self) -> Mapping[tuple[str, int], int] | None:
        raise RuntimeError("disk full")


def produce(bootstrap: str, topic: str, n: int, site: str = "site-1") -> None:
    with AnalyticsSender(site=site, job_id="job", bootstrap_servers=bootstrap, topic=topic) as s:
        for i in range(n):
            s.add("loss", float(i), AnalyticsDataType.SCALAR, global_step=i)


def committed(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        got = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return {tp.partition: tp.offset for tp in got if tp.offset >= 0}
    finally:
        consumer.close()


def config(bootstrap: str, topic: str, group: str, **kw: object) -> LoopConfig:
    return LoopConfig(
        bootstrap_servers=bootstrap, topic=topic, group=group, until_end=True,
        flush_interval_s=1, **kw,  # type: ignore[arg-type]
    )  # fmt: skip


def test_drain_reads_to_the_end_commits_it_and_a_second_run_reads_nothing(
    kafka_bootstrap: str, topic: str
) -> None:
    produce(kafka_bootstrap, topic, 500, "site-1")
    produce(kafka_bootstrap, topic, 300, "site-2")
    group = f"g-{uuid.uuid4().hex}"
    sink = MemorySink()
    stats = run_sink(sink, config(kafka_bootstrap, topic, group), handle_signals=False)
    assert stats.consumed == len(sink.rows) == 800
    by_site: dict[str, list[int]] = {}
    for d in sink.rows:
        by_site.setdefault(d.record.site, []).append(d.record.seq)
    assert by_site == {"site-1": list(range(500)), "site-2": list(range(300))}
    assert sum(committed(kafka_bootstrap, topic, group).values()) == 800

    again = MemorySink()
    run_sink(again, config(kafka_bootstrap, topic, group), handle_signals=False)
    assert again.rows == []
    reread = MemorySink()
    run_sink(reread, config(kafka_bootstrap, topic, group, from_beginning=True),
             handle_signals=False)  # fmt: skip
    assert len(reread.rows) == 800


def test_only_the_offsets_a_sink_reports_durable_are_committed(
    kafka_bootstrap: str, topic: str
) -> None:
    produce(kafka_bootstrap, topic, 100)
    probe = MemorySink()
    run_sink(probe, config(kafka_bootstrap, topic, f"g-{uuid.uuid4().hex}"), handle_signals=False)
    partition = probe.rows[0].partition
    group = f"g-{uuid.uuid4().hex}"
    sink = MemorySink(durable={(topic, partition): 40})
    run_sink(sink, config(kafka_bootstrap, topic, group), handle_signals=False)
    assert len(sink.rows) == 100
    assert committed(kafka_bootstrap, topic, group) == {partition: 40}


def test_a_sink_that_fails_to_flush_stops_the_loop_and_commits_nothing(
    kafka_bootstrap: str, topic: str
) -> None:
    produce(kafka_bootstrap, topic, 50)
    group = f"g-{uuid.uuid4().hex}"
    with pytest.raises(RuntimeError, match="disk full"):
        run_sink(BrokenSink(), config(kafka_bootstrap, topic, group), handle_signals=False)
    assert committed(kafka_bootstrap, topic, group) == {}


def test_undecodable_messages_go_to_the_dead_letter_topic_with_their_origin(
    kafka_bootstrap: str, topic: str
) -> None:
    produce(kafka_bootstrap, topic, 10)
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, b"garbage", b"site-1", headers=[("trace", b"abc")])
    producer.flush()
    sink = MemorySink()
    stats = run_sink(sink, config(kafka_bootstrap, topic, f"g-{uuid.uuid4().hex}"),
                     handle_signals=False)  # fmt: skip
    assert (stats.consumed, stats.dead_lettered, len(sink.rows)) == (11, 1, 10)
    consumer = Consumer({"bootstrap.servers": kafka_bootstrap, "group.id": "dlq-reader"})
    consumer.assign([TopicPartition(f"{topic}.dlq", 0, 0)])
    msgs = [m for m in consumer.consume(10, 10) if not m.error()]
    consumer.close()
    assert len(msgs) == 1
    headers = dict(msgs[0].headers() or [])
    assert msgs[0].value() == b"garbage" and msgs[0].key() == b"site-1"
    assert headers["trace"] == b"abc"
    assert headers["flarestream.dlq.topic"] == topic.encode()
    assert headers["flarestream.dlq.sink"] == b"memory"
    assert headers["flarestream.dlq.error"].startswith(b"undecodable")


def test_a_sink_from_another_package_is_found_through_its_entry_point(tmp_path: Path) -> None:
    (tmp_path / "my_sink.py").write_text(
        textwrap.dedent(
            """
            from flarestream.consumers import Sink

            class PrintSink(Sink):
                name = "print"
                description = "prints every record"

                def write(self, batch):
                    for d in batch:
                        print(d.record.site, d.record.tag, d.record.value)
                    return []

                def flush(self):
                    return None
            """
        )
    )
    dist = tmp_path / "my_sink-1.0.dist-info"
    dist.mkdir()
    (dist / "METADATA").write_text("Metadata-Version: 2.1\nName: my-sink\nVersion: 1.0\n")
    (dist / "entry_points.txt").write_text("[flarestream.sinks]\nprint = my_sink:PrintSink\n")
    env = {"PYTHONPATH": str(tmp_path), "PATH": "/usr/bin:/bin"}
    listing = subprocess.run(
        [sys.executable, "-m", "flarestream", "sink", "--help"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert "print" in listing.stdout and "my_sink:PrintSink" in listing.stdout
    usage = subprocess.run(
        [sys.executable, "-m", "flarestream", "sink", "print", "--help"],
        capture_output=True, text=True, env=env, check=True,
    )  # fmt: skip
    assert "--until-end" in usage.stdout and "prints every record" in usage.stdout
