"""``flarestream demo`` end to end: broker, simulated sites, the three sink processes,
catch-up to lag 0, read-back from every sink, the curves PNG."""

from __future__ import annotations

import os
import re
import subprocess
import sys
import uuid
from pathlib import Path

import pytest

from flarestream.demo_report import ArchiveContents, plot_curves
from flarestream.demo_sites import records_per_site

SITES, ROUNDS, STEPS = 3, 2, 20
PNG_SIGNATURE = b"\x89PNG\r\n\x1a\n"
ROW = re.compile(r"^(site-\d+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+([\d,]+)\s+(yes|NO)$", re.M)
LAG = re.compile(r"^(\S+\.(?:tensorboard|mlflow|archive))\s+(\d+)\s+(-?\d+)$", re.M)
JOB = re.compile(r"^OK: every record of job (\S+) is in every sink exactly once", re.M)


def run_demo(
    bootstrap: str, topic: str, work: Path, groups: str, env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    argv = [sys.executable, "-m", "flarestream", "demo", "--bootstrap-servers", bootstrap]
    argv += ["--topic", topic, "--workdir", str(work), "--group-prefix", groups]
    argv += ["--sites", str(SITES), "--rounds", str(ROUNDS), "--steps", str(STEPS)]
    argv += ["--timeout", "240"]
    return subprocess.run(argv, capture_output=True, text=True, timeout=540, env=env)


def check_summary(result: subprocess.CompletedProcess[str], groups: str) -> str:
    """Asserts a clean run; returns its job id."""
    output = f"stdout:\n{result.stdout}\nstderr:\n{result.stderr}"
    assert result.returncode == 0, output
    rows = ROW.findall(result.stdout)
    assert [r[0] for r in rows] == [f"site-{i + 1}" for i in range(SITES)], output
    want = f"{records_per_site(ROUNDS, STEPS):,}"
    for _site, sent, tensorboard, mlflow, archive, once in rows:
        assert (sent, tensorboard, mlflow, archive, once) == (want, want, want, want, "yes")
    lags = {group: (int(lag), int(code)) for group, lag, code in LAG.findall(result.stdout)}
    assert lags == {f"{groups}.{name}": (0, 0) for name in ("tensorboard", "mlflow", "archive")}
    job = JOB.search(result.stdout)
    assert job, output
    assert "tensorboard --logdir" in result.stdout and "mlflow ui --backend-store-uri" in output
    assert "sites sending:" in result.stderr and "sinks catching up:" in result.stderr
    return job.group(1)


@pytest.mark.integration
@pytest.mark.slow
def test_demo_runs_twice_each_run_a_new_job_fully_in_every_sink(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    work, groups = tmp_path / "demo", f"test.demo.{uuid.uuid4().hex[:8]}"
    jobs = []
    for _ in range(2):
        jobs.append(check_summary(run_demo(kafka_bootstrap, topic, work, groups), groups))
        png = work / f"{jobs[-1]}-curves.png"
        data = png.read_bytes()
        assert data.startswith(PNG_SIGNATURE) and len(data) > 20_000, png
    assert jobs[0] != jobs[1]
    assert sorted(p.name for p in (work / "archive").iterdir()) == sorted(jobs)
    assert sorted(p.name for p in (work / "tensorboard").iterdir() if p.name[0] != ".") == sorted(
        jobs
    )
    for job in jobs:  # one run directory per site in each job
        sites = {p.name for p in (work / "tensorboard" / job).iterdir()}
        assert sites == {f"site-{i + 1}" for i in range(SITES)}


@pytest.mark.integration
@pytest.mark.slow
def test_demo_without_matplotlib_says_which_extra_and_still_succeeds(
    kafka_bootstrap: str, topic: str, tmp_path: Path
) -> None:
    hidden = tmp_path / "hide"
    (hidden / "matplotlib").mkdir(parents=True)
    (hidden / "matplotlib" / "__init__.py").write_text("raise ImportError('hidden by the test')\n")
    env = {**os.environ, "PYTHONPATH": str(hidden)}
    work, groups = tmp_path / "demo", f"test.demo.{uuid.uuid4().hex[:8]}"
    result = run_demo(kafka_bootstrap, topic, work, groups, env)
    job = check_summary(result, groups)
    assert "pip install 'flarestream[demo]'" in result.stdout
    assert not (work / f"{job}-curves.png").exists()


def test_curves_without_matplotlib_name_the_extra(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setitem(sys.modules, "matplotlib", None)  # import raises ImportError
    line = plot_curves(ArchiveContents(), ["site-1"], tmp_path / "c.png", "job", 2, 5)
    assert "pip install 'flarestream[demo]'" in line
    assert not (tmp_path / "c.png").exists()


def test_curves_png_has_one_line_per_site_in_each_plot(tmp_path: Path) -> None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    contents = ArchiveContents()
    for i in range(3):
        site = f"site-{i + 1}"
        contents.curves[site]["train/loss"] = [(s, 2.0 / (s + 1 + i)) for s in range(10)]
        contents.curves[site]["val/accuracy"] = [(r, 0.5 + 0.1 * r + 0.01 * i) for r in range(2)]
    made = []
    monkeypatch = pytest.MonkeyPatch()
    monkeypatch.setattr(plt, "close", lambda fig: made.append(fig))
    try:
        plot_curves(contents, ["site-1", "site-2", "site-3"], tmp_path / "c.png", "job", 2, 5)
    finally:
        monkeypatch.undo()
    assert (tmp_path / "c.png").read_bytes().startswith(PNG_SIGNATURE)
    (fig,) = made
    for ax in fig.axes:
        labels = [line.get_label() for line in ax.get_lines()]
        assert [x for x in labels if not x.startswith("_")] == ["site-1", "site-2", "site-3"]
        assert ax.get_xlabel() and ax.get_ylabel()
    assert [t.get_text() for t in fig.legends[0].get_texts()] == ["site-1", "site-2", "site-3"]
    plt.close(fig)
