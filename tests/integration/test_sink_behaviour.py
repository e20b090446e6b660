"""One behaviour suite for every sink: the promises each sink keeps, proven the same way.

Each sink provides a harness (tests/integration/sinks/<name>_harness.py) that builds
the sink, gives its command-line arguments, and reads its contents back with the
backend's own reader as (site, tag, step, value) points.
"""

from __future__ import annotations

import importlib.util
import signal
import subprocess
import sys
import threading
import time
import uuid
from collections import Counter
from collections.abc import Callable, Iterator
from pathlib import Path
from types import ModuleType

import pytest
from confluent_kafka import Consumer, Producer, TopicPartition

from flarestream.consumers import LoopConfig, run_sink
from flarestream.consumers.deadletter import dead_letter_info
from flarestream.producer import AnalyticsDataType, AnalyticsSender
from flarestream.schemas import Record, default_codec

pytestmark = pytest.mark.integration

SINKS = ("tensorboard", "mlflow", "archive")
HERE = Path(__file__).parent / "sinks"
Point = tuple[str, str, int, float]


def _load_harness(name: str) -> ModuleType:
    path = HERE / f"{name}_harness.py"
    spec = importlib.util.spec_from_file_location(f"flarestream_test_{name}_harness", path)
    assert spec is not None and spec.loader is not None, f"no harness for sink {name}: {path}"
    module = importlib.util.module_from_spec(spec)
    sys.modules[spec.name] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(params=SINKS)
def harness(request: pytest.FixtureRequest) -> Iterator[object]:
    h = _load_harness(request.param).HARNESS
    yield h
    h.close()


def value_of(site: int, step: int) -> float:
    return round(site * 1000 + step / 8, 3)  # exact in float32 too


def send(bootstrap: str, topic: str, job: str, sites: int, steps: range) -> list[Point]:
    """Send scalars from ``sites`` sites concurrently; return the points sent."""
    sent: list[Point] = []

    def one(i: int) -> None:
        with AnalyticsSender(
            site=f"site-{i}", job_id=job, bootstrap_servers=bootstrap, topic=topic
        ) as s:
            for step in steps:
                s.add("loss", value_of(i, step), AnalyticsDataType.SCALAR, global_step=step)
        sent.extend((f"site-{i}", "loss", step, value_of(i, step)) for step in steps)

    threads = [threading.Thread(target=one, args=(i,)) for i in range(1, sites + 1)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return sent


def drain(harness: object, root: Path, bootstrap: str, topic: str, group: str) -> None:
    sink = harness.make_sink(root)  # type: ignore[attr-defined]
    config = LoopConfig(
        bootstrap_servers=bootstrap, topic=topic, group=group, until_end=True, flush_interval_s=1
    )
    run_sink(sink, config, handle_signals=False)


def sink_process(
    harness: object, root: Path, bootstrap: str, topic: str, group: str, *extra: str
) -> subprocess.Popen[bytes]:
    argv = [
        sys.executable, "-m", "flarestream", "sink", harness.name,  # type: ignore[attr-defined]
        *harness.cli_args(root),  # type: ignore[attr-defined]
        "--bootstrap-servers", bootstrap, "--topic", topic, "--group", group,
        "--flush-interval", "0.5", "--flush-records", "200", *extra,
    ]  # fmt: skip
    return subprocess.Popen(argv, stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def committed_total(bootstrap: str, topic: str, group: str) -> int:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    try:
        parts = consumer.list_topics(topic, timeout=10).topics[topic].partitions
        offsets = consumer.committed([TopicPartition(topic, p) for p in parts], timeout=10)
        return sum(max(tp.offset, 0) for tp in offsets)
    finally:
        consumer.close()


def group_is_stable(bootstrap: str, group: str) -> bool:
    from confluent_kafka import ConsumerGroupState
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": bootstrap})
    desc = admin.describe_consumer_groups([group])[group].result(timeout=10)
    return bool(desc.state == ConsumerGroupState.STABLE and desc.members)


def wait_for(predicate: Callable[[], bool], what: str, timeout: float = 60) -> None:
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if predicate():
            return
        time.sleep(0.2)
    raise AssertionError(f"gave up waiting {timeout:.0f}s for {what}")


def new_job() -> str:
    return f"job-{uuid.uuid4().hex[:8]}"


def test_every_record_lands_once(harness: object, kafka_bootstrap: str, topic: str, tmp_path: Path):
    job = new_job()
    sent = send(kafka_bootstrap, topic, job, sites=3, steps=range(300))
    drain(harness, tmp_path, kafka_bootstrap, topic, f"g-{uuid.uuid4().hex}")
    got = harness.read_points(tmp_path, job)  # type: ignore[attr-defined]
    assert Counter(got) == Counter(sent)


def test_restart_after_kill9_writes_no_duplicates(
    harness: object, kafka_bootstrap: str, topic: str, tmp_path: Path
):
    job, group = new_job(), f"g-{uuid.uuid4().hex}"
    first = send(kafka_bootstrap, topic, job, sites=3, steps=range(0, 1500))
    proc = sink_process(harness, tmp_path, kafka_bootstrap, topic, group)
    try:
        # kill it in the middle: some offsets committed, more records still coming
        wait_for(lambda: committed_total(kafka_bootstrap, topic, group) > 0, "a first commit")
        feeder = threading.Thread(
            target=lambda: first.extend(
                send(kafka_bootstrap, topic, job, sites=3, steps=range(1500, 3000))
            )
        )
        feeder.start()
        time.sleep(0.3)
        proc.send_signal(signal.SIGKILL)
        proc.wait(timeout=30)
        feeder.join()
    finally:
        if proc.poll() is None:
            proc.kill()
    assert proc.returncode == -signal.SIGKILL
    restarted = sink_process(harness, tmp_path, kafka_bootstrap, topic, group, "--until-end")
    _out, err = restarted.communicate(timeout=300)
    assert restarted.returncode == 0, err.decode()
    got = harness.read_points(tmp_path, job)  # type: ignore[attr-defined]
    doubled = [p for p, n in Counter(got).items() if n > 1]
    assert not doubled, f"{len(doubled)} points written twice, e.g. {doubled[:3]}"
    assert Counter(got) == Counter(first)


def test_idle_stream_is_flushed_without_more_records(
    harness: object, kafka_bootstrap: str, topic: str, tmp_path: Path
):
    job, group = new_job(), f"g-{uuid.uuid4().hex}"
    proc = sink_process(harness, tmp_path, kafka_bootstrap, topic, group)
    try:
        sent = send(kafka_bootstrap, topic, job, sites=2, steps=range(5))
        # nothing else is sent: only the time-based flush can make these visible
        wait_for(
            lambda: Counter(harness.read_points(tmp_path, job)) == Counter(sent),  # type: ignore[attr-defined]
            "the idle flush to show the records",
        )
        assert proc.poll() is None, "the sink stopped instead of waiting for more records"
    finally:
        proc.send_signal(signal.SIGTERM)
        proc.wait(timeout=60)


def test_poison_records_reach_the_dead_letter_topic(
    harness: object, kafka_bootstrap: str, topic: str, tmp_path: Path
):
    job, group = new_job(), f"g-{uuid.uuid4().hex}"
    sent = send(kafka_bootstrap, topic, job, sites=1, steps=range(10))
    codec = default_codec()
    escaping = Record("../escape", job, "feedfacefeedface", 0, int(time.time() * 1000), "loss",
                      AnalyticsDataType.SCALAR, 1.0, step=1)  # fmt: skip
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    producer.produce(topic, b"\x00not avro at all", b"site-9")
    producer.produce(topic, b"\xc3\x01" + b"\x99" * 8 + b"body", b"site-9")  # unknown schema
    producer.produce(topic, codec.encode(escaping), b"../escape")
    producer.flush()
    drain(harness, tmp_path, kafka_bootstrap, topic, group)

    dead = read_all(kafka_bootstrap, f"{topic}.dlq")
    ours = [(value, dead_letter_info(headers)) for value, headers in dead]
    ours = [(v, h) for v, h in ours if h.get("sink") == harness.name]  # type: ignore[attr-defined]
    errors = sorted(h["error"].split(":")[0] for _, h in ours)
    assert len(ours) == 3, ours
    assert errors.count("undecodable") == 2
    assert {v for v, _ in ours} >= {b"\x00not avro at all"}
    assert all(h["topic"] == topic and h["offset"].isdigit() for _, h in ours)
    assert Counter(harness.read_points(tmp_path, job)) == Counter(sent)  # type: ignore[attr-defined]


def test_sigterm_flushes_commits_and_exits_zero(
    harness: object, kafka_bootstrap: str, topic: str, tmp_path: Path
):
    job, group = new_job(), f"g-{uuid.uuid4().hex}"
    sent = send(kafka_bootstrap, topic, job, sites=2, steps=range(100))
    proc = sink_process(harness, tmp_path, kafka_bootstrap, topic, group, "--flush-interval", "30")
    wait_for(lambda: group_is_stable(kafka_bootstrap, group), "the sink to join its group")
    time.sleep(2)  # let it read the records; the 30 s flush interval has not come yet
    assert proc.poll() is None
    proc.send_signal(signal.SIGTERM)
    _out, err = proc.communicate(timeout=60)
    assert proc.returncode == 0, err.decode()
    assert committed_total(kafka_bootstrap, topic, group) == len(sent)
    assert Counter(harness.read_points(tmp_path, job)) == Counter(sent)  # type: ignore[attr-defined]


def read_all(bootstrap: str, topic: str) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}"})
    try:
        meta = consumer.list_topics(topic, timeout=10).topics[topic]
        parts = list(meta.partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts if ends[p] > 0])
        out: list[tuple[bytes, list[tuple[str, bytes]]]] = []
        remaining = sum(ends.values())
        deadline = time.monotonic() + 60
        while remaining > 0 and time.monotonic() < deadline:
            for msg in consumer.consume(500, 1):
                if msg.error():
                    continue
                out.append((msg.value() or b"", list(msg.headers() or [])))
                remaining -= 1
        return out
    finally:
        consumer.close()
