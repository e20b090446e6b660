"""AnalyticsSender against a real Kafka: everything sent is read back by a plain
confluent-kafka consumer exactly once, in order per site, equal to what was sent,
including across a broker restart and a broker crash."""

from __future__ import annotations

import enum
import json
import math
import struct
import threading
import uuid
from collections import Counter, defaultdict
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from flarestream.deploy import LocalBroker, create_topic
from flarestream.errors import ConfigError
from flarestream.producer import (
    AnalyticsDataType,
    AnalyticsSender,
    LogWriterName,
    MLflowWriter,
    WandBWriter,
)
from flarestream.schemas import Record, decode

pytestmark = pytest.mark.integration

T = AnalyticsDataType
VECTORS = json.loads(
    (Path(__file__).parents[1] / "data" / "analytics-vectors-2.9.0.json").read_text()
)


# -- reading a topic back with nothing but confluent-kafka -------------------------------


@dataclass(frozen=True)
class Received:
    partition: int
    offset: int
    key: bytes | None
    record: Record


def read_topic(bootstrap: str, topic: str, idle_limit_s: float = 120) -> list[Received]:
    """Every message of ``topic``: all partitions from the beginning up to the high
    watermarks taken before reading, decoded."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
            "enable.partition.eof": False,
        }
    )
    try:
        partitions = sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in partitions
        }
        consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in partitions])
        todo = {p for p, end in ends.items() if end > 0}
        out: list[Received] = []
        idle = 0.0
        while todo:
            msg = consumer.poll(1.0)
            if msg is None:
                idle += 1.0
                if idle > idle_limit_s:
                    pytest.fail(f"read {len(out)} of {sum(ends.values())} messages of {topic}")
                continue
            idle = 0.0
            err = msg.error()
            if err is not None:
                raise AssertionError(f"consumer error: {err}")
            partition, offset = msg.partition(), msg.offset()
            assert partition is not None and offset is not None
            if offset < ends[partition]:
                value = msg.value()
                assert value is not None
                out.append(Received(partition, offset, msg.key(), decode(value)))
            if offset >= ends[partition] - 1:
                todo.discard(partition)
        return out
    finally:
        consumer.close()


# -- what was sent, and comparing it with what came back -------------------------------------


@dataclass(frozen=True)
class Sent:
    tag: str
    data_type: AnalyticsDataType
    value: Any
    writer: LogWriterName
    step: int | None = None
    path: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def typed(value: Any) -> Any:
    """A comparable form that keeps types (1 != 1.0 != True), arrays' dtype and shape,
    and treats NaN as equal to NaN."""
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, typed(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(typed(v) for v in value))
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def differences(record: Record, sent: Sent, site: str, job_id: str) -> list[str]:
    wanted = {
        "site": site,
        "job_id": job_id,
        "tag": sent.tag,
        "data_type": sent.data_type,
        "writer": sent.writer,
        "step": sent.step,
        "path": sent.path,
        "value": typed(sent.value),
        "kwargs": typed(sent.kwargs),
    }
    got = {
        "site": record.site,
        "job_id": record.job_id,
        "tag": record.tag,
        "data_type": record.data_type,
        "writer": record.writer,
        "step": record.step,
        "path": record.path,
        "value": typed(record.value),
        "kwargs": typed(record.kwargs),
    }
    return [f"{k}: sent {wanted[k]!r}, got {got[k]!r}" for k in wanted if wanted[k] != got[k]]


# -- 1. three sites, mixed records, concurrently ----------------------------------------------

RECORDS_PER_SITE = 10_000
IMAGE_EVERY = 500


@dataclass
class SiteClients:
    sender: AnalyticsSender
    mlflow: MLflowWriter
    wandb: WandBWriter


def send_one(site: SiteClients, i: int) -> Sent:
    """Make the i-th call of a site (a mix of every kind of call) and say what it sent."""
    tb = LogWriterName.TORCH_TB
    if i % IMAGE_EVERY == 0:
        image = np.random.default_rng(i).integers(0, 256, size=(8, 6, 3), dtype=np.uint8)
        site.sender.add_image("samples", image, i)
        return Sent("samples", T.IMAGE, image.copy(), tb, step=i)
    kind = i % 8
    if kind == 0:
        value = {"train": i / 3, "val": i}
        site.sender.add_scalars("loss/split", value, i)
        return Sent("loss/split", T.SCALARS, value, tb, step=i)
    if kind == 1:
        text = f"epoch {i}: é ✓ {'x' * (i % 50)}"
        site.sender.add_text("notes", text, i, path=f"notes/{i}.txt")
        return Sent("notes", T.TEXT, text, tb, step=i, path=f"notes/{i}.txt")
    if kind == 2:
        params = {"lr": 1 / (i + 1), "optimizer": "adam", "layers": i % 7, "nesterov": True}
        site.mlflow.log_params(params)
        return Sent("params", T.PARAMETERS, params, LogWriterName.MLFLOW)
    if kind == 3:
        metrics = {"loss": 1 / (i + 1), "acc": np.float32(0.25)}
        site.wandb.log(metrics, step=i)
        return Sent(
            "metrics", T.METRICS, {"loss": 1 / (i + 1), "acc": 0.25}, LogWriterName.WANDB, step=i
        )
    if kind == 4:
        site.sender.add("lr", i * 1e-5, T.SCALAR, i, walltime=i + 0.5, phase="warmup", ids=[i, 1])
        kwargs = {"walltime": i + 0.5, "phase": "warmup", "ids": [i, 1]}
        return Sent("lr", T.SCALAR, i * 1e-5, tb, step=i, kwargs=kwargs)
    if kind == 5:
        site.sender.add_scalar("acc", np.float32(i % 100) / 100, np.int64(i))
        return Sent("acc", T.SCALAR, float(np.float32(i % 100) / 100), tb, step=i)
    if kind == 6:
        loss = math.inf if i % 1000 == 6 else -float(i)
        site.sender.add_scalar("loss", loss, global_step=i)
        return Sent("loss", T.SCALAR, loss, tb, step=i)
    site.sender.add_scalar("epoch", i)
    return Sent("epoch", T.SCALAR, i, tb)


def test_three_sites_ten_thousand_mixed_records_arrive_once_equal_and_in_order(
    kafka_bootstrap: str, topic: str
) -> None:
    job_id = "job-mixed"
    sites = [f"site-{n}" for n in range(1, 4)]
    clients: dict[str, SiteClients] = {}
    for site in sites:
        sender = AnalyticsSender(
            site=site, job_id=job_id, bootstrap_servers=kafka_bootstrap, topic=topic
        )
        clients[site] = SiteClients(sender, MLflowWriter(sender), WandBWriter(sender))
    sent: dict[str, list[Sent]] = {site: [] for site in sites}
    errors: list[BaseException] = []
    start = threading.Barrier(len(sites))

    def run(site: str) -> None:
        try:
            start.wait()
            for i in range(RECORDS_PER_SITE):
                sent[site].append(send_one(clients[site], i))
            clients[site].sender.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(site,)) for site in sites]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    for site in sites:
        assert clients[site].sender.stats == {
            "accepted": RECORDS_PER_SITE,
            "delivered": RECORDS_PER_SITE,
            "failed": 0,
            "pending": 0,
        }

    received = read_topic(kafka_bootstrap, topic)

    assert len(received) == len(sites) * RECORDS_PER_SITE
    ids = Counter(r.record.record_id for r in received)
    assert [i for i, n in ids.items() if n > 1] == []
    pairs = Counter((r.record.sender_id, r.record.seq) for r in received)
    assert [p for p, n in pairs.items() if n > 1] == []
    by_site: dict[str, list[Received]] = defaultdict(list)
    for r in received:
        by_site[r.record.site].append(r)
    assert sorted(by_site) == sites
    for site in sites:
        mine = sorted(by_site[site], key=lambda r: r.offset)
        assert {r.partition for r in mine} == {mine[0].partition}, f"{site} spread over partitions"
        assert {r.key for r in mine} == {site.encode()}
        assert {r.record.sender_id for r in mine} == {clients[site].sender.sender_id}
        assert [r.record.seq for r in mine] == list(range(RECORDS_PER_SITE))
        wrong = [
            f"{site} seq {r.record.seq}: {diff}"
            for r, s in zip(mine, sent[site], strict=True)
            for diff in differences(r.record, s, site, job_id)
        ]
        assert wrong[:5] == []


# -- 2. the broker goes away while a sender is sending ----------------------------------------

OUTAGE_RECORDS = 30_000


@pytest.mark.parametrize("outage", ["stop", "kill"], ids=["sigterm", "sigkill"])
def test_broker_outage_mid_stream_loses_nothing_duplicates_nothing(
    local_broker_factory: Callable[..., LocalBroker], outage: str
) -> None:
    """A third of the records is sent before the outage, a third while the broker is
    down (SIGTERM, or SIGKILL as in a crash), a third after it is back."""
    broker = local_broker_factory()
    bootstrap = broker.bootstrap
    topic = "restart.test"
    create_topic(bootstrap, topic, partitions=3, replication_factor=1)
    sender = AnalyticsSender(
        site="site-1",
        job_id="job-restart",
        bootstrap_servers=bootstrap,
        topic=topic,
        max_block_s=60,
        config={"queue.buffering.max.messages": 5_000},  # add() waits while the queue is full
    )
    down, up = threading.Event(), threading.Event()
    errors: list[BaseException] = []

    def run() -> None:
        try:
            for i in range(OUTAGE_RECORDS):
                if i == OUTAGE_RECORDS // 3:
                    down.wait(300)
                elif i == 2 * OUTAGE_RECORDS // 3:
                    up.wait(300)
                sender.add_scalar("loss", float(i), i, attempt=i % 3)
            sender.close()
        except BaseException as exc:  # reported below
            errors.append(exc)

    thread = threading.Thread(target=run)
    thread.start()
    try:
        while sender.stats["delivered"] == 0 and thread.is_alive():
            thread.join(0.05)
        if outage == "kill":
            broker.kill()
        else:
            broker.stop()
        assert not broker.is_running()
        down.set()
        thread.join(2)  # records keep coming while the broker is away
        assert sender.stats["pending"] > 0  # ...and wait for it
        assert broker.start() == bootstrap  # same data directory, same port
    finally:
        down.set()
        up.set()
        thread.join()
    assert errors == []
    assert sender.stats["delivered"] == OUTAGE_RECORDS

    received = read_topic(bootstrap, topic)

    assert len({r.partition for r in received}) == 1
    seqs = [r.record.seq for r in sorted(received, key=lambda r: r.offset)]
    assert len(seqs) == OUTAGE_RECORDS, f"{len(seqs) - OUTAGE_RECORDS:+d} records"
    assert seqs == list(range(OUTAGE_RECORDS))
    assert [r.record.value for r in received] == [float(s) for s in seqs]
    assert {r.record.sender_id for r in received} == {sender.sender_id}


# -- 3. NVFlare's own records, end to end ------------------------------------------------------


def _from_vector(obj: Any) -> Any:
    """A vector's JSON value as the Python object NVFlare was called with / produced."""
    if isinstance(obj, dict):
        if "__enum__" in obj:
            enum_cls = {"AnalyticsDataType": AnalyticsDataType, "LogWriterName": LogWriterName}
            return enum_cls[obj["__enum__"]][obj["name"]]
        if "__ndarray__" in obj:
            return np.array(obj["__ndarray__"], dtype=obj["dtype"])
        if "__npscalar__" in obj:
            return np.dtype(obj["dtype"]).type(obj["__npscalar__"])
        if "__float__" in obj:
            return float(obj["__float__"])
        return {k: _from_vector(v) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_from_vector(v) for v in obj]
    return obj


def test_nvflare_vector_records_arrive_as_the_dxo_nvflare_builds(
    kafka_bootstrap: str, topic: str
) -> None:
    cases = [c for c in VECTORS["cases"] if "error" not in c]
    senders = {
        writer: AnalyticsSender(
            site=f"vec-{writer.name.lower()}",
            job_id="job-vectors",
            bootstrap_servers=kafka_bootstrap,
            topic=topic,
            writer_name=writer,
        )
        for writer in LogWriterName
    }
    order: list[tuple[str, int]] = []  # (site, seq) of each case
    for case in cases:
        args = _from_vector(case["args"])
        sender = senders[args["writer"]]
        order.append((sender.site, sender.stats["accepted"]))
        sender.add(args["tag"], args["value"], args["data_type"], **args["kwargs"])
    for sender in senders.values():
        sender.close()

    records = {(r.record.site, r.record.seq): r.record for r in read_topic(kafka_bootstrap, topic)}

    assert len(records) == len(cases)
    for case, where in zip(cases, order, strict=True):
        record = records[where]
        data, meta = case["dxo"]["data"], case["dxo"]["meta"]
        assert case["dxo"]["data_kind"] == "ANALYTIC"
        assert record.tag == data["track_key"], case["name"]
        assert typed(record.value) == typed(_from_vector(data["track_value"])), case["name"]
        assert record.step == data.get("global_step"), case["name"]
        assert record.path == data.get("path"), case["name"]
        assert record.analytics_kwargs == data.get("analytics_kwargs", {}), case["name"]
        assert record.data_type.name == meta["analytics_data_type"]["name"], case["name"]
        assert record.writer.name == meta["tracker_key"]["name"], case["name"]


def test_nvflare_like_enums_arrive_as_flarestream_enums(kafka_bootstrap: str, topic: str) -> None:
    """NVFlare's own enum classes (stood in for by same-named local ones) are accepted and
    arrive as flarestream's members of the same name."""
    nv_data_type = enum.Enum("AnalyticsDataType", [(m.name, m.value) for m in AnalyticsDataType])
    nv_writer = enum.Enum("LogWriterName", [(m.name, m.value) for m in LogWriterName])
    with AnalyticsSender(
        site="site-nv",
        job_id="job-nv",
        bootstrap_servers=kafka_bootstrap,
        topic=topic,
        writer_name=nv_writer["WANDB"],
    ) as sender:
        sender.add("acc", 0.5, nv_data_type["METRIC"], 1)
        sender.add("metrics", {"loss": 0.1}, nv_data_type["METRICS"], 2)
        sender.add("notes", "hi", nv_data_type["TEXT"])

    records = sorted((r.record for r in read_topic(kafka_bootstrap, topic)), key=lambda r: r.seq)

    assert [(r.tag, r.data_type, r.writer, r.step) for r in records] == [
        ("acc", T.METRIC, LogWriterName.WANDB, 1),
        ("metrics", T.METRICS, LogWriterName.WANDB, 2),
        ("notes", T.TEXT, LogWriterName.WANDB, None),
    ]


# -- 4. the producer settings that the guarantees rest on --------------------------------------


@pytest.mark.parametrize(
    "config",
    [{"acks": "1"}, {"acks": 0}, {"enable.idempotence": False}],
    ids=["acks-1", "acks-0", "idempotence-off"],
)
def test_settings_that_break_ordering_or_dedup_are_refused(
    kafka_bootstrap: str, topic: str, config: dict[str, Any]
) -> None:
    with pytest.raises(ConfigError, match=next(iter(config))):
        AnalyticsSender(
            site="site-1",
            job_id="job-1",
            bootstrap_servers=kafka_bootstrap,
            topic=topic,
            config=config,
        )


# record batch v2 header: baseOffset q, batchLength i, partitionLeaderEpoch i, magic b,
# crc I, attributes h, lastOffsetDelta i, baseTimestamp q, maxTimestamp q,
# producerId q, producerEpoch h, baseSequence i, records i
_BATCH = struct.Struct(">qiibIhiqqqhii")
_LZ4 = 3


@dataclass(frozen=True)
class Batch:
    base_offset: int
    count: int
    compression: int
    producer_id: int
    base_sequence: int


def batches_on_disk(partition_dir: Path) -> list[Batch]:
    """The record batches of a partition, read from the broker's log segments."""
    out = []
    for segment in sorted(partition_dir.glob("*.log")):
        data = segment.read_bytes()
        pos = 0
        while pos + _BATCH.size <= len(data):
            (base, length, _, magic, _, attrs, delta, _, _, pid, _, seq, _) = _BATCH.unpack_from(
                data, pos
            )
            if length <= 0:
                break
            assert magic == 2, f"record batch format v{magic} in {segment}"
            out.append(Batch(base, delta + 1, attrs & 0x7, pid, seq))
            pos += 12 + length
    return out


def test_records_are_stored_lz4_compressed_by_an_idempotent_producer(
    local_broker_factory: Callable[..., LocalBroker],
) -> None:
    broker = local_broker_factory()
    topic = "compression.test"
    create_topic(broker.bootstrap, topic, partitions=1, replication_factor=1)
    with AnalyticsSender(
        site="site-1", job_id="job-1", bootstrap_servers=broker.bootstrap, topic=topic
    ) as sender:
        for i in range(5_000):
            sender.add_scalar("loss", 0.5, i)
            sender.add_text("notes", "the same words again " * 10, i)

    batches = batches_on_disk(broker.data_dir / "kraft" / f"{topic}-0")

    assert sum(b.count for b in batches) == 10_000
    assert {b.compression for b in batches} == {_LZ4}
    producer_ids = {b.producer_id for b in batches}
    assert len(producer_ids) == 1  # one producer session wrote them all
    assert producer_ids.pop() >= 0  # -1 would mean a producer without idempotence
    # idempotent sequence numbers run on from batch to batch, no gap and no repeat
    assert [b.base_sequence for b in batches] == [b.base_offset for b in batches]
