"""What ``flarestream demo`` finds in each sink for one job, the summary it prints,
and the PNG of every site's training curves read back from the archive.

Each sink is read with its own reader, for this job only:

- archive: :class:`~flarestream.consumers.archive_reader.ArchiveReader`; the count
  is the manifests' record counts of the job's complete files, and every record is
  decoded to check that each site's sequence numbers are 0..n-1, once each, in
  offset order (exactly once, in send order).
- TensorBoard: TensorBoard's own ``EventAccumulator`` on every run directory below
  ``<logdir>/<job>/<site>``; the count is scalar + text + image events.
- MLflow: ``MlflowClient``; the count is, over the site's run(s) tagged with the job
  id, metric history points + params + tags the site set + artifact files.

Every demo record makes exactly one such item in each sink (see
:mod:`flarestream.demo_sites`), so every column must equal ``sent``.
"""

from __future__ import annotations

import os
from collections import Counter, defaultdict
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flarestream.demo_sites import ACCURACY_TAG, LOSS_TAG

COUNTED = (
    "counted: sent = records each site's sender delivered; tensorboard = scalar, text and\n"
    "image events in <logdir>/<job>/<site> (EventAccumulator); mlflow = metric points,\n"
    "params, site tags and artifacts of the site's run (MlflowClient); archive = records in\n"
    "the job's complete files (manifests). Each demo record makes one item in every sink."
)
# tags the MLflow sink puts on every run itself (not sent by a site)
_SINK_RUN_TAGS = frozenset({"site", "job_id", "run_name"})


@dataclass
class ArchiveContents:
    """What the archive holds for one job."""

    counts: Counter[str] = field(default_factory=Counter)  # manifests' record counts
    seqs: dict[str, list[int]] = field(default_factory=lambda: defaultdict(list))
    # site -> tag -> [(step, value)] for the curves
    curves: dict[str, dict[str, list[tuple[int, float]]]] = field(
        default_factory=lambda: defaultdict(lambda: defaultdict(list))
    )

    def exactly_once(self, site: str, sent: int) -> bool:
        """The site's records, in archive (offset) order, carry seq 0..sent-1."""
        return self.seqs.get(site, []) == list(range(sent))


def read_archive(root: Path, job_id: str) -> ArchiveContents:
    from flarestream.consumers.archive_reader import ArchiveReader

    found = ArchiveContents()
    rows: dict[str, list[tuple[int, int, int]]] = defaultdict(list)
    with ArchiveReader(root) as archive:
        for file in archive.files(job_id=job_id):
            assert file.manifest is not None  # files() lists complete files only
            found.counts[file.site] += file.manifest.record_count
            for item in archive.records(file):
                rec = item.record
                rows[file.site].append((item.partition, item.offset, rec.seq))
                if rec.tag in (LOSS_TAG, ACCURACY_TAG) and rec.step is not None:
                    found.curves[rec.site][rec.tag].append((rec.step, float(rec.value)))
    for site, coords in rows.items():
        found.seqs[site] = [seq for _p, _o, seq in sorted(coords)]
    return found


def count_tensorboard(logdir: Path, job_id: str) -> Counter[str]:
    from tensorboard.backend.event_processing import event_accumulator as ea

    guidance = {ea.SCALARS: 0, ea.IMAGES: 0, ea.TENSORS: 0}  # 0: keep every event
    counts: Counter[str] = Counter()
    job_dir = logdir / job_id
    if not job_dir.is_dir():
        return counts
    for site_dir in sorted(p for p in job_dir.iterdir() if p.is_dir()):
        for directory, _dirs, files in os.walk(site_dir):
            if not any("tfevents" in name for name in files):
                continue
            # purge_orphaned_data=False: count what is stored, duplicates included
            acc = ea.EventAccumulator(directory, guidance, purge_orphaned_data=False).Reload()
            tags = acc.Tags()
            counts[site_dir.name] += sum(len(acc.Scalars(t)) for t in tags[ea.SCALARS])
            counts[site_dir.name] += sum(len(acc.Images(t)) for t in tags[ea.IMAGES])
            counts[site_dir.name] += sum(len(acc.Tensors(t)) for t in tags[ea.TENSORS])
    return counts


def count_mlflow(tracking_uri: str, job_id: str) -> Counter[str]:
    from mlflow.tracking import MlflowClient

    from flarestream.consumers.mlflow_batches import RESERVED_TAG_PREFIX
    from flarestream.consumers.mlflow_sink import DEFAULT_EXPERIMENT

    client = MlflowClient(tracking_uri=tracking_uri)
    counts: Counter[str] = Counter()
    experiment = client.get_experiment_by_name(DEFAULT_EXPERIMENT)
    if experiment is None:
        return counts
    runs = client.search_runs(
        [experiment.experiment_id], filter_string=f"tags.job_id = '{job_id}'", max_results=10_000
    )
    for run in runs:
        run_id, data = run.info.run_id, run.data
        points = sum(len(client.get_metric_history(run_id, key)) for key in data.metrics)
        tags = [
            k
            for k in data.tags
            if k not in _SINK_RUN_TAGS and not k.startswith(("mlflow.", RESERVED_TAG_PREFIX))
        ]
        artifacts = _artifact_files(client, run_id, None)
        counts[data.tags.get("site", "?")] += points + len(data.params) + len(tags) + artifacts
    return counts


def _artifact_files(client: Any, run_id: str, path: str | None) -> int:
    total = 0
    for info in client.list_artifacts(run_id, path):
        total += _artifact_files(client, run_id, info.path) if info.is_dir else 1
    return total


def plot_curves(
    contents: ArchiveContents, sites: list[str], path: Path, job_id: str, rounds: int, steps: int
) -> str:
    """Write the PNG; returns a line for the summary (why there is none, if so)."""
    try:
        import matplotlib
    except ImportError:
        return "curves: no PNG, matplotlib is not installed: pip install 'flarestream[demo]'"
    matplotlib.use("Agg")  # no display needed
    import matplotlib.pyplot as plt

    fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(14, 5.5), layout="constrained")
    colours = plt.get_cmap("tab10")
    for i, site in enumerate(sites):
        series = contents.curves.get(site, {})
        colour = colours(i % 10)
        loss = sorted(series.get(LOSS_TAG, []))
        acc = sorted(series.get(ACCURACY_TAG, []))
        loss_ax.plot([s for s, _ in loss], [v for _, v in loss], color=colour, lw=0.8, label=site)
        acc_ax.plot(
            [s + 1 for s, _ in acc], [v for _, v in acc], color=colour, marker="o", ms=4,
            lw=1.5, label=site,
        )  # fmt: skip
    for boundary in range(steps, rounds * steps, steps):  # where each round starts
        loss_ax.axvline(boundary, color="grey", lw=0.6, alpha=0.3)
    loss_ax.set(
        title="Training loss per local step (train/loss)",
        xlabel=f"global step (round x {steps} + local step; grey lines: new round)",
        ylabel="training loss",
    )
    acc_ax.set(
        title="Validation accuracy per round (val/accuracy)",
        xlabel="round",
        ylabel="validation accuracy",
    )
    acc_ax.xaxis.get_major_locator().set_params(integer=True)
    for ax in (loss_ax, acc_ax):
        ax.grid(True, alpha=0.3)
    fig.legend(*acc_ax.get_legend_handles_labels(), title="site", loc="outside right center")
    fig.suptitle(f"flarestream demo, job {job_id}: every site's curves read back from the archive")
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=100)
    plt.close(fig)
    return f"curves:      {path}"


def summary_table(
    sites: list[str],
    sent: dict[str, int],
    sinks: dict[str, Counter[str]],
    archive: ArchiveContents,
) -> tuple[list[str], bool]:
    """The per-site table and whether every sink holds every record once."""
    names = list(sinks)
    lines = [f"{'site':<12}{'sent':>9}" + "".join(f"{n:>13}" for n in names) + "  once, in order"]
    ok = True
    totals: Counter[str] = Counter()
    for site in sites:
        row = f"{site:<12}{sent.get(site, 0):>9,}"
        for name in names:
            found = sinks[name].get(site, 0)
            totals[name] += found
            good = found == sent.get(site, 0)
            ok = ok and good
            row += f"{found:>13,}" if good else f"{f'{found:,} (!)':>13}"
        once = archive.exactly_once(site, sent.get(site, 0))
        ok = ok and once
        lines.append(row + ("  yes" if once else "  NO"))
    extra = sorted(set().union(*(set(c) for c in sinks.values())) - set(sites))
    for site in extra:  # a site the demo did not send: only if something went wrong
        ok = False
        lines.append(f"{site:<12}{0:>9}" + "".join(f"{sinks[n].get(site, 0):>13,}" for n in names))
    total = f"{'total':<12}{sum(sent.values()):>9,}" + "".join(f"{totals[n]:>13,}" for n in names)
    return [*lines, total], ok
