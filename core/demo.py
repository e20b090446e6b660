"""``flarestream demo``: the whole pipeline on one machine, from nothing.

Starts (or reuses) the local broker unless ``FLARESTREAM_BOOTSTRAP_SERVERS`` or
``--bootstrap-servers`` names one, creates the topic, starts the TensorBoard, MLflow
and archive sinks as separate ``flarestream sink`` processes (each its own consumer
group), lets N simulated sites train for R rounds while they stream their analytics,
waits until every group has committed up to the end of the topic (lag 0), stops the
sinks, counts what each sink holds for the job, plots every site's curves from the
archive and says where to look. Exit code 0 only when every record of the job is in
every sink exactly once, every lag is 0 and every sink stopped cleanly. Each run is
a new job; the sinks continue from their groups' committed offsets.

Signing is on unless ``--no-signing``: each site signs its records with its own
Ed25519 key (made once in ``<workdir>/keys``) and every sink runs with
``--verify-keys``, so a record not signed by the site it claims would go to the
dead-letter topic and the summary would show it missing.
"""

from __future__ import annotations

import argparse
import os
import secrets
import sys
import threading
import time
from collections import Counter
from pathlib import Path
from typing import Any

from flarestream import settings
from flarestream.errors import ConfigError

DEFAULT_SITES, DEFAULT_ROUNDS, DEFAULT_STEPS = 8, 10, 100


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the whole pipeline: local broker, simulated sites, three sinks, summary",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    add = parser.add_argument
    add("--sites", type=int, default=DEFAULT_SITES, help="simulated sites (%(default)s)")
    add("--rounds", type=int, default=DEFAULT_ROUNDS, help="training rounds (%(default)s)")
    add("--steps", type=int, default=DEFAULT_STEPS, help="local steps per round (%(default)s)")
    add("--topic", default=settings.DEFAULT_TOPIC, help="topic (%(default)s)")
    add("--partitions", type=int, default=8, help="partitions if the topic is new (%(default)s)")
    add(
        "--bootstrap-servers",
        default=os.environ.get(settings.ENV_BOOTSTRAP),
        help="an existing Kafka (default: $FLARESTREAM_BOOTSTRAP_SERVERS, else the local broker)",
    )
    add(
        "--workdir",
        type=Path,
        default=None,
        help="where the sinks write (default: $FLARESTREAM_HOME/demo, i.e. ~/.flarestream/demo)",
    )
    add(
        "--group-prefix",
        default="flarestream.demo",
        help="consumer groups are <prefix>.<sink> (%(default)s); not the sinks' default "
        "groups, so the demo never takes partitions from sinks you run yourself",
    )
    add("--job-id", default=None, help="job id (default: demo-<date>-<time>-<random>)")
    add("--timeout", type=float, default=120, help="seconds to wait for the sinks (%(default)s)")
    add(
        "--no-signing",
        dest="signing",
        action="store_false",
        help="sites do not sign their records and sinks do not verify (signing is on by default)",
    )
    parser.set_defaults(func=run)


def _say(message: str) -> None:
    print(f"flarestream demo: {message}", file=sys.stderr, flush=True)


def _bootstrap(args: argparse.Namespace) -> str:
    if args.bootstrap_servers:
        return str(args.bootstrap_servers)
    from flarestream.deploy import LocalBroker

    broker = LocalBroker(settings.home_dir() / "broker", port=settings.LOCAL_BROKER_PORT)
    if broker.is_running():
        _say(f"using the local broker at {broker.bootstrap}")
        return broker.bootstrap
    _say("starting the local broker (the first start fetches Kafka with Maven)")
    return broker.start(log=_say)


def new_job_id() -> str:
    return time.strftime("demo-%Y%m%d-%H%M%S-") + secrets.token_hex(2)


def run(args: argparse.Namespace) -> int:
    from flarestream.consumers.progress import Progress
    from flarestream.demo_sinks import Offsets, SinkFailed, sink_processes, stop_all
    from flarestream.deploy import create_topic, describe_topic, list_topics

    for name in ("sites", "rounds", "steps"):
        if getattr(args, name) < 1:
            raise ConfigError(f"--{name} must be at least 1, got {getattr(args, name)}")
    began = time.monotonic()
    work = (args.workdir or settings.home_dir() / "demo").expanduser().absolute()
    job_id = args.job_id or new_job_id()
    for sink_dir in ("archive", "tensorboard"):
        if (work / sink_dir / job_id).exists():  # its records would be counted twice
            raise ConfigError(f"job {job_id!r} is already in {work / sink_dir}; use a new --job-id")
    keys = _keys(work, args.sites) if args.signing else None  # before the broker: fails fast
    bootstrap = _bootstrap(args)
    if args.topic in list_topics(bootstrap):  # a topic that exists is used as it is
        info = describe_topic(bootstrap, args.topic)
        _say(f"topic {args.topic!r} exists on {bootstrap} ({info.partitions} partitions)")
    else:
        create_topic(bootstrap, args.topic, args.partitions, 1)
        _say(f"topic {args.topic!r} created on {bootstrap} ({args.partitions} partitions)")
    sinks = sink_processes(work, bootstrap, args.topic, args.group_prefix, keys)
    offsets = Offsets(bootstrap, args.topic)
    try:
        for sink in sinks:
            sink.start()
        _say(f"sinks started ({', '.join(s.group for s in sinks)}); logs in {work / 'logs'}")
        sent, errors = _simulate(args, job_id, bootstrap, sinks, Progress, keys)
        if errors:
            for error in errors:
                _say(f"error: {error}")
            return 1
        lags = _catch_up(args, offsets, sinks, Progress)
        codes = stop_all(sinks)
    except SinkFailed as exc:
        _say(str(exc))
        return 1
    finally:
        stop_all(sinks)
        offsets.close()
    for sink in sinks:
        if codes[sink.name] != 0:
            _say(str(sink.failure("did not stop cleanly")))
            return 1
    return _report(args, work, job_id, bootstrap, sent, lags, codes, began, keys)


def _keys(work: Path, sites: int) -> Path:
    """``<work>/keys`` with a key pair for each simulated site (made when missing)."""
    from flarestream.signing import PRIVATE_SUFFIX, write_key_pair

    keys = work / "keys"
    try:
        for i in range(sites):
            site = f"site-{i + 1}"
            if not (keys / f"{site}{PRIVATE_SUFFIX}").exists():
                write_key_pair(keys, site, force=True)
    except ConfigError as exc:
        raise ConfigError(f"{exc} (or run the demo with --no-signing)") from None
    return keys


def _simulate(
    args: argparse.Namespace,
    job_id: str,
    bootstrap: str,
    sinks: list[Any],
    progress: Any,
    keys: Path | None,
) -> tuple[dict[str, int], list[str]]:
    """Run every site in its own thread; (records delivered per site, errors)."""
    from flarestream.demo_sinks import check_alive
    from flarestream.demo_sites import SiteProfile, image, records_per_site, simulate_site

    profiles = [SiteProfile.make(i) for i in range(args.sites)]
    image(profiles[0], 0, 1)  # import numpy once, before the site threads do
    counter = [0] * len(profiles)
    sent: dict[str, int] = {}
    errors: list[str] = []

    def site(p: SiteProfile) -> None:
        try:
            sent[p.name] = simulate_site(
                p, job_id=job_id, rounds=args.rounds, steps=args.steps,
                bootstrap=bootstrap, topic=args.topic, counter=counter,
                signing_key=keys if keys is not None else False,
            )  # fmt: skip
        except Exception as exc:  # reported, never swallowed
            errors.append(f"{p.name}: {type(exc).__name__}: {exc}")

    total = args.sites * records_per_site(args.rounds, args.steps)
    bar = progress(f"{args.sites} sites sending", total=total)
    threads = [threading.Thread(target=site, args=(p,), daemon=True) for p in profiles]
    for t in threads:
        t.start()
    while any(t.is_alive() for t in threads):
        time.sleep(0.1)
        bar.advance(sum(counter) - bar.done)
        check_alive(sinks)  # a sink that cannot start: say so now, not after the wait
    bar.advance(sum(counter) - bar.done)
    bar.finish(f"job {job_id}, every record confirmed by the broker" if not errors else "")
    return sent, errors


def _catch_up(
    args: argparse.Namespace, offsets: Any, sinks: list[Any], progress: Any
) -> dict[str, int]:
    from flarestream.demo_sinks import wait_caught_up

    marks = offsets.watermarks()  # every sender has flushed: these ends hold the whole job
    state: dict[str, Any] = {}

    def on_lag(lag: int) -> None:
        if "bar" not in state:
            state["first"] = lag
            state["bar"] = progress(f"{len(sinks)} sinks catching up", total=lag)
        bar = state["bar"]
        bar.advance(max(0, state["first"] - lag - bar.done))

    lags = wait_caught_up(sinks, offsets, marks, args.timeout, on_lag)
    state["bar"].finish("lag 0 for " + ", ".join(lags))
    return lags


def _report(
    args: argparse.Namespace,
    work: Path,
    job_id: str,
    bootstrap: str,
    sent: dict[str, int],
    lags: dict[str, int],
    codes: dict[str, int],
    began: float,
    keys: Path | None,
) -> int:
    from flarestream.demo_report import (
        COUNTED,
        count_mlflow,
        count_tensorboard,
        plot_curves,
        read_archive,
        summary_table,
    )
    from flarestream.demo_sinks import mlflow_uri

    _say("reading every sink back")
    sites = sorted(sent, key=lambda s: int(s.rsplit("-", 1)[1]))
    archive = read_archive(work / "archive", job_id)
    found: dict[str, Counter[str]] = {
        "tensorboard": count_tensorboard(work / "tensorboard", job_id),
        "mlflow": count_mlflow(mlflow_uri(work), job_id),
        "archive": archive.counts,
    }
    png = work / f"{job_id}-curves.png"
    curves_line = plot_curves(archive, sites, png, job_id, args.rounds, args.steps)
    table, ok = summary_table(sites, sent, found, archive)
    print(
        f"job {job_id}: {args.sites} sites x {args.rounds} rounds x {args.steps} steps, "
        f"topic {args.topic!r} at {bootstrap}\n"
    )
    print("\n".join(table) + "\n")
    print(COUNTED + "\n")
    if keys is not None:
        print(
            f"signing: on: each site signed its records with its own Ed25519 key ({keys});\n"
            "         every sink verified every record (--verify-keys)\n"
        )
    else:
        print("signing: off (--no-signing): records are not signed or verified\n")
    print(f"{'consumer group':<36}{'lag':>5}  sink exit code")
    for name, group in zip(codes, lags, strict=True):
        print(f"{group:<36}{lags[group]:>5}  {codes[name]}")
    mlflow_ui = f"mlflow ui --backend-store-uri {mlflow_uri(work)}"
    print("\nwhere to look:")
    print(f"  TensorBoard: tensorboard --logdir {work / 'tensorboard'}")
    print(f"  MLflow:      {mlflow_ui}{_mlflow_ui_note()}")
    print(f"  archive:     {work / 'archive' / job_id}")
    print(f"  {curves_line}")
    print(f"  sink logs:   {work / 'logs'}\n")
    took = time.monotonic() - began
    if ok and not any(lags.values()):
        print(f"OK: every record of job {job_id} is in every sink exactly once ({took:.1f} s)")
        return 0
    print(f"FAILED: some sink does not hold every record of {job_id} once (rows marked above)")
    return 1


def _mlflow_ui_note() -> str:
    """mlflow-skinny (the ``mlflow`` extra) has no UI; the full package does."""
    from importlib.metadata import PackageNotFoundError, version

    try:
        version("mlflow")
    except PackageNotFoundError:
        return "  (the UI needs the full package: pip install mlflow)"
    return ""
