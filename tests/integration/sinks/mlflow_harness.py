"""The MLflow sink in the behaviour suite: a sqlite store under the test's root,
read back with MLflow's own client."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path

from flarestream.consumers.mlflow_sink import MLflowSink
from flarestream.consumers.sink import Sink

try:
    from tests.integration.sinks.harness import Point, SinkHarness
except ImportError:  # loaded by path, without the repository root on sys.path
    _spec = importlib.util.spec_from_file_location(
        "flarestream_test_sink_harness", Path(__file__).with_name("harness.py")
    )
    assert _spec is not None and _spec.loader is not None
    _base = importlib.util.module_from_spec(_spec)
    sys.modules[_spec.name] = _base
    _spec.loader.exec_module(_base)
    Point, SinkHarness = _base.Point, _base.SinkHarness  # type: ignore[misc]


def tracking_uri(root: Path) -> str:
    return f"sqlite:///{root / 'mlflow.db'}"


def read_points(root: Path, job_id: str) -> list[Point]:
    """(site, metric key, step, value) for every metric row of the job's runs, in
    every experiment of the store under ``root``; duplicates included."""
    if not (root / "mlflow.db").exists():
        return []  # nothing written yet (do not create a store by reading)
    from mlflow.entities import ViewType
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri(root))
    experiments = [e.experiment_id for e in client.search_experiments(view_type=ViewType.ALL)]
    points: list[Point] = []
    if not experiments:
        return points
    for run in client.search_runs(experiments, run_view_type=ViewType.ALL, max_results=50_000):
        if run.data.tags.get("job_id") != job_id:
            continue
        site = run.data.tags.get("site", "")
        for key in run.data.metrics:
            history = client.get_metric_history(run.info.run_id, key)
            points.extend((site, key, m.step, m.value) for m in history)
    return points


class MLflowHarness(SinkHarness):
    name = "mlflow"

    def make_sink(self, root: Path) -> Sink:
        return MLflowSink(tracking_uri=tracking_uri(root))

    def cli_args(self, root: Path) -> list[str]:
        return ["--tracking-uri", tracking_uri(root)]

    def read_points(self, root: Path, job_id: str) -> list[Point]:
        return read_points(root, job_id)


HARNESS = MLflowHarness()
