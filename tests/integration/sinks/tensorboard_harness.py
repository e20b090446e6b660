"""The TensorBoard sink in the behaviour suite: event files read back with TensorBoard's
own ``EventAccumulator`` (every event kept, nothing purged)."""

from __future__ import annotations

import importlib.util
import sys
from pathlib import Path
from types import ModuleType

from flarestream.consumers.sink import Sink
from flarestream.consumers.tensorboard_sink import TensorBoardSink


def _harness_module() -> ModuleType:
    """harness.py beside this file (the suite loads harnesses by path, not as a package)."""
    name = "flarestream_test_sink_harness"
    if name not in sys.modules:
        spec = importlib.util.spec_from_file_location(name, Path(__file__).with_name("harness.py"))
        assert spec is not None and spec.loader is not None
        module = importlib.util.module_from_spec(spec)
        sys.modules[name] = module
        spec.loader.exec_module(module)
    return sys.modules[name]


SinkHarness = _harness_module().SinkHarness
Point = tuple[str, str, int, float]  # (site, tag, step, value), as harness.Point


def run_dirs(site_dir: Path) -> list[Path]:
    """The site's run and every run below it (SCALARS subdirectories)."""
    return [site_dir, *sorted(p for p in site_dir.rglob("*") if p.is_dir())]


def accumulator(run: Path) -> object:
    """TensorBoard's reader for one run directory, keeping every event of every kind and
    purging none (so duplicates, if any, show)."""
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    acc = EventAccumulator(
        str(run),
        size_guidance={"scalars": 0, "tensors": 0, "images": 0},
        purge_orphaned_data=False,
    )
    acc.Reload()
    return acc


class TensorBoardHarness(SinkHarness):
    name = "tensorboard"

    def make_sink(self, root: Path) -> Sink:
        return TensorBoardSink(root)

    def cli_args(self, root: Path) -> list[str]:
        return ["--logdir", str(root)]

    def read_points(self, root: Path, job_id: str) -> list[Point]:
        """Every scalar event under ``<root>/<job_id>/<site>/``. The tag is the event's
        tag in the site's run, ``<subdirectory>/<tag>`` in a run below it (SCALARS);
        values are float32, as TensorBoard stores them."""
        points: list[Point] = []
        job_dir = root / job_id
        if not job_dir.is_dir():
            return points
        for site_dir in sorted(p for p in job_dir.iterdir() if p.is_dir()):
            for run in run_dirs(site_dir):
                prefix = run.relative_to(site_dir).as_posix()
                acc = accumulator(run)
                for tag in acc.Tags()["scalars"]:  # type: ignore[attr-defined]
                    name = tag if prefix == "." else f"{prefix}/{tag}"
                    points.extend(
                        (site_dir.name, name, e.step, e.value)
                        for e in acc.Scalars(tag)  # type: ignore[attr-defined]
                    )
        return points


HARNESS = TensorBoardHarness()
