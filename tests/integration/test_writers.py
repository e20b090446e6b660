"""The NVFlare-style writers against a real Kafka: each call arrives as the record NVFlare's
writer would make (tag, data type, step, path) stamped with the writer's kind."""

from __future__ import annotations

import math
import uuid
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, TopicPartition

from flarestream.producer import (
    AnalyticsDataType,
    AnalyticsSender,
    LogWriterName,
    MLflowWriter,
    SummaryWriter,
    WandBWriter,
)
from flarestream.schemas import Record, decode

pytestmark = pytest.mark.integration

T = AnalyticsDataType
TB, MLFLOW, WANDB = LogWriterName.TORCH_TB, LogWriterName.MLFLOW, LogWriterName.WANDB


def read_records(bootstrap: str, topic: str, idle_limit_s: float = 120) -> list[Record]:
    """Every record of ``topic`` up to the current high watermarks, in offset order per
    partition, read with a plain confluent-kafka consumer."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
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
        out: list[tuple[int, int, Record]] = []
        idle = 0.0
        while todo:
            msg = consumer.poll(1.0)
            if msg is None:
                idle += 1.0
                if idle > idle_limit_s:
                    pytest.fail(f"read {len(out)} of {sum(ends.values())} messages of {topic}")
                continue
            idle = 0.0
            if msg.error() is not None:
                raise AssertionError(f"consumer error: {msg.error()}")
            partition, offset, value = msg.partition(), msg.offset(), msg.value()
            assert partition is not None and offset is not None and value is not None
            if offset < ends[partition]:
                out.append((partition, offset, decode(value)))
            if offset >= ends[partition] - 1:
                todo.discard(partition)
        return [record for _, _, record in sorted(out, key=lambda x: (x[0], x[1]))]
    finally:
        consumer.close()


@dataclass(frozen=True)
class Expected:
    tag: str
    data_type: AnalyticsDataType
    value: Any
    writer: LogWriterName
    step: int | None = None
    path: str | None = None
    kwargs: dict[str, Any] = field(default_factory=dict)


def typed(value: Any) -> Any:
    """Comparable form keeping types (1 != 1.0), arrays' dtype and shape, NaN == NaN."""
    if isinstance(value, np.ndarray):
        return ("ndarray", value.dtype.str, value.shape, value.tobytes())
    if isinstance(value, dict):
        return ("dict", tuple(sorted((k, typed(v)) for k, v in value.items())))
    if isinstance(value, list):
        return ("list", tuple(typed(v) for v in value))
    if isinstance(value, float) and math.isnan(value):
        return ("float", "nan")
    return (type(value).__name__, value)


def as_expected(record: Record) -> Expected:
    return Expected(
        record.tag,
        record.data_type,
        typed(record.value),
        record.writer,
        record.step,
        record.path,
        typed(record.kwargs),
    )


def normalised(expected: Expected) -> Expected:
    return Expected(
        expected.tag,
        expected.data_type,
        typed(expected.value),
        expected.writer,
        expected.step,
        expected.path,
        typed(expected.kwargs),
    )


# (calls on a writer, the records NVFlare's writer makes for them)
_Calls = Callable[[Any], None]


def tensorboard_calls(w: SummaryWriter) -> None:
    w.add_scalar("loss", 0.5, 1)
    w.add_scalar("loss", np.float32(0.25), global_step=0)
    w.add_scalar("epoch", 3)
    w.add_scalars("lr/groups", {"a": 0.1, "b": 2, "c": np.float64(math.nan)}, np.int64(3))
    w.add_scalar("loss", 0.125, 2, walltime=17.5, note="x")


TENSORBOARD = [
    Expected("loss", T.SCALAR, 0.5, TB, step=1),
    Expected("loss", T.SCALAR, 0.25, TB, step=0),
    Expected("epoch", T.SCALAR, 3, TB),
    Expected("lr/groups", T.SCALARS, {"a": 0.1, "b": 2, "c": math.nan}, TB, step=3),
    Expected("loss", T.SCALAR, 0.125, TB, step=2, kwargs={"walltime": 17.5, "note": "x"}),
]


def mlflow_calls(w: MLflowWriter) -> None:
    w.log_param("lr", 0.01)
    w.log_params({"lr": 0.01, "optimizer": "adam", "layers": [64, 32], "seed": None})
    w.log_metric("acc", 0.9, step=2)
    w.log_metric("acc", np.float32(0.5))
    w.log_metrics({"acc": 0.95, "loss": np.float64(0.05)}, step=3)
    w.log_text("hello\nworld ✓", "notes/run.txt")
    w.set_tag("team", "vision")
    w.set_tags({"team": "vision", "stage": "dev"})


MLFLOW_RECORDS = [
    Expected("lr", T.PARAMETER, 0.01, MLFLOW),
    Expected(
        "params",
        T.PARAMETERS,
        {"lr": 0.01, "optimizer": "adam", "layers": [64, 32], "seed": None},
        MLFLOW,
    ),
    Expected("acc", T.METRIC, 0.9, MLFLOW, step=2),
    Expected("acc", T.METRIC, 0.5, MLFLOW),
    Expected("metrics", T.METRICS, {"acc": 0.95, "loss": 0.05}, MLFLOW, step=3),
    Expected("text", T.TEXT, "hello\nworld ✓", MLFLOW, path="notes/run.txt"),
    Expected("team", T.TAG, "vision", MLFLOW),
    Expected("tags", T.TAGS, {"team": "vision", "stage": "dev"}, MLFLOW),
]


def wandb_calls(w: WandBWriter) -> None:
    w.log({"loss": 0.1, "acc": np.float32(0.75)}, step=9)
    w.log({"loss": 0.05})
    w.log({"epoch": 4}, step=0)


WANDB_RECORDS = [
    Expected("metrics", T.METRICS, {"loss": 0.1, "acc": 0.75}, WANDB, step=9),
    Expected("metrics", T.METRICS, {"loss": 0.05}, WANDB),
    Expected("metrics", T.METRICS, {"epoch": 4}, WANDB, step=0),
]

WRITERS: list[tuple[str, type[Any], _Calls, list[Expected]]] = [
    ("tensorboard", SummaryWriter, tensorboard_calls, TENSORBOARD),
    ("mlflow", MLflowWriter, mlflow_calls, MLFLOW_RECORDS),
    ("wandb", WandBWriter, wandb_calls, WANDB_RECORDS),
]


@pytest.mark.parametrize(
    ("writer_cls", "calls", "expected"), [w[1:] for w in WRITERS], ids=[w[0] for w in WRITERS]
)
def test_writer_with_its_own_sender_records_nvflare_tags_types_and_its_kind(
    kafka_bootstrap: str,
    topic: str,
    writer_cls: type[Any],
    calls: _Calls,
    expected: list[Expected],
) -> None:
    with writer_cls(
        site="site-w", job_id="job-writers", bootstrap_servers=kafka_bootstrap, topic=topic
    ) as writer:
        calls(writer)
        sender_id = writer.sender.sender_id

    records = read_records(kafka_bootstrap, topic)

    assert [as_expected(r) for r in records] == [normalised(e) for e in expected]
    assert [r.seq for r in records] == list(range(len(expected)))
    assert {(r.site, r.job_id, r.sender_id) for r in records} == {
        ("site-w", "job-writers", sender_id)
    }


def test_writers_sharing_one_sender_keep_call_order_and_their_own_kinds(
    kafka_bootstrap: str, topic: str
) -> None:
    sender = AnalyticsSender(
        site="site-shared", job_id="job-writers", bootstrap_servers=kafka_bootstrap, topic=topic
    )
    tb, mlflow, wandb = SummaryWriter(sender), MLflowWriter(sender), WandBWriter(sender)
    tensorboard_calls(tb)
    mlflow_calls(mlflow)
    wandb_calls(wandb)
    sender.add_text("notes", "from the sender itself", 1)
    for writer in (tb, mlflow, wandb):
        writer.close()  # flushes; the sender stays open for its owner
    sender.add_scalar("after-writers-closed", 1.0, 5)
    sender.close()

    records = read_records(kafka_bootstrap, topic)

    expected = [
        *TENSORBOARD,
        *MLFLOW_RECORDS,
        *WANDB_RECORDS,
        Expected("notes", T.TEXT, "from the sender itself", TB, step=1),
        Expected("after-writers-closed", T.SCALAR, 1.0, TB, step=5),
    ]
    assert [as_expected(r) for r in records] == [normalised(e) for e in expected]
    assert [r.seq for r in records] == list(range(len(expected)))
    assert {r.site for r in records} == {"site-shared"}


def test_writer_kind_is_kept_for_a_sender_of_another_kind(kafka_bootstrap: str, topic: str) -> None:
    """A TensorBoard writer on a sender made for MLflow still stamps TORCH_TB, as NVFlare's
    writers carry their own kind."""
    sender = AnalyticsSender(
        site="site-k",
        job_id="job-writers",
        bootstrap_servers=kafka_bootstrap,
        topic=topic,
        writer_name=LogWriterName.MLFLOW,
    )
    SummaryWriter(sender).add_scalar("loss", 0.5, 1)
    sender.add("acc", 0.9, T.METRIC, 1)
    sender.close()

    records = read_records(kafka_bootstrap, topic)

    assert [(r.tag, r.data_type, r.writer) for r in records] == [
        ("loss", T.SCALAR, TB),
        ("acc", T.METRIC, MLFLOW),
    ]
