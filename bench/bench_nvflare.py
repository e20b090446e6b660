"""NVFlare's own analytics path against flarestream's, on the same simulated job.

The job is the integration test's (``tests/integration/nvflare_job``): 3 sites,
2 rounds, each site logging a burst of ``--scalars`` scalars per round through
NVFlare's Client API ``SummaryWriter`` (plus a few MLflowWriter calls), with the
trainer in the client job's process or in an external process (``--modes``).
It is exported once with NVFlare's recipe API in NVFlare's configuration
(``ConvertToFedEvent`` on the clients, ``TBAnalyticsReceiver`` on the server); the
flarestream run is the same folder with the JSON configs edited: ``KafkaStreamer``
in place of ``ConvertToFedEvent``, no server receiver, and flarestream's
TensorBoard sink draining the topic while the job runs.

For each run, over the burst's ``train/loss`` records:

- delivered/s: records written to the TensorBoard writer per second, from the
  first call of a round to the last record of that round written (NVFlare: the
  receiver's write time, which is the event's wall time; flarestream: the time the
  sink's ``write`` took it), summed over rounds;
- delivered: share of the records sent that TensorBoard holds (distinct steps);
- out of order: share of a site's records written after a record of the same site
  with a larger step.

Usage: ``python bench/bench_nvflare.py [--scalars N] [--modes in_process external]``.
Uses ``FLARESTREAM_BOOTSTRAP_SERVERS`` when set, else starts a throwaway local broker.
The work folder (jobs, workspaces, logs) is removed after a successful run and kept
after a failure.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import shutil
import subprocess
import sys
import tempfile
import threading
import time
import uuid
from collections import defaultdict
from collections.abc import Sequence
from pathlib import Path
from typing import Any

from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

from flarestream.consumers import ConsumerLoop, Delivered, LoopConfig, Rejection
from flarestream.consumers.tensorboard_sink import TensorBoardSink
from flarestream.deploy import LocalBroker, create_topic

REPO = Path(__file__).resolve().parents[1]
JOB = REPO / "tests" / "integration" / "nvflare_job"
SITES = ["site-1", "site-2", "site-3"]
TAG = "train/loss"
STREAMER = "flarestream.producer.nvflare.KafkaStreamer"


class TimedTensorBoardSink(TensorBoardSink):
    """The TensorBoard sink, noting when each burst record was written."""

    def __init__(self, logdir: Path) -> None:
        super().__init__(logdir)
        self.written: list[tuple[str, int, float]] = []  # (site, step, time)

    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        out = super().write(batch)
        now = time.time()
        self.written += [
            (d.record.site, d.record.step or 0, now) for d in batch if d.record.tag == TAG
        ]
        return out


def export(work: Path, mode: str, scalars: int) -> Path:
    """NVFlare's configuration of the job, exported with its recipe API."""
    ledger = work / "ledger"
    work.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(JOB / "job.py"), "--path", "nvflare"]
    cmd += ["--export-to", str(work / "jobs"), "--scalars", str(scalars), "--ledger", str(ledger)]
    cmd += ["--external", *SITES] if mode == "external" else []
    subprocess.run(cmd, check=True, cwd=work, capture_output=True)
    return work / "jobs" / "flarestream_burst"


def to_flarestream(job: Path, target: Path, bootstrap: str, topic: str) -> Path:
    """The same job folder with KafkaStreamer in place of ConvertToFedEvent."""
    shutil.copytree(job, target)
    for config in target.glob("app_*/config/config_fed_client.json"):
        data = json.loads(config.read_text())
        for comp in data["components"]:
            if comp["path"].endswith("ConvertToFedEvent"):
                comp["path"] = STREAMER
                comp["args"] = {"bootstrap_servers": bootstrap, "topic": topic}
        config.write_text(json.dumps(data, indent=2))
    server = target / "app_server" / "config" / "config_fed_server.json"
    data = json.loads(server.read_text())
    data["components"] = [c for c in data["components"] if "TBAnalyticsReceiver" not in c["path"]]
    server.write_text(json.dumps(data, indent=2))
    return target


def simulate(job: Path, workspace: Path, timeout: float = 300) -> float:
    """Run the job with ``nvflare simulator``; its wall time. Stops whatever it started.
    Raises SystemExit when it fails, hangs, or loses a site to its port race (NVFlare's
    simulator frees a worker's port before the worker binds it; it then waits forever)."""
    import psutil  # installed with NVFlare

    nvflare = str(Path(sys.executable).with_name("nvflare"))
    cmd = [nvflare, "simulator", str(job), "-w", str(workspace), "-n", "3", "-t", "3"]
    out = workspace.parent / f"{workspace.name}.out"
    start = time.time()
    with out.open("w") as log:
        proc = subprocess.Popen(cmd, cwd=workspace.parent, stdout=log, stderr=log)
    server_log = workspace / "server" / "log.txt"
    problem = None
    try:
        while proc.poll() is None and problem is None:
            time.sleep(0.5)
            if server_log.exists() and "Communication error with client" in server_log.read_text(
                errors="replace"
            ):
                problem = "the simulator lost a site to its port race; run again"
            elif time.time() - start > timeout:
                problem = f"the simulator still ran after {timeout:.0f}s"
    finally:
        procs = [*psutil.Process(proc.pid).children(recursive=True)] if proc.poll() is None else []
        for p in [*procs, proc]:
            with contextlib.suppress(psutil.NoSuchProcess, ProcessLookupError):
                p.kill()
        proc.wait()
    if problem or proc.returncode:
        raise SystemExit(f"{problem or 'the simulator failed'}: see {out}")
    return time.time() - start


def nvflare_written(workspace: Path) -> list[tuple[str, int, float]]:
    """What NVFlare's TensorBoard receiver wrote: (site, step, wall time) in file order."""
    out = []
    for site_dir in sorted((workspace / "server" / "simulate_job" / "tb_events").iterdir()):
        acc = EventAccumulator(str(site_dir), size_guidance={"scalars": 0})
        acc.Reload()
        if TAG in acc.Tags()["scalars"]:
            out += [(site_dir.name, e.step, e.wall_time) for e in acc.Scalars(TAG)]
    return out


def flarestream_run(
    job: Path, workspace: Path, bootstrap: str, topic: str
) -> tuple[list[Any], float]:
    sink = TimedTensorBoardSink(workspace.parent / "tb")
    config = LoopConfig(bootstrap_servers=bootstrap, topic=topic, group=f"b-{uuid.uuid4().hex}",
                        flush_interval_s=1.0)  # fmt: skip
    loop = ConsumerLoop(sink, config)
    thread = threading.Thread(target=loop.run, daemon=True)
    thread.start()
    try:
        wall = simulate(job, workspace)
        quiet_since, last = time.monotonic(), -1
        while time.monotonic() - quiet_since < 5:  # until nothing new for 5 s
            time.sleep(0.2)
            if loop.stats.written != last:
                last, quiet_since = loop.stats.written, time.monotonic()
    finally:
        loop.stop()
        thread.join(timeout=60)
    return sink.written, wall


def measure(written: list[tuple[str, int, float]], ledger: Path, scalars: int) -> dict[str, float]:
    starts: dict[int, float] = {}
    for site in SITES:
        for line in (ledger / f"{site}.jsonl").open():
            call = json.loads(line)
            if call["call"] == "timing":
                starts[call["round"]] = min(call["start"], starts.get(call["round"], call["start"]))
    sent = scalars * len(starts) * len(SITES)
    by_round: dict[int, list[float]] = defaultdict(list)
    steps: dict[str, list[int]] = defaultdict(list)
    for site, step, when in written:
        by_round[step // scalars].append(when)
        steps[site].append(step)
    span = sum(max(times) - starts[r] for r, times in by_round.items())
    late = 0
    for seq in steps.values():
        top = -1
        for step in seq:
            late += step < top
            top = max(top, step)
    distinct = sum(len(set(seq)) for seq in steps.values())
    return {
        "sent": sent,
        "delivered_per_s": len(written) / span if span > 0 else 0.0,
        "delivered_share": distinct / sent,
        "out_of_order_share": late / max(1, len(written)),
    }


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--scalars", type=int, default=500, help="per site and round")
    parser.add_argument("--modes", nargs="+", default=["in_process", "external"])
    args = parser.parse_args()
    bootstrap = os.environ.get("FLARESTREAM_BOOTSTRAP_SERVERS")
    root = Path(tempfile.mkdtemp(prefix="bench-nvflare-"))
    broker = None
    if not bootstrap:
        broker = LocalBroker(root / "kafka")
        bootstrap = broker.start(timeout=180)
    results = []
    try:
        for mode in args.modes:
            base = export(root / mode, mode, args.scalars)
            ledger = root / mode / "ledger"
            shutil.rmtree(ledger, ignore_errors=True)
            wall = simulate(base, root / mode / "ws-nvflare")
            row = measure(nvflare_written(root / mode / "ws-nvflare"), ledger, args.scalars)
            results.append({"mode": mode, "path": "nvflare", "job_s": wall, **row})
            shutil.rmtree(ledger)
            topic = f"bench.nvflare.{uuid.uuid4().hex[:8]}"
            create_topic(bootstrap, topic, partitions=3, replication_factor=1)
            job = to_flarestream(base, root / mode / "fs-job" / base.name, bootstrap, topic)
            written, wall = flarestream_run(job, root / mode / "ws-flarestream", bootstrap, topic)
            row = measure(written, ledger, args.scalars)
            results.append({"mode": mode, "path": "flarestream", "job_s": wall, **row})
        shutil.rmtree(root, ignore_errors=True)
    finally:
        if broker is not None:
            broker.stop()
    print(f"{'trainer':<11} {'path':<12} {'sent':>6} {'delivered/s':>12} {'delivered':>10} "
          f"{'out of order':>13} {'job s':>6}")  # fmt: skip
    for r in results:
        print(
            f"{r['mode']:<11} {r['path']:<12} {r['sent']:>6} {r['delivered_per_s']:>12,.0f} "
            f"{r['delivered_share']:>10.1%} {r['out_of_order_share']:>13.1%} {r['job_s']:>6.1f}"
        )
    print(json.dumps(results))
    return 0


if __name__ == "__main__":
    sys.exit(main())
