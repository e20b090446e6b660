"""The TensorBoard sink against a real broker: what sites send is what TensorBoard's own
reader finds, once, and a record that would escape the logdir lands in the DLQ."""

from __future__ import annotations

import io
import time
import uuid
from collections import Counter
from pathlib import Path
from typing import Any

import numpy as np
import pytest
from confluent_kafka import Consumer, Producer, TopicPartition
from PIL import Image
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from flarestream.consumers import LoopConfig, run_sink
from flarestream.consumers.deadletter import dead_letter_info
from flarestream.consumers.tensorboard_sink import TensorBoardSink
from flarestream.producer import AnalyticsDataType, AnalyticsSender, MLflowWriter, WandBWriter
from flarestream.schemas import Record, default_codec

pytestmark = pytest.mark.integration

Item = tuple[str, str, str, str, int, Any]  # (site, run, kind, tag, step, value)
LEVELS = np.array([0.0, 0.25, 0.5, 1.0, 1.5, -1.0], dtype=np.float32)
LEVEL_PIXELS = np.array([0, 63, 127, 255, 255, 0], dtype=np.uint8)  # x255, clipped, truncated


def f32(x: float) -> float:
    return float(np.float32(x))


def drain(sink: TensorBoardSink, bootstrap: str, topic: str, group: str | None = None) -> Any:
    config = LoopConfig(
        bootstrap_servers=bootstrap,
        topic=topic,
        group=group or f"g-{uuid.uuid4().hex}",
        until_end=True,
        flush_interval_s=1,
    )
    return run_sink(sink, config, handle_signals=False)


def send_site(bootstrap: str, topic: str, job: str, i: int) -> list[Item]:
    """One site's mix of every kind TensorBoard shows, through all three writer styles;
    returns what TensorBoard must show for it."""
    site = f"site-{i}"
    rng = np.random.default_rng(i)
    gray = rng.integers(0, 256, (4, 5), dtype=np.uint8)
    hwc = rng.integers(0, 256, (6, 5, 3), dtype=np.uint8)
    index = rng.integers(0, len(LEVELS), (3, 4, 6))
    expected: list[Item] = []
    kw: dict[str, Any] = {
        "site": site,
        "job_id": job,
        "bootstrap_servers": bootstrap,
        "topic": topic,
    }
    with AnalyticsSender(**kw) as s:
        s.add_scalar("loss", i + 0.5, 0)  # step 0 stays 0
        s.add_scalar("loss", i + 0.25, 1)
        s.add("lr", 0.1 * i, AnalyticsDataType.SCALAR)  # no step: 0, 1 per (site, tag)
        s.add("lr", 0.2 * i, AnalyticsDataType.SCALAR)
        s.add_scalars("train/acc", {"top1": 0.5 + i, "top5": 0.75 + i}, 3)
        s.add_text("note", f"**site {i}** says hé", 4)
        s.add_image("gray", gray, 5)
        s.add_image("hwc", hwc, 6)
        s.add_image("chw", LEVELS[index], 7)
        s.add_image("explicit", hwc[:3, :3], 8, dataformats="HWC")
        s.add("hp", {"momentum": 0.9, "opt": "sgd"}, AnalyticsDataType.PARAMETERS, 9)
    expected += [
        (site, "", "scalar", "loss", 0, f32(i + 0.5)),
        (site, "", "scalar", "loss", 1, f32(i + 0.25)),
        (site, "", "scalar", "lr", 0, f32(0.1 * i)),
        (site, "", "scalar", "lr", 1, f32(0.2 * i)),
        (site, "train_acc_top1", "scalar", "train/acc", 3, f32(0.5 + i)),
        (site, "train_acc_top5", "scalar", "train/acc", 3, f32(0.75 + i)),
        (site, "", "text", "note/text_summary", 4, f"**site {i}** says hé"),
        (site, "", "image", "gray", 5, gray.tobytes()),
        (site, "", "image", "hwc", 6, hwc.tobytes()),
        (site, "", "image", "chw", 7, LEVEL_PIXELS[index].transpose(1, 2, 0).tobytes()),
        (site, "", "image", "explicit", 8, hwc[:3, :3].tobytes()),
        (site, "", "scalar", "momentum", 9, f32(0.9)),
        (site, "", "text", "opt/text_summary", 9, "sgd"),
    ]
    with MLflowWriter(**kw) as mlflow:
        mlflow.log_metric("val_loss", 1.0 / (i + 1), step=10)  # METRIC read as SCALAR
        mlflow.log_metrics({"f1": 0.125 * i, "auc": 0.5}, step=11)  # METRICS -> subdirectories
        mlflow.log_params({"batch": 32 * i, "arch": "resnet"})  # no step: 0
        mlflow.log_text("a text artifact", "notes/a.txt")
        mlflow.set_tags({"team": f"t{i}"})
    expected += [
        (site, "", "scalar", "val_loss", 10, f32(1.0 / (i + 1))),
        (site, "metrics_f1", "scalar", "metrics", 11, f32(0.125 * i)),
        (site, "metrics_auc", "scalar", "metrics", 11, 0.5),
        (site, "", "scalar", "batch", 0, float(32 * i)),
        (site, "", "text", "arch/text_summary", 0, "resnet"),
        (site, "", "text", "text/text_summary", 0, "a text artifact"),
        (site, "", "text", "team/text_summary", 0, f"t{i}"),
    ]
    with WandBWriter(**kw) as wandb:
        wandb.log({"acc": 0.0625 * i}, step=0)
    expected.append((site, "metrics_acc", "scalar", "metrics", 0, f32(0.0625 * i)))
    return expected


def read_back(root: Path, job: str) -> list[Item]:
    """Everything TensorBoard's reader finds under ``<root>/<job>/``."""
    items: list[Item] = []
    for site_dir in sorted((root / job).iterdir()):
        for run in [site_dir, *sorted(p for p in site_dir.rglob("*") if p.is_dir())]:
            name = "" if run == site_dir else run.relative_to(site_dir).as_posix()
            acc = EventAccumulator(
                str(run),
                size_guidance={"scalars": 0, "tensors": 0, "images": 0},
                purge_orphaned_data=False,
            )
            acc.Reload()
            tags = acc.Tags()
            for tag in tags["scalars"]:
                items += [
                    (site_dir.name, name, "scalar", tag, e.step, e.value) for e in acc.Scalars(tag)
                ]
            for tag in tags["tensors"]:
                assert acc.SummaryMetadata(tag).plugin_data.plugin_name == "text"
                for e in acc.Tensors(tag):
                    text = tensor_util.make_ndarray(e.tensor_proto).item().decode()
                    items.append((site_dir.name, name, "text", tag, e.step, text))
            for tag in tags["images"]:
                for e in acc.Images(tag):
                    pixels = np.asarray(Image.open(io.BytesIO(e.encoded_image_string)))
                    assert (e.height, e.width) == pixels.shape[:2]
                    items.append((site_dir.name, name, "image", tag, e.step, pixels.tobytes()))
    return items


def test_what_three_sites_send_is_what_tensorboard_reads(
    kafka_bootstrap: str, topic: str, tmp_path: Path
):
    job = f"job-{uuid.uuid4().hex[:8]}"
    expected = [item for i in (1, 2, 3) for item in send_site(kafka_bootstrap, topic, job, i)]
    stats = drain(TensorBoardSink(tmp_path), kafka_bootstrap, topic)
    assert stats.dead_lettered == 0
    got = read_back(tmp_path, job)
    assert Counter(got) == Counter(expected)
    assert sorted(p.name for p in (tmp_path / job).iterdir()) == ["site-1", "site-2", "site-3"]


def test_a_new_group_over_the_same_records_writes_no_duplicates(
    kafka_bootstrap: str, topic: str, tmp_path: Path
):
    job = f"job-{uuid.uuid4().hex[:8]}"
    expected = send_site(kafka_bootstrap, topic, job, 1) + send_site(kafka_bootstrap, topic, job, 2)
    first = drain(TensorBoardSink(tmp_path), kafka_bootstrap, topic)
    assert Counter(read_back(tmp_path, job)) == Counter(expected)
    second = drain(TensorBoardSink(tmp_path), kafka_bootstrap, topic)  # every record again
    assert second.consumed == first.consumed > 0
    assert Counter(read_back(tmp_path, job)) == Counter(expected)


def test_a_site_escaping_the_logdir_goes_to_the_dead_letter_topic(
    kafka_bootstrap: str, topic: str, tmp_path: Path
):
    job = f"job-{uuid.uuid4().hex[:8]}"
    logdir = tmp_path / "logs"
    codec = default_codec()
    producer = Producer({"bootstrap.servers": kafka_bootstrap})
    for n, site in enumerate(["../evil", "../../evil", ".hidden"]):
        bad = Record(site, job, "feedfacefeedface", n, int(time.time() * 1000), "loss",
                     AnalyticsDataType.SCALAR, 1.0, step=1)  # fmt: skip
        producer.produce(topic, codec.encode(bad), site.encode())
    assert producer.flush(30) == 0
    with AnalyticsSender(site="site-1", job_id=job, bootstrap_servers=kafka_bootstrap,
                         topic=topic) as sender:  # fmt: skip
        sender.add_scalar("loss", 2.5, 1)

    stats = drain(TensorBoardSink(logdir), kafka_bootstrap, topic)
    assert stats.dead_lettered == 3
    dead = read_topic(kafka_bootstrap, f"{topic}.dlq")
    infos = [(dead_letter_info(headers), value) for value, headers in dead]
    assert [info["sink"] for info, _ in infos] == ["tensorboard"] * 3
    for info, value in infos:
        site = codec.decode(value).site  # the original bytes, unchanged
        assert f"site {site!r} would escape" in info["error"], info
        assert info["topic"] == topic and info["offset"].isdigit()
    assert {codec.decode(v).site for _, v in infos} == {"../evil", "../../evil", ".hidden"}
    assert not [p for p in tmp_path.rglob("*evil*")]
    assert sorted(p.name for p in tmp_path.iterdir()) == ["logs"]
    assert read_back(logdir, job) == [("site-1", "", "scalar", "loss", 1, 2.5)]


def test_the_command_line_drains_into_the_logdir(
    kafka_bootstrap: str, topic: str, tmp_path: Path, run_cli: Any
):
    job = f"job-{uuid.uuid4().hex[:8]}"
    with AnalyticsSender(site="site-1", job_id=job, bootstrap_servers=kafka_bootstrap,
                         topic=topic) as sender:  # fmt: skip
        for step in range(20):
            sender.add_scalar("loss", step / 4, step)
    result = run_cli(
        "sink", "tensorboard", "--logdir", str(tmp_path), "--bootstrap-servers", kafka_bootstrap,
        "--topic", topic, "--group", f"g-{uuid.uuid4().hex}", "--until-end",
    )  # fmt: skip
    assert result.rc == 0, result.err
    assert str(tmp_path) in result.err  # describe() names the logdir
    got = read_back(tmp_path, job)
    assert Counter(got) == Counter(("site-1", "", "scalar", "loss", s, s / 4) for s in range(20))


def read_topic(bootstrap: str, topic: str) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    """Every message of ``topic`` (value, headers), read with a plain consumer."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}"})
    try:
        parts = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p))[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts if ends[p] > 0])
        out: list[tuple[bytes, list[tuple[str, bytes]]]] = []
        deadline = time.monotonic() + 60
        while len(out) < sum(ends.values()) and time.monotonic() < deadline:
            for msg in consumer.consume(500, 1):
                if not msg.error():
                    out.append((msg.value() or b"", list(msg.headers() or [])))
        return out
    finally:
        consumer.close()
