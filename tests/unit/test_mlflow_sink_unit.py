"""The MLflow sink without a broker: record mapping, MLflow's limits, idempotence,
refusals, retries and racing creators, against a real sqlite tracking store."""

from __future__ import annotations

import argparse
import functools
import math
import struct
import threading
import zlib
from pathlib import Path
from typing import Any

import numpy as np
import pytest

from flarestream.consumers.mlflow_batches import (
    MAX_ENTITIES_PER_BATCH,
    MAX_METRICS_PER_BATCH,
    MAX_PARAMS_PER_BATCH,
    MAX_TAGS_PER_BATCH,
    REQUEST_BUDGET_BYTES,
    MetricEntry,
    RecordRefused,
    batches,
    encode_png,
    entries_for,
)
from flarestream.consumers.mlflow_sink import MLflowSink, mask_uri
from flarestream.consumers.sink import Delivered
from flarestream.errors import ConfigError, FlarestreamError
from flarestream.schemas.dxo import received
from flarestream.schemas.record import AnalyticsDataType as T
from flarestream.schemas.record import LogWriterName as W
from flarestream.schemas.record import Record

NOW = 1_700_000_000_000


def rec(
    tag: str,
    dt: T,
    value: Any,
    step: int | None = None,
    path: str | None = None,
    writer: W = W.MLFLOW,
    site: str = "site-1",
    job: str = "job-1",
    seq: int = 0,
) -> Record:
    return Record(site, job, "sender-a", seq, NOW + seq, tag, dt, value, writer, step, path, {})


def delivered(offset: int, *args: Any, partition: int = 0, **kwargs: Any) -> Delivered:
    record = rec(*args, seq=offset, **kwargs)
    return Delivered("topic-a", partition, offset, NOW, b"raw", record)


def entries(record: Record) -> Any:
    return entries_for(record, received(record, W.MLFLOW))


@pytest.fixture
def uri(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path / 'store' / 'mlflow.db'}"


def fast_sink(uri: str, **kwargs: Any) -> MLflowSink:
    sink = MLflowSink(tracking_uri=uri, backoff_s=0.01, **kwargs)
    sink.open()
    return sink


def mlflow_client(uri: str) -> Any:
    # imported while a test runs, so that MLflow sees pytest and sends no telemetry
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


def runs(uri: str) -> list[Any]:
    from mlflow.entities import ViewType

    client = mlflow_client(uri)
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    return list(client.search_runs(exps, run_view_type=ViewType.ACTIVE_ONLY)) if exps else []


def history(uri: str, run_id: str, key: str) -> list[tuple[float, int, int]]:
    client = mlflow_client(uri)
    return [(m.value, m.step, m.timestamp) for m in client.get_metric_history(run_id, key)]


# -- what each record becomes --------------------------------------------------------
def test_metric_records_keep_sender_timestamp_and_step():
    e = entries(rec("loss", T.METRIC, 0.25, step=7, seq=3))
    assert e.metrics == [MetricEntry("loss", 0.25, NOW + 3, 7)]
    e = entries(rec("metrics", T.METRICS, {"a": 1, "b": True}))
    assert e.metrics == [MetricEntry("a", 1.0, NOW, 0), MetricEntry("b", 1.0, NOW, 0)]


def test_tensorboard_scalars_read_as_metrics_like_nvflare():
    e = entries(rec("acc", T.SCALAR, 0.5, step=2, writer=W.TORCH_TB))
    assert e.metrics == [MetricEntry("acc", 0.5, NOW, 2)]
    e = entries(rec("loss", T.SCALARS, {"train": 1.0, "val": 2.0}, step=1, writer=W.TORCH_TB))
    assert [m.key for m in e.metrics] == ["train", "val"]


def test_params_tags_and_text_become_mlflow_entities():
    assert entries(rec("lr", T.PARAMETER, 0.1)).params == {"lr": "0.1"}
    assert entries(rec("params", T.PARAMETERS, {"a": 1, "b": "x"})).params == {"a": "1", "b": "x"}
    assert entries(rec("team", T.TAG, "blue")).tags == {"team": "blue"}
    assert entries(rec("tags", T.TAGS, {"k": 2})).tags == {"k": "2"}
    assert entries(rec("text", T.TEXT, "hi", path="notes/a.txt")).artifacts == {
        "notes/a.txt": b"hi"
    }
    assert list(entries(rec("log/x", T.TEXT, "hi", step=4)).artifacts) == ["text/log_x-step-4.txt"]
    no_step = entries(rec("t", T.TEXT, "hi", seq=9)).artifacts
    assert list(no_step) == ["text/t-sender-a-9.txt"]
    assert entries(rec("m", T.MODEL, {"w": 1})) is None


def test_long_param_values_are_cut_like_mlflow_does():
    assert entries(rec("p", T.PARAMETER, "v" * 7000)).params == {"p": "v" * 6000}


@pytest.mark.parametrize("key", ["k" * 251, "bad key!", "../up", "a//b", "", "/abs"])
def test_keys_mlflow_refuses_are_refused(key: str):
    with pytest.raises(RecordRefused):
        entries(rec(key, T.METRIC, 1.0))
    with pytest.raises(RecordRefused):
        entries(rec("params", T.PARAMETERS, {key: 1}))


def test_a_250_character_key_is_accepted():
    assert entries(rec("k" * 250, T.METRIC, 1.0)).metrics[0].key == "k" * 250


def test_the_sinks_own_tag_prefix_is_refused():
    with pytest.raises(RecordRefused, match="reserved"):
        entries(rec("flarestream.run_key", T.TAG, "x"))


@pytest.mark.parametrize("path", ["/etc/passwd", "../x.txt", "a/../../b", "a\\b", "a//b", "x\n"])
def test_artifact_paths_leaving_the_run_are_refused(path: str):
    with pytest.raises(RecordRefused):
        entries(rec("text", T.TEXT, "hi", path=path))


def _png_pixels(data: bytes) -> tuple[int, int, int, bytes]:
    assert data[:8] == b"\x89PNG\r\n\x1a\n"
    pos, idat, header = 8, b"", b""
    while pos < len(data):
        (length,) = struct.unpack(">I", data[pos : pos + 4])
        kind, body = data[pos + 4 : pos + 8], data[pos + 8 : pos + 8 + length]
        (crc,) = struct.unpack(">I", data[pos + 8 + length : pos + 12 + length])
        assert crc == zlib.crc32(kind + body) & 0xFFFFFFFF
        header = body if kind == b"IHDR" else header
        idat += body if kind == b"IDAT" else b""
        pos += 12 + length
    width, height, _depth, color = struct.unpack(">IIBB", header[:10])
    return width, height, color, zlib.decompress(idat)


def test_images_become_pngs_with_the_same_pixels():
    chw = np.zeros((3, 2, 4), dtype=np.float32)
    chw[0] = 1.0  # red, scaled by 255
    width, height, color, raw = _png_pixels(encode_png("img", chw))
    assert (width, height, color) == (4, 2, 2)
    assert raw == (b"\x00" + b"\xff\x00\x00" * 4) * 2
    hwc = chw.transpose(1, 2, 0)
    assert _png_pixels(encode_png("img", hwc, "HWC")) == (width, height, color, raw)
    grey = np.arange(6, dtype=np.uint8).reshape(2, 3)
    assert _png_pixels(encode_png("g", grey))[3] == b"\x00\x00\x01\x02\x00\x03\x04\x05"
    with pytest.raises(RecordRefused):
        encode_png("bad", np.zeros((5, 5, 5)))


# -- batching ------------------------------------------------------------------------
def test_batches_stay_within_mlflow_limits_and_keep_everything_in_order():
    metrics = [MetricEntry(f"m{i % 7}", float(i), NOW, i) for i in range(2500)]
    params = [(f"p{i}", str(i)) for i in range(250)]
    tags = [(f"t{i}", "v") for i in range(150)]
    out = batches(metrics, params, tags, [("marker", "1")])
    for b in out:
        assert len(b.metrics) <= MAX_METRICS_PER_BATCH
        assert len(b.params) <= MAX_PARAMS_PER_BATCH
        assert len(b.tags) <= MAX_TAGS_PER_BATCH
        assert len(b.metrics) + len(b.params) + len(b.tags) <= MAX_ENTITIES_PER_BATCH
    assert [m for b in out for m in b.metrics] == metrics
    assert [p for b in out for p in b.params] == params
    assert [t for b in out for t in b.tags] == [*tags, ("marker", "1")]
    assert out[-1].tags[-1] == ("marker", "1")


def test_batches_split_by_request_size():
    params = [(f"p{i}", "v" * 6000) for i in range(100)]
    tags = [(f"t{i}", "v" * 8000) for i in range(100)]  # 1.4 MB in all: over MLflow's 1 MB
    out = batches([], params, tags)
    assert len(out) > 1
    for b in out:
        assert sum(len(k) + len(v) for k, v in [*b.params, *b.tags]) <= REQUEST_BUDGET_BYTES
    assert [p for b in out for p in b.params] == params
    assert batches([], [], []) == []


# -- configuration -------------------------------------------------------------------
def test_command_line_options_build_the_sink(tmp_path: Path):
    parser = argparse.ArgumentParser()
    MLflowSink.add_arguments(parser)
    args = parser.parse_args(
        ["--tracking-uri", f"sqlite:///{tmp_path}/m.db", "--experiment-name", "exp {job_id}",
         "--experiment-tag", "team=a", "--run-tag", "k=v=w", "--run-name", "{site}"]
    )  # fmt: skip
    sink = MLflowSink.from_args(args)
    assert sink.experiment_name == "exp {job_id}" and sink.run_name == "{site}"
    assert sink.experiment_tags == {"team": "a"} and sink.run_tags == {"k": "v=w"}
    assert sink.describe()["artifact_location"] == str(tmp_path / "mlartifacts")


@pytest.mark.parametrize(
    "kwargs",
    [{"experiment_name": "{nope}"}, {"run_name": "{site"}, {"run_tags": {"flarestream.x": "1"}},
     {"experiment_tags": {"bad key!": "1"}}, {"tracking_uri": "sqlite://"},
     {"tracking_uri": "./mlruns"}, {"tracking_uri": "file:///tmp/mlruns"}],
)  # fmt: skip
def test_bad_settings_are_config_errors(kwargs: dict[str, Any], uri: str):
    with pytest.raises(ConfigError):
        MLflowSink(**{"tracking_uri": uri, **kwargs})


def test_describe_masks_the_password():
    sink = MLflowSink(tracking_uri="https://alice:s3cret@mlflow.example:5000/x?token=abc")
    text = str(sink.describe())
    assert "s3cret" not in text and "abc" not in text and "alice" in text
    assert mask_uri("http://h:1/p") == "http://h:1/p"


# -- against a sqlite store ----------------------------------------------------------
def test_runs_are_created_per_site_with_nvflare_names_and_tags(uri: str):
    sink = fast_sink(uri, run_tags={"team": "blue"})
    batch = [
        delivered(0, "loss", T.METRIC, 1.0, step=1),
        delivered(1, "loss", T.METRIC, 2.0, step=1, site="site-2", job="job-123456789"),
    ]
    assert sink.write(batch) == []
    assert sink.flush() is None
    got = {r.data.tags["site"]: r for r in runs(uri)}
    assert set(got) == {"site-1", "site-2"}
    assert got["site-2"].info.run_name == "site-2-job-12-FLARE FL Run"
    assert got["site-2"].data.tags["job_id"] == "job-123456789"
    assert got["site-2"].data.tags["team"] == "blue"
    assert history(uri, got["site-1"].info.run_id, "loss") == [(1.0, 1, NOW)]


def test_a_replayed_batch_adds_nothing(uri: str):
    batch = [delivered(i, "loss", T.METRIC, float(i), step=i) for i in range(5)]
    batch.append(delivered(5, "params", T.PARAMETERS, {"lr": 0.1}))
    first = fast_sink(uri)
    first.write(batch)
    first.flush()
    again = fast_sink(uri)  # a restart: a new sink, same store
    assert again.write(batch) == []
    again.flush()
    (run,) = runs(uri)
    assert history(uri, run.info.run_id, "loss") == [(float(i), i, NOW + i) for i in range(5)]
    assert run.data.tags["flarestream.offset.topic-a.0"] == "5"


def test_a_changed_param_is_rejected_and_the_rest_lands(uri: str):
    sink = fast_sink(uri)
    out = sink.write([delivered(0, "lr", T.PARAMETER, 0.1), delivered(1, "lr", T.PARAMETER, 0.2),
                      delivered(2, "loss", T.METRIC, 1.0)])  # fmt: skip
    assert [r.delivered.offset for r in out] == [1]
    assert "lr" in out[0].reason and "0.1" in out[0].reason
    sink.flush()
    later = fast_sink(uri).write([delivered(3, "lr", T.PARAMETER, 0.3)])  # known to the store
    assert len(later) == 1
    (run,) = runs(uri)
    assert run.data.params == {"lr": "0.1"} and run.data.metrics == {"loss": 1.0}


def test_unsafe_sites_and_bad_keys_are_rejected_not_raised(uri: str):
    sink = fast_sink(uri)
    out = sink.write([delivered(0, "loss", T.METRIC, 1.0, site="../escape"),
                      delivered(1, "x" * 300, T.METRIC, 1.0),
                      delivered(2, "m", T.MODEL, {"w": 1}),
                      delivered(3, "ok", T.METRIC, 1.0)])  # fmt: skip
    assert [r.delivered.offset for r in out] == [0, 1]
    sink.flush()
    assert [r.data.metrics for r in runs(uri)] == [{"ok": 1.0}]


def test_flush_when_idle_and_drop_forget_pending(uri: str):
    sink = fast_sink(uri)
    assert sink.flush() is None
    sink.write([delivered(0, "loss", T.METRIC, 1.0), delivered(1, "x", T.METRIC, 2.0, partition=1)])
    sink.drop([("topic-a", 1)])
    sink.flush()
    assert [r.data.metrics for r in runs(uri)] == [{"loss": 1.0}]


def test_failures_are_retried_and_nothing_is_lost_when_they_persist(uri: str, monkeypatch):
    sink = fast_sink(uri, attempts=3)
    sink.write([delivered(0, "loss", T.METRIC, 1.0)])
    real = sink.client.log_batch
    calls: list[int] = []

    def flaky(*args: Any, **kwargs: Any) -> Any:
        calls.append(1)
        if len(calls) <= 3:
            raise OSError("database is locked")
        return real(*args, **kwargs)

    monkeypatch.setattr(sink.client, "log_batch", flaky)
    with pytest.raises(FlarestreamError, match="after 3 attempts"):
        sink.flush()
    assert runs(uri)[0].data.metrics == {}
    assert sink.flush() is None  # the 4th call succeeds: the buffer was kept
    assert runs(uri)[0].data.metrics == {"loss": 1.0}


def test_a_deleted_experiment_is_a_config_error(uri: str):
    sink = fast_sink(uri)
    sink.write([delivered(0, "loss", T.METRIC, 1.0)])
    client = mlflow_client(uri)
    client.delete_experiment(client.get_experiment_by_name("FLARE FL Experiment").experiment_id)
    with pytest.raises(ConfigError, match="restore"):
        fast_sink(uri).write([delivered(1, "loss", T.METRIC, 1.0)])


def at_once(calls: list[Any]) -> None:
    """Run the calls in threads released together; re-raise the first error."""
    barrier = threading.Barrier(len(calls))
    errors: list[BaseException] = []

    def run(call: Any) -> None:
        try:
            barrier.wait()
            call()
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(c,)) for c in calls]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    if errors:
        raise errors[0]


def test_racing_sinks_end_with_one_run_per_site(uri: str):
    sinks = [fast_sink(uri), fast_sink(uri)]
    sites = [f"site-{i}" for i in range(4)]
    for n, site in enumerate(sites):  # each site's first record reaches both sinks at once
        at_once(
            [
                functools.partial(sink.write, [delivered(n, "loss", T.METRIC, v, site=site)])
                for sink, v in ((sinks[0], 1.0), (sinks[1], 2.0))
            ]
        )
    for sink in sinks:
        sink.flush()
    got = runs(uri)
    assert sorted(r.data.tags["site"] for r in got) == sites
    for r in got:
        values = {v for v, _s, _t in history(uri, r.info.run_id, "loss")}
        assert values == {1.0, 2.0}, r.data.tags["site"]


def test_two_sinks_flushing_the_same_records_at_once_both_succeed(uri: str):
    sinks = [fast_sink(uri), fast_sink(uri)]
    for site in ("a", "b", "c"):  # MLflow's store reports the writers' clash as BAD_REQUEST
        batch = [delivered(i, "loss", T.METRIC, float(i), step=i, site=site) for i in range(50)]
        batch.append(
            delivered(50, "params", T.PARAMETERS, {f"p{i}": i for i in range(20)}, site=site)
        )
        for sink in sinks:
            assert sink.write(batch) == []
        at_once([sink.flush for sink in sinks])
    for run in runs(uri):
        assert len(history(uri, run.info.run_id, "loss")) == 50 and len(run.data.params) == 20


def test_nan_metrics_are_stored(uri: str):
    sink = fast_sink(uri)
    sink.write([delivered(0, "loss", T.METRIC, math.nan, step=1)])
    sink.flush()
    ((value, step, _ts),) = history(uri, runs(uri)[0].info.run_id, "loss")
    assert math.isnan(value) and step == 1


def test_open_fails_when_the_store_cannot_be_reached(monkeypatch):
    monkeypatch.setenv("MLFLOW_HTTP_REQUEST_MAX_RETRIES", "0")
    sink = MLflowSink(tracking_uri="http://127.0.0.1:9", attempts=2, backoff_s=0.01)
    with pytest.raises(FlarestreamError, match="reach the tracking store"):
        sink.open()
