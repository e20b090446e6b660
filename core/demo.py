"""``flarestream demo``: the main job on one machine, from nothing.

Starts (or reuses) the local broker unless ``FLARESTREAM_BOOTSTRAP_SERVERS`` or
``--bootstrap-servers`` names one, creates the topic, lets N simulated sites
train for R rounds while each streams its analytics through an
``AnalyticsSender``, then reads the new records back with a plain consumer and
prints, per site, what was sent and what came back. Exit code 0 only when every
record came back exactly once and in order.
"""

from __future__ import annotations

import argparse
import math
import os
import random
import sys
import threading
import time
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any

from flarestream import settings
from flarestream.producer import AnalyticsSender, MLflowWriter, SummaryWriter


@dataclass
class SiteReport:
    sent: int = 0
    received: int = 0
    partitions: set[int] = field(default_factory=set)
    seqs: list[int] = field(default_factory=list)

    @property
    def in_order(self) -> bool:
        return self.seqs == sorted(self.seqs)

    @property
    def exactly_once(self) -> bool:
        return len(set(self.seqs)) == len(self.seqs) == self.sent


def add_parser(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "demo",
        help="run the main job: local broker, simulated sites, read back, summary",
        description=__doc__.split("\n\n")[1] if __doc__ else None,
    )
    parser.add_argument("--sites", type=int, default=3, help="simulated sites (default 3)")
    parser.add_argument("--rounds", type=int, default=5, help="training rounds (default 5)")
    parser.add_argument(
        "--steps", type=int, default=200, help="local steps per round, one loss each (default 200)"
    )
    parser.add_argument(
        "--topic", default=settings.DEFAULT_TOPIC, help="topic (default %(default)s)"
    )
    parser.add_argument("--partitions", type=int, default=8, help="partitions if the topic is new")
    parser.add_argument(
        "--bootstrap-servers",
        default=os.environ.get(settings.ENV_BOOTSTRAP),
        help="an existing Kafka (default: $FLARESTREAM_BOOTSTRAP_SERVERS, else the local broker)",
    )
    parser.add_argument("--job-id", default=None, help="job id (default: demo-<time>)")
    parser.set_defaults(func=run)


def _progress(message: str) -> None:
    print(f"flarestream demo: {message}", file=sys.stderr, flush=True)


def _bootstrap(args: argparse.Namespace) -> str:
    if args.bootstrap_servers:
        return str(args.bootstrap_servers)
    from flarestream.deploy import LocalBroker

    broker = LocalBroker(settings.home_dir() / "broker", port=settings.LOCAL_BROKER_PORT)
    if broker.is_running():
        _progress(f"using the local broker at {broker.bootstrap}")
        return broker.bootstrap
    _progress("starting the local broker (the first start fetches Kafka with Maven)")
    return broker.start(log=_progress)


def simulate_site(
    site: str, index: int, job_id: str, args: argparse.Namespace, bootstrap: str
) -> int:
    """One site's training loop; returns how many records it sent."""
    rng = random.Random(index)
    speed = 0.6 + 0.15 * index  # each site learns at its own pace
    with AnalyticsSender(
        site=site, job_id=job_id, bootstrap_servers=bootstrap, topic=args.topic
    ) as sender:
        tb = SummaryWriter(sender)
        ml = MLflowWriter(sender)
        ml.log_params({"lr": 0.01 * (index + 1), "optimizer": "sgd", "batch_size": 32})
        ml.set_tags({"site": site, "hospital_tier": str(index % 3)})
        for rnd in range(args.rounds):
            for local in range(args.steps):
                step = rnd * args.steps + local
                progress = step / max(1, args.rounds * args.steps)
                loss = 2.0 * math.exp(-3 * speed * progress) + 0.05 * rng.random()
                tb.add_scalar("train/loss", loss, global_step=step)
            acc = 1 - math.exp(-2 * speed * (rnd + 1) / args.rounds) * 0.9
            tb.add_scalars("val", {"accuracy": acc, "loss": 1 - acc}, global_step=rnd)
            ml.log_metric("val_accuracy", acc, step=rnd)
            sender.add_text("notes", f"{site} finished round {rnd}", global_step=rnd)
            sender.add_image("samples", _image(rng, index, rnd), global_step=rnd)
        ml.log_text(f"{site} trained {args.rounds} rounds", "summary.txt")
        sender.flush()
        return sender.stats["accepted"]


def _image(rng: random.Random, index: int, rnd: int) -> Any:
    try:
        import numpy as np
    except ImportError:  # numpy is optional for the demo: send the pixels as a nested list
        return [[(index * 40 + rnd * 10 + x + y) % 256 for x in range(8)] for y in range(8)]
    img = np.zeros((16, 16, 3), dtype=np.uint8)
    img[..., index % 3] = (np.arange(16)[None, :] * 16 + rnd * 20) % 256
    return img


def run(args: argparse.Namespace) -> int:
    from flarestream.deploy import create_topic

    bootstrap = _bootstrap(args)
    job_id = args.job_id or time.strftime("demo-%Y%m%d-%H%M%S")
    created = create_topic(bootstrap, args.topic, args.partitions, 1)
    _progress(f"topic {args.topic!r} {'created' if created else 'exists'} on {bootstrap}")
    start = _watermarks(bootstrap, args.topic)
    sites = [f"site-{i + 1}" for i in range(args.sites)]
    _image(random.Random(0), 0, 0)  # import numpy once, before the site threads do
    reports: dict[str, SiteReport] = defaultdict(SiteReport)
    errors: list[str] = []

    def worker(i: int, site: str) -> None:
        try:
            reports[site].sent = simulate_site(site, i, job_id, args, bootstrap)
        except Exception as exc:  # reported in the summary, never swallowed
            errors.append(f"{site}: {exc}")

    began = time.monotonic()
    threads = [threading.Thread(target=worker, args=(i, s)) for i, s in enumerate(sites)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    elapsed = time.monotonic() - began
    total = sum(r.sent for r in reports.values())
    _progress(f"{len(sites)} sites sent {total} records in {elapsed:.1f}s; reading them back")
    _read_back(bootstrap, args.topic, start, job_id, reports)
    return _summary(job_id, bootstrap, args.topic, sites, reports, errors)


def _watermarks(bootstrap: str, topic: str) -> dict[int, int]:
    from confluent_kafka import Consumer, TopicPartition

    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "flarestream-demo"})
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        return {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in meta.partitions
        }
    finally:
        consumer.close()


def _read_back(
    bootstrap: str, topic: str, start: dict[int, int], job_id: str, reports: dict[str, SiteReport]
) -> None:
    from confluent_kafka import Consumer, TopicPartition

    from flarestream.schemas import default_codec

    codec = default_codec()
    end = _watermarks(bootstrap, topic)
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": "flarestream-demo",
            "enable.auto.commit": False,
        }
    )
    todo = {p for p in end if end[p] > start.get(p, 0)}
    consumer.assign([TopicPartition(topic, p, start.get(p, 0)) for p in todo])
    try:
        while todo:
            for msg in consumer.consume(10_000, timeout=5):
                if msg.error():
                    continue
                part, offset, value = msg.partition(), msg.offset(), msg.value()
                if part is None or offset is None or value is None:
                    continue
                if offset >= end[part] - 1:
                    todo.discard(part)
                record = codec.decode(value)
                if record.job_id != job_id:
                    continue
                report = reports[record.site]
                report.received += 1
                report.partitions.add(part)
                report.seqs.append(record.seq)
    finally:
        consumer.close()


def _summary(
    job_id: str,
    bootstrap: str,
    topic: str,
    sites: list[str],
    reports: dict[str, SiteReport],
    errors: list[str],
) -> int:
    print(f"job {job_id} on topic {topic!r} at {bootstrap}")
    print(
        f"{'site':<10} {'sent':>8} {'read back':>10} {'partition':>10} {'in order':>9} {'once':>5}"
    )
    ok = not errors
    for site in sites:
        r = reports[site]
        good = r.exactly_once and r.in_order and len(r.partitions) == 1
        ok = ok and good
        parts = ",".join(map(str, sorted(r.partitions))) or "-"
        print(
            f"{site:<10} {r.sent:>8} {r.received:>10} {parts:>10} "
            f"{'yes' if r.in_order else 'NO':>9} {'yes' if r.exactly_once else 'NO':>5}"
        )
    for err in errors:
        print(f"error: {err}")
    print("all records delivered exactly once, in order" if ok else "FAILED: see the rows above")
    return 0 if ok else 1
