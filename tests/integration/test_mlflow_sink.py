"""The MLflow sink against a real broker, read back with MLflow's own client, on a
sqlite store and on a real ``mlflow server`` over HTTP (started once per module)."""

from __future__ import annotations

import importlib.util
import sys
import threading
import time
import uuid
from collections import Counter, defaultdict
from collections.abc import Iterator
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from confluent_kafka import Consumer, TopicPartition

from flarestream.consumers import LoopConfig, run_sink
from flarestream.consumers.deadletter import dead_letter_info
from flarestream.consumers.mlflow_sink import MLflowSink
from flarestream.producer import AnalyticsSender, MLflowWriter, SummaryWriter
from flarestream.schemas import LogWriterName, Record, default_codec
from flarestream.schemas.dxo import received
from flarestream.schemas.record import AnalyticsDataType as T

pytestmark = pytest.mark.integration
HERE = Path(__file__).parent


def _load(name: str, path: Path) -> ModuleType:
    if name in sys.modules:
        return sys.modules[name]
    spec = importlib.util.spec_from_file_location(name, path)
    assert spec is not None and spec.loader is not None
    module = importlib.util.module_from_spec(spec)
    sys.modules[name] = module
    spec.loader.exec_module(module)
    return module


_server = _load("flarestream_test_mlflow_server", HERE / "mlflow_server.py")
_harness = _load("flarestream_test_mlflow_harness", HERE / "sinks" / "mlflow_harness.py")
mlflow_server = _server.mlflow_server  # the module-scoped fixture, by its own name

History = dict[str, list[tuple[float, int, int]]]  # metric key -> (value, step, timestamp)


def mlflow_client(uri: str) -> Any:
    # imported while a test runs, so that MLflow sees pytest and sends no telemetry
    from mlflow.tracking import MlflowClient

    return MlflowClient(tracking_uri=uri)


@pytest.fixture(params=["sqlite", "server"])
def store(request: pytest.FixtureRequest, tmp_path: Path) -> str:
    """A tracking URI: a fresh sqlite file, or the module's mlflow server."""
    if request.param == "sqlite":
        return f"sqlite:///{tmp_path / 'mlflow.db'}"
    return str(request.getfixturevalue("mlflow_server").uri)


def drain(sink: MLflowSink, bootstrap: str, topic: str, group: str | None = None) -> Any:
    config = LoopConfig(
        bootstrap_servers=bootstrap,
        topic=topic,
        group=group or f"g-{uuid.uuid4().hex}",
        until_end=True,
        flush_interval_s=60,  # one flush at the end: every record of a run in one flush
    )
    return run_sink(sink, config, handle_signals=False)


def topic_records(bootstrap: str, topic: str) -> Iterator[Record]:
    """Every record on the topic, decoded (to know the sender's timestamps)."""
    codec = default_codec()
    for value, _headers in read_all(bootstrap, topic):
        yield codec.decode(value)


def read_all(bootstrap: str, topic: str) -> list[tuple[bytes, list[tuple[str, bytes]]]]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}"})
    try:
        parts = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=10)[1]
            for p in parts
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in parts if ends[p] > 0])
        out: list[tuple[bytes, list[tuple[str, bytes]]]] = []
        remaining = sum(ends.values())
        deadline = time.monotonic() + 60
        while remaining > 0:
            assert time.monotonic() < deadline, f"{remaining} messages of {topic} never came"
            for msg in consumer.consume(500, 0.5):  # returns early only with 500 messages
                if msg.error() is None:
                    out.append((msg.value() or b"", list(msg.headers() or [])))
                    remaining -= 1
        return out
    finally:
        consumer.close()


def expected_metrics(records: Iterator[Record], job: str) -> dict[str, History]:
    """site -> metric histories, as NVFlare's MLflow receiver reads the records,
    stamped with the sender's time."""
    out: dict[str, History] = defaultdict(lambda: defaultdict(list))
    for r in records:
        view = received(r, LogWriterName.MLFLOW)
        if r.job_id != job or view.data_type not in (T.METRIC, T.METRICS):
            continue
        values = view.value if view.data_type is T.METRICS else {view.tag: view.value}
        for key, value in values.items():
            out[r.site][key].append((float(value), view.step or 0, r.timestamp_ms))
    return {site: {k: sorted(v) for k, v in h.items()} for site, h in out.items()}


def job_runs(uri: str, job: str) -> dict[str, Any]:
    """site -> the job's active run (asserting there is only one per site)."""
    from mlflow.entities import ViewType

    client = mlflow_client(uri)
    exps = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    found = [
        r for r in client.search_runs(exps, max_results=5000) if r.data.tags.get("job_id") == job
    ]
    sites = Counter(r.data.tags["site"] for r in found)
    assert all(n == 1 for n in sites.values()), f"more than one run for a site: {sites}"
    return {r.data.tags["site"]: r for r in found}


def histories(uri: str, run: Any) -> History:
    client = mlflow_client(uri)
    rows = {key: client.get_metric_history(run.info.run_id, key) for key in run.data.metrics}
    return {key: sorted((m.value, m.step, m.timestamp) for m in h) for key, h in rows.items()}


def log_like_a_site(bootstrap: str, topic: str, job: str, site: str, n: int) -> None:
    """What a site logs through NVFlare's writers (MLflow and TensorBoard style)."""
    with AnalyticsSender(site=site, job_id=job, bootstrap_servers=bootstrap, topic=topic) as s:
        mlf, tb = MLflowWriter(sender=s), SummaryWriter(sender=s)
        mlf.log_params({"lr": 0.01 * n, "optimizer": "adam"})
        mlf.log_param("rounds", 5)
        mlf.set_tags({"team": f"team-{n}"})
        mlf.set_tag("phase", "train")
        for step in range(10):
            mlf.log_metric("loss", 1.0 / (step + n), step=step)
            mlf.log_metrics({"acc": step / 10 + n, "f1": step / 20}, step=step)
            tb.add_scalar("val_loss", 2.0 / (step + n), global_step=step)
            tb.add_scalars("sched", {"lr_now": 0.1 * step}, global_step=step)
        mlf.log_text(f"report of {site}\n", "reports/summary.txt")


def send_sites(bootstrap: str, topic: str, job: str, sites: int) -> list[str]:
    names = [f"site-{n}" for n in range(1, sites + 1)]
    threads = [
        threading.Thread(target=log_like_a_site, args=(bootstrap, topic, job, name, n))
        for n, name in enumerate(names, 1)
    ]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    return names


def test_every_metric_param_tag_and_text_reads_back_as_sent(
    store: str, kafka_bootstrap: str, topic: str, tmp_path: Path
):
    job = f"job-{uuid.uuid4().hex[:10]}"
    experiment = "FLARE FL Experiment" if store.startswith("sqlite") else "exp {job_id}"
    sites = send_sites(kafka_bootstrap, topic, job, 3)
    sink = MLflowSink(tracking_uri=store, experiment_name=experiment, run_tags={"owner": "ci"})
    stats = drain(sink, kafka_bootstrap, topic)
    assert stats.dead_lettered == 0

    runs = job_runs(store, job)
    assert sorted(runs) == sites
    assert len({r.info.experiment_id for r in runs.values()}) == 1
    client = mlflow_client(store)
    exp = client.get_experiment(next(iter(runs.values())).info.experiment_id)
    assert exp.name == experiment.format(job_id=job)
    expected = expected_metrics(topic_records(kafka_bootstrap, topic), job)
    for n, site in enumerate(sites, 1):
        run = runs[site]
        tags = run.data.tags
        assert run.info.run_name == f"{site}-{job[:6]}-FLARE FL Run" == tags["run_name"]
        assert (tags["site"], tags["job_id"], tags["owner"]) == (site, job, "ci")
        assert (tags["team"], tags["phase"]) == (f"team-{n}", "train")
        assert run.data.params == {"lr": str(0.01 * n), "optimizer": "adam", "rounds": "5"}
        got = histories(store, run)
        assert set(got) == {"loss", "acc", "f1", "val_loss", "lr_now"}
        assert got == expected[site]
        assert sorted(s for _v, s, _t in got["loss"]) == list(range(10))
        text = Path(
            client.download_artifacts(run.info.run_id, "reports/summary.txt", str(tmp_path))
        )
        assert text.read_text() == f"report of {site}\n"


def test_harness_reads_every_metric_row_of_the_job(
    kafka_bootstrap: str, topic: str, tmp_path: Path
):
    job = f"job-{uuid.uuid4().hex[:10]}"
    with AnalyticsSender(
        site="site-1", job_id=job, bootstrap_servers=kafka_bootstrap, topic=topic
    ) as s:
        for step in range(20):
            s.add("loss", step / 4, T.SCALAR, global_step=step)
    drain(_harness.HARNESS.make_sink(tmp_path), kafka_bootstrap, topic)
    points = _harness.HARNESS.read_points(tmp_path, job)
    assert Counter(points) == Counter(("site-1", "loss", step, step / 4) for step in range(20))
    assert _harness.HARNESS.read_points(tmp_path, "another-job") == []


def test_replay_from_the_beginning_adds_nothing(kafka_bootstrap: str, topic: str, tmp_path: Path):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = f"job-{uuid.uuid4().hex[:10]}"
    send_sites(kafka_bootstrap, topic, job, 2)
    drain(MLflowSink(tracking_uri=uri), kafka_bootstrap, topic)
    before = {site: histories(uri, run) for site, run in job_runs(uri, job).items()}

    drain(MLflowSink(tracking_uri=uri), kafka_bootstrap, topic)  # a new group: from offset 0
    assert {site: histories(uri, run) for site, run in job_runs(uri, job).items()} == before

    # without the sink's offset tags, MLflow still keeps one row per (sender time, step, value)
    client = mlflow_client(uri)
    for run in job_runs(uri, job).values():
        for key in [k for k in run.data.tags if k.startswith("flarestream.offset.")]:
            client.delete_tag(run.info.run_id, key)
    drain(MLflowSink(tracking_uri=uri), kafka_bootstrap, topic)
    assert {site: histories(uri, run) for site, run in job_runs(uri, job).items()} == before


def test_one_flush_over_mlflow_batch_limits_lands_whole(
    kafka_bootstrap: str, topic: str, tmp_path: Path
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = f"job-{uuid.uuid4().hex[:10]}"
    params = {f"param_{i}": i for i in range(250)}
    wide = {f"wide_{i}": float(i) for i in range(1200)}  # one record over 1000 metrics
    with MLflowWriter(site="big", job_id=job, bootstrap_servers=kafka_bootstrap, topic=topic) as w:
        w.log_params(params)
        w.log_metrics(wide, step=1)
        for i in range(2500):
            w.log_metric(f"m{i % 5}", i / 3, step=i)
    # 2,502 records, fewer than a flush's 10,000 and well within its 60 s: one flush
    drain(MLflowSink(tracking_uri=uri), kafka_bootstrap, topic)
    run = job_runs(uri, job)["big"]
    assert run.data.params == {k: str(v) for k, v in params.items()}
    got = histories(uri, run)
    assert {k: [(v, s) for v, s, _t in h] for k, h in got.items() if k.startswith("wide_")} == {
        k: [(v, 1)] for k, v in wide.items()
    }
    for j in range(5):
        assert [(v, s) for v, s, _t in got[f"m{j}"]] == [(i / 3, i) for i in range(j, 2500, 5)]


def test_two_sinks_racing_on_new_sites_make_one_run_each(
    mlflow_server: Any, kafka_bootstrap: str, topic: str
):
    job = f"job-{uuid.uuid4().hex[:10]}"
    sites = send_sites(kafka_bootstrap, topic, job, 3)
    sinks = [MLflowSink(tracking_uri=mlflow_server.uri) for _ in range(2)]
    for sink in sinks:
        sink.open()  # connect first, so that both reach the new sites together
    errors: list[BaseException] = []

    def run(sink: MLflowSink) -> None:
        try:
            drain(sink, kafka_bootstrap, topic)
        except BaseException as exc:  # surfaced below
            errors.append(exc)

    threads = [threading.Thread(target=run, args=(s,)) for s in sinks]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    assert not errors, errors
    runs = job_runs(mlflow_server.uri, job)
    assert sorted(runs) == sites
    expected = expected_metrics(topic_records(kafka_bootstrap, topic), job)
    assert {s: histories(mlflow_server.uri, r) for s, r in runs.items()} == expected


def test_refused_records_go_to_the_dead_letter_topic_and_the_rest_lands(
    kafka_bootstrap: str, topic: str, tmp_path: Path
):
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    job = f"job-{uuid.uuid4().hex[:10]}"
    with MLflowWriter(site="s1", job_id=job, bootstrap_servers=kafka_bootstrap, topic=topic) as w:
        w.log_param("lr", 0.1)
        w.log_metric("loss", 0.5, step=1)
        w.log_param("k" * 300, 1)  # a key over MLflow's 250 characters
        w.log_param("lr", 0.2)  # MLflow does not allow changing a param
        w.log_metric("loss", 0.25, step=2)
    stats = drain(MLflowSink(tracking_uri=uri), kafka_bootstrap, topic)
    assert stats.dead_lettered == 2
    dead = [
        dead_letter_info(headers) for _value, headers in read_all(kafka_bootstrap, f"{topic}.dlq")
    ]
    assert sorted(d["offset"] for d in dead) == ["2", "3"]
    assert all(d["sink"] == "mlflow" and d["topic"] == topic for d in dead)
    errors = " | ".join(d["error"] for d in dead)
    assert "300 characters" in errors and "'lr'" in errors and "0.1" in errors
    run = job_runs(uri, job)["s1"]
    assert run.data.params == {"lr": "0.1"}
    assert sorted((s, v) for v, s, _t in histories(uri, run)["loss"]) == [(1, 0.5), (2, 0.25)]
