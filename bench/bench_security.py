"""Sender and sink throughput with and without transport security, side by side.

Rows are transports, measured in one run, interleaved over several rounds (median
reported, because absolute rates drift on shared machines):

- ``plaintext``: a plain :class:`LocalBroker`, no authentication;
- ``sasl_ssl``: a :class:`SecureBroker`, TLS + SCRAM-SHA-512 login, ACLs enforced;
- ``mtls``: the same broker's mutual-TLS listener (client certificate), ACLs enforced.

Columns come in pairs per :class:`Variant` (a way of sending and reading records):

- sender records/s: ``AnalyticsSender.add_scalar`` x N, flush included (the
  connection check at construction is not timed);
- sink records/s: the consumer loop draining the topic (``until_end``) into an
  in-memory counting sink, from the first batch the sink receives to the loop's
  return (group join excluded; decode, flush and commit included).

To add columns (e.g. with and without signing), append a :class:`Variant` to
:data:`VARIANTS` whose ``sender_options``/``loop_options`` give the extra
``AnalyticsSender``/``LoopConfig`` arguments; nothing else changes.

Usage: ``python bench/bench_security.py [--records N] [--rounds R]`` (defaults
500,000 and 5, a few minutes). Starts two
throwaway brokers (Java 17+) and stops them at the end.
"""

from __future__ import annotations

import argparse
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flarestream.consumers import Delivered, LoopConfig, Rejection, Sink, run_sink
from flarestream.deploy import LocalBroker, create_topic
from flarestream.deploy.security import (
    SecureBroker,
    add_scram_user,
    grant_sink,
    grant_site,
    mtls_client_config,
)
from flarestream.producer import AnalyticsSender

SITE, SINK = "bench-site", "bench"
Options = Callable[[Path], Mapping[str, Any]]


def _none(_: Path) -> Mapping[str, Any]:
    return {}


@dataclass(frozen=True)
class Variant:
    """One way of sending and reading records: a sender column and a sink column.
    ``sender_options``/``loop_options`` map a scratch directory (for key files...)
    to extra keyword arguments of ``AnalyticsSender``/``LoopConfig``."""

    name: str
    sender_options: Options = _none
    loop_options: Options = _none


VARIANTS: list[Variant] = [Variant("as is")]


@dataclass
class Transport:
    """Where and how records travel; ``admin`` makes topics (and grants ACLs)."""

    name: str
    bootstrap: str
    site: dict[str, Any]
    sink: dict[str, Any]
    admin_bootstrap: str
    admin: dict[str, Any] = field(default_factory=dict)
    secure: bool = False

    def new_topic(self) -> str:
        topic = f"bench.{self.name}.{uuid.uuid4().hex[:8]}"
        create_topic(self.admin_bootstrap, topic, 3, 1, client_config=self.admin)
        create_topic(self.admin_bootstrap, f"{topic}.dlq", 1, 1, client_config=self.admin)
        if self.secure:
            grants = {"bootstrap.servers": self.admin_bootstrap, **self.admin}
            grant_site(grants, topic, SITE)
            grant_sink(grants, topic, f"{topic}.dlq", SINK)
        return topic


class CountingSink(Sink):
    """Counts records; notes when the first batch arrived."""

    name = "count"

    def __init__(self) -> None:
        self.count = 0
        self.first: float | None = None

    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        if self.first is None:
            self.first = time.perf_counter()
        self.count += len(batch)
        return []

    def flush(self) -> Mapping[tuple[str, int], int] | None:
        return None


def send_rate(t: Transport, topic: str, n: int, options: Mapping[str, Any]) -> float:
    sender = AnalyticsSender(
        site=SITE, job_id="bench", bootstrap_servers=t.bootstrap, topic=topic, config=t.site,
        **options,
    )  # fmt: skip
    sender.add_scalar("warmup", 0.0, 0)  # connected, producer id acquired: not timed
    sender.flush()
    start = time.perf_counter()
    add = sender.add_scalar
    for i in range(n):
        add("train/loss", 1.0 / (i + 1), i)
    sender.close()
    return n / (time.perf_counter() - start)


def sink_rate(t: Transport, topic: str, n: int, options: Mapping[str, Any]) -> float:
    sink = CountingSink()
    config = LoopConfig(
        bootstrap_servers=t.bootstrap, topic=topic, group=f"flarestream.bench-{uuid.uuid4().hex}",
        until_end=True, flush_interval_s=1.0, flush_records=50_000, consumer_config=t.sink,
        **options,
    )  # fmt: skip
    run_sink(sink, config, handle_signals=False)
    end = time.perf_counter()
    if sink.count != n + 1 or sink.first is None:  # + the sender's warm-up record
        raise SystemExit(f"{t.name}: the sink read {sink.count} records, not {n}")
    return n / (end - sink.first)


def transports(plain: LocalBroker, secure: SecureBroker) -> list[Transport]:
    """The three transports, with the users and certificates they need."""
    admin = secure.admin_config()
    admin_bootstrap = admin.pop("bootstrap.servers")
    site_pw, sink_pw = f"pw-{uuid.uuid4().hex}", f"pw-{uuid.uuid4().hex}"
    grants = {"bootstrap.servers": admin_bootstrap, **admin}
    add_scram_user(grants, SITE, site_pw)
    add_scram_user(grants, f"sink-{SINK}", sink_pw)
    site_cert = secure.issue_client_certificate(SITE)
    sink_cert = secure.issue_client_certificate(f"sink-{SINK}")
    ca = secure.ca_path
    return [
        Transport("plaintext", plain.bootstrap, {}, {}, plain.bootstrap),
        Transport(
            "sasl_ssl", secure.bootstrap, secure.site_config(SITE, site_pw),
            secure.site_config(f"sink-{SINK}", sink_pw), admin_bootstrap, admin, True,
        ),
        Transport(
            "mtls", secure.mtls_bootstrap, mtls_client_config(site_cert.cert, site_cert.key, ca),
            mtls_client_config(sink_cert.cert, sink_cert.key, ca), admin_bootstrap, admin, True,
        ),
    ]  # fmt: skip


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=500_000)
    parser.add_argument("--rounds", type=int, default=5)
    args = parser.parse_args()
    n = args.records
    work = Path(tempfile.mkdtemp(prefix="flarestream-bench-security-"))
    plain, secure = LocalBroker(work / "plain"), SecureBroker(work / "secure")
    rates: dict[tuple[str, str, str], list[float]] = {}
    try:
        plain.start()
        secure.start()
        rows = transports(plain, secure)
        for r in range(args.rounds):
            for variant in VARIANTS:
                sender_opts = variant.sender_options(work)
                loop_opts = variant.loop_options(work)
                # each round starts with another transport: no order bias in the medians
                for t in rows[r % len(rows) :] + rows[: r % len(rows)]:
                    topic = t.new_topic()
                    key = (t.name, variant.name)
                    rates.setdefault((*key, "sender"), []).append(
                        send_rate(t, topic, n, sender_opts)
                    )
                    rates.setdefault((*key, "sink"), []).append(sink_rate(t, topic, n, loop_opts))
    finally:
        secure.stop()
        plain.stop()
        shutil.rmtree(work, ignore_errors=True)

    columns = [(v.name, what) for v in VARIANTS for what in ("sender", "sink")]
    print(f"{n} scalar records x {args.rounds} rounds, median records/s "
          f"(x: relative to plaintext; spread: max/min over rounds), "
          f"python {sys.version.split()[0]}")  # fmt: skip
    header = "".join(f"{f'{what} [{name}]':>30}" for name, what in columns)
    print(f"{'transport':<12}{header}")
    for t in rows:
        cells = []
        for name, what in columns:
            runs = rates[(t.name, name, what)]
            rate = statistics.median(runs)
            base = statistics.median(rates[("plaintext", name, what)])
            spread = max(runs) / min(runs)
            cells.append(f"{rate:>12,.0f} ({rate / base:4.2f}x, {spread:3.1f})")
        print(f"{t.name:<12}" + "".join(f"{c:>30}" for c in cells))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
