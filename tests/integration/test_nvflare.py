"""flarestream inside NVFlare: a real job streams through flarestream unchanged.

The slow test runs NVFlare's simulator on a 3-site, 2-round job whose trainer logs
a burst of scalars through NVFlare's own Client API ``SummaryWriter`` and a set of
``MLflowWriter`` calls, with flarestream's ``KafkaStreamer`` in place of
``ConvertToFedEvent`` (two sites train in the client job's process, one in an
external process); the TensorBoard and MLflow sinks then drain the topic and every
call the trainers made must be in both, once, in step order, under NVFlare's site
names. The faster tests drive the components with NVFlare's own event objects.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import random
import shutil
import subprocess
import sys
import time
import uuid
from collections import Counter, defaultdict
from pathlib import Path
from typing import Any

import numpy as np
import pytest
import tomllib
from confluent_kafka import Consumer, TopicPartition
from nvflare.apis.analytix import AnalyticsDataType as NT
from nvflare.apis.analytix import LogWriterName as NW
from nvflare.apis.event_type import EventType
from nvflare.apis.fl_constant import FedEventHeader, FLContextKey, ReservedKey
from nvflare.apis.fl_context import FLContext
from nvflare.apis.utils.analytix_utils import create_analytic_dxo as make_dxo
from nvflare.apis.utils.analytix_utils import send_analytic_dxo
from nvflare.app_common.widgets.convert_to_fed_event import ConvertToFedEvent
from tensorboard.backend.event_processing.event_accumulator import EventAccumulator
from tensorboard.util import tensor_util

from flarestream.consumers import LoopConfig, run_sink
from flarestream.consumers.mlflow_sink import MLflowSink
from flarestream.consumers.tensorboard_sink import TensorBoardSink
from flarestream.deploy import create_topic
from flarestream.producer.nvflare import KafkaReceiver, KafkaStreamer
from flarestream.producer.nvflare.reorder import StepReorderer
from flarestream.schemas import Record, default_codec

pytestmark = pytest.mark.integration

REPO = Path(__file__).resolve().parents[2]
JOB = Path(__file__).resolve().parent / "nvflare_job"
SITES = ["site-1", "site-2", "site-3"]
SIM_JOB_ID = "simulate_job"  # the simulator's job id


def read_topic(bootstrap: str, topic: str) -> list[Record]:
    """Every record on the topic, per partition in offset order."""
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": f"r-{uuid.uuid4().hex}"})
    codec, out = default_codec(), []
    try:
        parts = list(consumer.list_topics(topic, timeout=10).topics[topic].partitions)
        ends = {p: consumer.get_watermark_offsets(TopicPartition(topic, p), 10)[1] for p in parts}
        consumer.assign([TopicPartition(topic, p, 0) for p in parts if ends[p] > 0])
        remaining, deadline = sum(ends.values()), time.monotonic() + 60
        while remaining > 0:
            assert time.monotonic() < deadline, f"{remaining} messages never came"
            for msg in consumer.consume(500, 0.5):
                if msg.error() is None:
                    out.append(codec.decode(msg.value() or b""))
                    remaining -= 1
    finally:
        consumer.close()
    return out


# -- the reorder stage, alone ---------------------------------------------------------
def test_reorderer_releases_each_tag_in_step_order() -> None:
    out: list[tuple[str, int]] = []
    reorder: StepReorderer[tuple[str, int]] = StepReorderer(0.3, out.append)
    steps = list(range(200))
    random.Random(7).shuffle(steps)
    for step in steps:
        reorder.add("loss", step, ("loss", step))  # counted one by one
        reorder.add("acc", step * 10, ("acc", step * 10))  # with gaps: waits for the window
    reorder.add("text", None, ("text", -1))  # no step: not held
    assert ("text", -1) in out
    deadline = time.monotonic() + 10
    while reorder.held and time.monotonic() < deadline:
        time.sleep(0.05)
    assert [s for t, s in out if t == "loss"] == list(range(200))
    assert [s for t, s in out if t == "acc"] == list(range(0, 2000, 10))
    assert reorder.late == 0
    reorder.close()


def test_steps_that_follow_on_go_out_without_waiting() -> None:
    out: list[int] = []
    reorder: StepReorderer[int] = StepReorderer(30.0, out.append)
    for step in (0, 1, 1, 2, 4):
        reorder.add("loss", step, step)
    assert out == [0, 1, 1, 2] and reorder.held == 1  # 4 waits for 3
    reorder.add("loss", 3, 3)
    assert out == [0, 1, 1, 2, 3, 4] and reorder.held == 0
    reorder.close()


def test_reorderer_drain_releases_everything_held_in_step_order() -> None:
    out: list[int] = []
    reorder: StepReorderer[int] = StepReorderer(30.0, out.append)
    for step in (5, 3, 9, 1):
        reorder.add("loss", step, step)
    assert out == [] and reorder.held == 4  # 0 never came
    reorder.drain()
    assert out == [1, 3, 5, 9] and reorder.held == 0
    reorder.close()


def test_a_record_later_than_the_window_goes_out_at_once_and_widens_the_window() -> None:
    out: list[int] = []
    reorder: StepReorderer[int] = StepReorderer(0.1, out.append, max_window_s=0.3)
    reorder.add("loss", 5, 5)
    reorder.drain()
    reorder.add("loss", 3, 3)  # step 5 already left: 3 is late
    assert out == [5, 3] and reorder.late == 1 and reorder.window_s == 0.2
    reorder.add("loss", 2, 2)  # late in the same stall: the window grows once per window
    assert reorder.late == 2 and reorder.window_s == 0.2
    time.sleep(0.25)
    reorder.add("loss", 1, 1)
    assert reorder.window_s == 0.3  # never beyond max_window_s
    reorder.close()


# -- the components, with NVFlare's own event objects ---------------------------------
class _Engine:
    """What NVFlare's runtime does with an event: hand it to every component in turn."""

    def __init__(self, site: str, job_id: str, components: list[Any]) -> None:
        self.site, self.job_id, self.components = site, job_id, components

    def new_context(self) -> FLContext:
        ctx = FLContext()
        ctx.set_prop(ReservedKey.ENGINE, self, private=True, sticky=False)
        ctx.set_prop(ReservedKey.IDENTITY_NAME, self.site, private=False, sticky=True)
        ctx.set_prop(ReservedKey.RUN_NUM, self.job_id, private=False, sticky=True)
        return ctx

    def fire_event(self, event_type: str, fl_ctx: FLContext) -> None:
        for component in self.components:
            component.handle_event(event_type, fl_ctx)

    def fire(self, event_type: str) -> None:
        self.fire_event(event_type, self.new_context())


def _dxo_fields(dxo: Any) -> tuple[Any, ...]:
    data, meta = dxo.data, dxo.meta
    kwargs = {k: v for k, v in (data.get("analytics_kwargs") or {}).items() if v is not None}
    return (
        data["track_key"], data["track_value"], meta["analytics_data_type"].name,
        meta["tracker_key"].name, data.get("global_step"), data.get("path"), kwargs,
    )  # fmt: skip


def _record_fields(r: Record) -> tuple[Any, ...]:
    return (
        r.tag, r.value, r.data_type.name, r.writer.name, r.step, r.path, r.analytics_kwargs,
    )  # fmt: skip


def test_streamer_sends_each_record_of_the_site_once_in_step_order(
    kafka_bootstrap: str, topic: str
) -> None:
    streamer = KafkaStreamer(bootstrap_servers=kafka_bootstrap, topic=topic, reorder_window=0.2)
    # ConvertToFedEvent left in the job re-fires every local event as a federated one
    engine = _Engine("site-7", "job-a", [ConvertToFedEvent(["analytix_log_stats"]), streamer])
    engine.fire(EventType.START_RUN)
    image = np.arange(6, dtype=np.uint8).reshape(2, 3)
    local = [
        make_dxo("loss", 0.5 * i, NT.SCALAR, NW.TORCH_TB, global_step=i) for i in range(50)
    ] + [
        make_dxo("text", "hello", NT.TEXT, NW.MLFLOW, path="notes/a.txt"),
        make_dxo("params", {"lr": 0.1, "opt": "adam"}, NT.PARAMETERS, NW.MLFLOW),
        make_dxo("acc", {"a": 1, "b": 2.5}, NT.SCALARS, NW.TORCH_TB, global_step=3, walltime=1.5),
        make_dxo("img", image, NT.IMAGE, NW.TORCH_TB, global_step=0, dataformats="HW"),
    ]
    for d in local:  # as NVFlare's AnalyticsSender and the in-process Client API fire them
        send_analytic_dxo(streamer, d, engine.new_context())
    # as the Client API's external-process mode fires them: federated, in NVFlare's order
    remote = [make_dxo("remote", float(i), NT.METRIC, NW.MLFLOW, global_step=i) for i in range(80)]
    for d in random.Random(3).sample(remote, len(remote)):
        send_analytic_dxo(streamer, d, engine.new_context(), "fed.analytix_log_stats", True)
    # a federated event that came from elsewhere, and things that are not records
    incoming = make_dxo("theirs", 1.0, NT.SCALAR).to_shareable()
    incoming.set_header(FedEventHeader.DIRECTION, "in")
    ctx = engine.new_context()
    streamer.fire_fed_event("fed.analytix_log_stats", incoming, ctx)
    ctx = engine.new_context()
    ctx.set_prop(FLContextKey.EVENT_DATA, "not a shareable", private=True, sticky=False)
    streamer.handle_event("analytix_log_stats", ctx)
    no_type = make_dxo("x", 1.0, NT.SCALAR)
    no_type.meta.pop("analytics_data_type")
    send_analytic_dxo(streamer, no_type, engine.new_context())
    engine.fire(EventType.END_RUN)

    records = read_topic(kafka_bootstrap, topic)
    assert {(r.site, r.job_id) for r in records} == {("site-7", "job-a")}
    got = [_record_fields(r) for r in records]
    want = [_dxo_fields(d) for d in local] + [_dxo_fields(d) for d in remote]
    assert Counter(map(repr, got)) == Counter(map(repr, want))  # each once, nothing else
    assert [r.step for r in records if r.tag == "remote"] == list(range(80))
    assert [r.step for r in records if r.tag == "loss"] == list(range(50))


def test_receiver_sends_federated_records_under_their_origin(
    kafka_bootstrap: str, topic: str
) -> None:
    receiver = KafkaReceiver(bootstrap_servers=kafka_bootstrap, topic=topic)
    engine = _Engine("server", "job-b", [receiver])
    engine.fire(EventType.START_RUN)
    sent: dict[str, list[Any]] = defaultdict(list)
    for i in range(30):
        site = SITES[i % 3]
        d = make_dxo("loss", i / 4, NT.SCALAR, NW.TORCH_TB, global_step=i)
        event = d.to_shareable()
        event.set_peer_props({ReservedKey.IDENTITY_NAME: site})
        event.set_header(FedEventHeader.DIRECTION, "in")  # as NVFlare's FedEventRunner posts it
        ctx = engine.new_context()
        ctx.set_prop(FLContextKey.EVENT_DATA, event, private=True, sticky=False)
        ctx.set_prop(FLContextKey.EVENT_SCOPE, "federation", private=True, sticky=False)
        engine.fire_event("fed.analytix_log_stats", ctx)
        sent[site].append(_dxo_fields(d))
    engine.fire(EventType.END_RUN)

    got: dict[str, list[Any]] = defaultdict(list)
    for r in read_topic(kafka_bootstrap, topic):
        assert r.job_id == "job-b"
        got[r.site].append(_record_fields(r))
    assert dict(got) == dict(sent)  # per origin, in the order the events came


def test_streamer_without_a_broker_logs_what_was_not_delivered(
    caplog: pytest.LogCaptureFixture,
) -> None:
    streamer = KafkaStreamer(
        bootstrap_servers="127.0.0.1:9", topic="nowhere", flush_timeout=1.0,
        config={"message.timeout.ms": 1000, "log_level": 0},
    )  # fmt: skip
    engine = _Engine("site-1", "job-c", [streamer])
    caplog.set_level(logging.INFO, logger="flarestream")
    engine.fire(EventType.START_RUN)
    started = time.monotonic()
    for i in range(20):
        send_analytic_dxo(
            streamer,
            make_dxo("loss", 1.0, NT.SCALAR, global_step=i),
            engine.new_context(),
        )
    assert time.monotonic() - started < 1.0  # the training thread never waited for Kafka
    bad = make_dxo("t", "text", NT.TEXT)
    bad.data["track_value"] = object()  # NVFlare would not check it after creation; we do
    send_analytic_dxo(streamer, bad, engine.new_context())
    huge = make_dxo("notes", "x" * 2_000_000, NT.TEXT)  # over Kafka's message size limit
    send_analytic_dxo(streamer, huge, engine.new_context())
    engine.fire(EventType.END_RUN)  # waits at most flush_timeout
    errors = "\n".join(r.getMessage() for r in caplog.records if r.levelno >= logging.ERROR)
    assert "20 records accepted, 0 delivered" in errors
    assert "20 accepted but not confirmed by the broker" in errors
    assert "1 invalid" in errors and "'t'" in errors
    assert "1 not sent" in errors and "MSG_SIZE_TOO_LARGE" in errors


def test_add_kafka_streaming_takes_the_place_of_convert_to_fed_event_or_joins_it() -> None:
    from nvflare.app_common.np.recipes.fedavg import NumpyFedAvgRecipe

    from flarestream.producer.nvflare import add_kafka_streaming

    def recipe() -> Any:
        return NumpyFedAvgRecipe(
            name="r", model=[[0.0]], min_clients=2, train_script=str(JOB / "train.py")
        )

    def components(r: Any) -> dict[str, list[str]]:
        r._ensure_client_apps_prepared()  # what export and run do first
        return {
            site: sorted(type(c).__name__ for c in app.app_config.components.values())
            for site, app in r._job._deploy_map.items()
            if site != "server"
        }

    early = recipe()
    streamer = add_kafka_streaming(early, topic="t")
    assert components(early) == {"@ALL": ["KafkaStreamer"]}
    assert streamer.topic == "t" and "flarestream" in early._job.job.app_packages

    late = recipe()
    late.add_client_config({"x": 1})  # the client apps exist from here on
    add_kafka_streaming(late, KafkaStreamer(topic="t"))
    assert components(late) == {"@ALL": ["ConvertToFedEvent", "KafkaStreamer"]}


# -- a real job in NVFlare's simulator -------------------------------------------------
def regular_install(dest: Path) -> Path:
    """flarestream laid out as a regular install: NVFlare's job exporter refuses the
    component source files of an editable install (they resolve outside the package)."""
    tool = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    for package in tool["packages"]:
        target = dest.joinpath(*package.split("."))
        target.mkdir(parents=True, exist_ok=True)
        for source in (REPO / tool["package-dir"][package]).iterdir():
            if source.is_file() and source.suffix in (".py", ".avsc", ".typed"):
                shutil.copy2(source, target / source.name)
    return dest


def run(cmd: list[str], cwd: Path, env: dict[str, str], what: str) -> None:
    done = subprocess.run(cmd, cwd=cwd, env=env, capture_output=True, text=True, timeout=300)
    assert done.returncode == 0, (
        f"{what} failed ({done.returncode}):\n{done.stdout[-3000:]}\n{done.stderr[-3000:]}"
    )


# NVFlare's simulator picks each worker's port, frees it and has the worker bind it; when
# another process takes the port meanwhile it logs this, loses the site and waits forever
_LOST_SITE = "Communication error with client"


def simulate(job: Path, workspace: Path, env: dict[str, str], timeout: float = 240) -> bool:
    """Run ``nvflare simulator`` (3 sites, 3 threads); False when it lost a site to the
    port race above. Whatever it started is stopped before this returns."""
    nvflare = str(Path(sys.executable).with_name("nvflare"))
    cmd = [nvflare, "simulator", str(job), "-w", str(workspace), "-n", "3", "-t", "3"]
    out = workspace.parent / "simulator.out"
    with out.open("w") as sink:
        proc = subprocess.Popen(cmd, cwd=workspace.parent, env=env, stdout=sink, stderr=sink)
    server_log = workspace / "server" / "log.txt"
    deadline = time.monotonic() + timeout
    try:
        while proc.poll() is None:
            if server_log.exists() and _LOST_SITE in server_log.read_text(errors="replace"):
                return False
            assert time.monotonic() < deadline, f"simulator still running after {timeout}s: {out}"
            time.sleep(1)
    finally:
        stop_tree(proc.pid)
    assert proc.returncode == 0, f"simulator failed ({proc.returncode}):\n{out.read_text()[-3000:]}"
    return True


def stop_tree(pid: int) -> None:
    """Stop a process and everything it started (the simulator's workers and trainers)."""
    import psutil  # installed with NVFlare

    try:
        root = psutil.Process(pid)
        procs = [*root.children(recursive=True), root]
    except psutil.NoSuchProcess:
        return
    for p in procs:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.terminate()
    _, alive = psutil.wait_procs(procs, timeout=10)
    for p in alive:
        with contextlib.suppress(psutil.NoSuchProcess):
            p.kill()


def export_and_simulate(
    work: Path, bootstrap: str, topic: str, scalars: int
) -> list[dict[str, Any]] | None:
    """Build the job with the recipe API, export it, run it with ``nvflare simulator``;
    return the trainers' ledger of calls (None: the simulator lost a site, see above)."""
    work.mkdir(parents=True)
    env = {
        k: v
        for k, v in os.environ.items()
        if k not in ("PYTHONPATH", "FLARESTREAM_BOOTSTRAP_SERVERS")
    }
    ledger = work / "ledger"
    exporter = [sys.executable, str(JOB / "job.py"), "--export-to", str(work / "jobs")]
    exporter += ["--bootstrap", bootstrap, "--topic", topic, "--scalars", str(scalars)]
    exporter += ["--ledger", str(ledger), "--external", "site-3"]
    regular = regular_install(work / "site-packages")
    run(exporter, work, {**env, "PYTHONPATH": str(regular)}, "exporting the job")
    job = work / "jobs" / "flarestream_burst"
    for site in SITES:  # flarestream in place of ConvertToFedEvent, configured like any component
        config = json.loads((job / f"app_{site}" / "config" / "config_fed_client.json").read_text())
        assert [c["path"] for c in config["components"]] == [
            "flarestream.producer.nvflare.components.KafkaStreamer"
        ]
        assert config["components"][0]["args"] == {"bootstrap_servers": bootstrap, "topic": topic}
        mode = config["executors"][0]["executor"]["args"]["execution_mode"]
        assert mode == ("external_process" if site == "site-3" else "in_process")
    if not simulate(job, work / "ws", env):
        return None
    return [json.loads(line) for site in SITES for line in (ledger / f"{site}.jsonl").open()]


def f32(x: float) -> float:
    return float(np.float32(x))


def tensorboard_view(calls: list[dict[str, Any]]) -> Counter[tuple[Any, ...]]:
    """(site, run, kind, tag, step, value) that NVFlare's TensorBoard receiver would show;
    steps of records logged without one count per (site, tag) from 0, as the sink does."""
    out: Counter[tuple[Any, ...]] = Counter()
    counters: Counter[tuple[str, str]] = Counter()
    for c in calls:
        site, tag, value = c["site"], c["tag"], c["value"]
        step = c.get("step")
        if step is None:
            step = counters[(site, tag)]
            counters[(site, tag)] += 1
        kind = c["call"]
        if kind in ("add_scalar", "log_metric"):
            out[(site, "", "scalar", tag, step, f32(value))] += 1
        elif kind in ("add_scalars", "log_metrics"):
            for key, v in value.items():
                out[(site, f"{tag.replace('/', '_')}_{key}", "scalar", tag, step, f32(v))] += 1
        elif kind in ("set_tag", "log_text"):
            out[(site, "", "text", f"{tag}/text_summary", step, value)] += 1
        elif kind in ("set_tags", "log_params"):
            for key, v in value.items():
                if isinstance(v, (int, float)):
                    out[(site, "", "scalar", key, step, f32(v))] += 1
                else:
                    out[(site, "", "text", f"{key}/text_summary", step, v)] += 1
    return out


def tensorboard_items(root: Path) -> tuple[Counter[tuple[Any, ...]], dict[str, list[int]]]:
    """What TensorBoard's reader finds under ``<root>/<job>/``, and each site's
    ``train/loss`` steps in the order of the event files."""
    items: Counter[tuple[Any, ...]] = Counter()
    loss_steps: dict[str, list[int]] = {}
    for site_dir in sorted((root / SIM_JOB_ID).iterdir()):
        for run_dir in [site_dir, *sorted(p for p in site_dir.rglob("*") if p.is_dir())]:
            name = "" if run_dir == site_dir else run_dir.relative_to(site_dir).as_posix()
            acc = EventAccumulator(str(run_dir), size_guidance={"scalars": 0, "tensors": 0})
            acc.Reload()
            for tag in acc.Tags()["scalars"]:
                events = acc.Scalars(tag)
                items.update((site_dir.name, name, "scalar", tag, e.step, e.value) for e in events)
                if (name, tag) == ("", "train/loss"):
                    loss_steps[site_dir.name] = [e.step for e in events]
            for tag in acc.Tags()["tensors"]:
                for e in acc.Tensors(tag):
                    text = tensor_util.make_ndarray(e.tensor_proto).item().decode()
                    items[(site_dir.name, name, "text", tag, e.step, text)] += 1
    return items, loss_steps


def mlflow_view(calls: list[dict[str, Any]]) -> dict[str, dict[str, Any]]:
    """Per site what NVFlare's MLflow receiver would log: metric histories (step,
    value), params, tags and text artifacts."""
    out: dict[str, dict[str, Any]] = defaultdict(
        lambda: {"metrics": defaultdict(list), "params": {}, "tags": {}, "artifacts": {}}
    )
    for c in calls:
        view, kind, value = out[c["site"]], c["call"], c["value"]
        if kind in ("add_scalar", "log_metric"):
            view["metrics"][c["tag"]].append((c["step"], value))
        elif kind in ("add_scalars", "log_metrics"):
            for key, v in value.items():
                view["metrics"][key].append((c["step"], v))
        elif kind == "log_params":
            view["params"].update({k: str(v) for k, v in value.items()})
        elif kind == "set_tag":
            view["tags"][c["tag"]] = value
        elif kind == "set_tags":
            view["tags"].update(value)
        elif kind == "log_text":
            view["artifacts"][c["path"]] = value
    return {
        site: {**v, "metrics": {k: sorted(h) for k, h in v["metrics"].items()}}
        for site, v in out.items()
    }


def mlflow_items(
    uri: str, work: Path, artifacts: dict[str, list[str]]
) -> tuple[dict[str, Any], dict[str, list[int]]]:
    """The same read back with MLflow's client, and per site the ``train/loss`` steps
    ordered by the time the sender stamped on them."""
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=uri)
    experiment = client.get_experiment_by_name("FLARE FL Experiment")
    assert experiment is not None, "no experiment named as NVFlare names it"
    runs = client.search_runs([experiment.experiment_id], max_results=100)
    got: dict[str, Any] = {}
    by_time: dict[str, list[int]] = {}
    for r in runs:
        site = r.data.tags["site"]
        assert site not in got, f"two runs for {site}"
        assert r.info.run_name == f"{site}-{SIM_JOB_ID[:6]}-FLARE FL Run"
        histories = {k: client.get_metric_history(r.info.run_id, k) for k in r.data.metrics}
        loss = sorted(histories["train/loss"], key=lambda m: (m.timestamp, m.step))
        by_time[site] = [m.step for m in loss]
        own = ("site", "job_id", "run_name")  # the sink's own run tags
        user_tags = {
            k: v
            for k, v in r.data.tags.items()
            if not k.startswith(("mlflow.", "flarestream.")) and k not in own
        }
        texts = {}
        for path in artifacts.get(site, []):
            local = client.download_artifacts(r.info.run_id, path, str(work / "dl" / site))
            texts[path] = Path(local).read_text()
        got[site] = {
            "metrics": {k: sorted((m.step, m.value) for m in h) for k, h in histories.items()},
            "params": dict(r.data.params), "tags": user_tags, "artifacts": texts,
        }  # fmt: skip
    return got, by_time


@pytest.mark.slow
def test_a_simulated_nvflare_job_streams_every_record_once_in_step_order_to_both_sinks(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    scalars = 300  # per site and round, through the Client API's SummaryWriter
    calls = export_and_simulate(tmp_path / "run", kafka_bootstrap, topic, scalars)
    if calls is None:  # NVFlare's port race, not ours: once more, on a fresh topic
        topic = f"{topic}.again"
        create_topic(kafka_bootstrap, topic, partitions=3, replication_factor=1)
        calls = export_and_simulate(tmp_path / "again", kafka_bootstrap, topic, scalars)
    assert calls is not None, "NVFlare's simulator lost a site to its port race twice"
    calls = [c for c in calls if c["call"] != "timing"]
    assert Counter(c["site"] for c in calls) == {s: 2 * (scalars + 5) + 2 for s in SITES}

    # every record is on the topic once, with what NVFlare put in it, in step order
    records = read_topic(kafka_bootstrap, topic)
    assert len(records) == len(calls)
    assert {r.job_id for r in records} == {SIM_JOB_ID}
    for site in SITES:
        steps = [r.step for r in records if r.site == site and r.tag == "train/loss"]
        assert steps == list(range(2 * scalars)), f"{site}: out of order or missing"
    assert {(r.tag, r.data_type.name, r.writer.name) for r in records} >= {
        ("train/loss", "SCALAR", "TORCH_TB"), ("train/acc", "SCALARS", "TORCH_TB"),
        ("val_loss", "METRIC", "MLFLOW"), ("metrics", "METRICS", "MLFLOW"),
        ("params", "PARAMETERS", "MLFLOW"), ("tags", "TAGS", "MLFLOW"),
        ("round_0", "TAG", "MLFLOW"), ("text", "TEXT", "MLFLOW"),
    }  # fmt: skip
    assert {r.path for r in records if r.tag == "text"} == {
        "notes/round-0.txt",
        "notes/round-1.txt",
    }

    def drain(sink: Any) -> Any:
        config = LoopConfig(
            bootstrap_servers=kafka_bootstrap, topic=topic, group=f"g-{uuid.uuid4().hex}",
            until_end=True, flush_interval_s=2,
        )  # fmt: skip
        return run_sink(sink, config, handle_signals=False)

    tb_stats = drain(TensorBoardSink(tmp_path / "tb"))
    uri = f"sqlite:///{tmp_path / 'mlflow.db'}"
    ml_stats = drain(MLflowSink(tracking_uri=uri))
    assert tb_stats.dead_lettered == ml_stats.dead_lettered == 0

    # TensorBoard: NVFlare's layout, each record once, each site's steps in order
    items, loss_steps = tensorboard_items(tmp_path / "tb")
    assert sorted(p.name for p in (tmp_path / "tb" / SIM_JOB_ID).iterdir()) == SITES
    assert items == tensorboard_view(calls)
    assert loss_steps == {site: list(range(2 * scalars)) for site in SITES}

    # MLflow: one run per site under NVFlare's naming, everything once, sent in step order
    want = mlflow_view(calls)
    got, by_time = mlflow_items(uri, tmp_path, {s: list(v["artifacts"]) for s, v in want.items()})
    assert got == want
    assert by_time == {site: list(range(2 * scalars)) for site in SITES}
