"""What record signing costs: sender and sink throughput with and without it, one run.

For the same N scalar records (one site, ``add_scalar``), side by side:

- sender: ``AnalyticsSender.add_scalar`` x N, flush included (records/s). Unsigned
  senders take the C fast path when it is built; signed ones take the Python path
  (the C path sends no headers), so the "python path" row separates what the path
  costs from what signing costs.
- sink drain: the consumer loop (``run_sink`` with ``until_end``) over the topic the
  sender wrote, into a sink that only counts (loop + decode + verification), and into
  the archive sink (a real sink). With signing, the loop runs with ``verify_keys``.
- per record, no Kafka: ``SigningKey.sign`` and ``PublicKeys.check`` (microseconds).

Each case runs ``--rounds`` times, interleaved (median reported). Usage:
``python bench/bench_signing.py [--records N] [--rounds R] [--json FILE]``. Uses
``FLARESTREAM_BOOTSTRAP_SERVERS`` when set, else starts a throwaway local broker.
TLS is measured by ``bench/bench_security.py``; the two print the same columns.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from flarestream.consumers import Delivered, LoopConfig, Rejection, Sink, run_sink
from flarestream.consumers.archive import ArchiveSink
from flarestream.deploy import LocalBroker, create_topic
from flarestream.producer import AnalyticsSender
from flarestream.schemas import AnalyticsDataType, Record, default_codec
from flarestream.signing import SIGNATURE_HEADER, PublicKeys, SigningKey, write_key_pair

SITE = "site-1"


class CountingSink(Sink):
    """Takes every record and keeps nothing: what is left is the loop's own cost."""

    name = "count"

    def __init__(self) -> None:
        self.count = 0

    def write(self, batch: Sequence[Delivered]) -> Sequence[Rejection]:
        self.count += len(batch)
        return ()

    def flush(self) -> Mapping[tuple[str, int], int] | None:
        return None


def send(bootstrap: str, topic: str, n: int, key: Any) -> float:
    """records/s of one sender writing n scalars (flush included)."""
    with AnalyticsSender(site=SITE, job_id="job-bench", bootstrap_servers=bootstrap,
                         topic=topic, signing_key=key) as sender:  # fmt: skip
        sender.add_scalar("warmup", 0.0, global_step=0)
        sender.flush()
        add = sender.add_scalar
        start = time.perf_counter()
        for i in range(n):
            add("train/loss", 1.0 / (i + 1), global_step=i)
        sender.flush()
        return n / (time.perf_counter() - start)


def drain(bootstrap: str, topic: str, n: int, sink: Sink, keys: Path | None) -> float:
    """records/s of the consumer loop draining the topic into ``sink``."""
    config = LoopConfig(bootstrap_servers=bootstrap, topic=topic, until_end=True,
                        group=f"bench-{uuid.uuid4().hex}", flush_interval_s=1.0,
                        verify_keys=keys)  # fmt: skip
    start = time.perf_counter()
    stats = run_sink(sink, config, handle_signals=False)
    took = time.perf_counter() - start
    if stats.written != n + 1 or stats.dead_lettered:  # + the warm-up record
        raise SystemExit(f"drain of {topic}: {stats}; expected {n + 1} records, no dead letters")
    return n / took


def python_path_rate(bootstrap: str, topic: str, n: int) -> float:
    """The unsigned sender with the C path off (FLARESTREAM_PURE_PYTHON is read at import)."""
    code = (
        "import sys, bench_signing as b; "
        "print(b.send(sys.argv[1], sys.argv[2], int(sys.argv[3]), False))"
    )
    env = {**os.environ, "FLARESTREAM_PURE_PYTHON": "1"}
    out = subprocess.run(
        [sys.executable, "-c", code, bootstrap, topic, str(n)],
        capture_output=True, text=True, env=env, check=True, cwd=Path(__file__).parent,
    )  # fmt: skip
    return float(out.stdout.strip().splitlines()[-1])


def per_record_us(key: SigningKey, keys: PublicKeys, n: int) -> tuple[float, float]:
    codec = default_codec()
    values = [
        codec.encode(Record(SITE, "job", "0123456789abcdef", i, 1_700_000_000_000, "loss",
                            AnalyticsDataType.SCALAR, 1.0 / (i + 1), step=i))
        for i in range(n)
    ]  # fmt: skip
    start = time.perf_counter()
    headers = [[(SIGNATURE_HEADER, key.sign(v))] for v in values]
    sign = (time.perf_counter() - start) / n * 1e6
    check = keys.check
    start = time.perf_counter()
    for v, h in zip(values, headers, strict=True):
        check(SITE, v, h)
    verify = (time.perf_counter() - start) / n * 1e6
    return sign, verify


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0] if __doc__ else None)
    parser.add_argument("--records", type=int, default=50_000)
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--json", metavar="FILE", default=None, help="also write the medians")
    args = parser.parse_args()
    n = args.records
    work = Path(tempfile.mkdtemp(prefix="flarestream-bench-signing-"))
    key = write_key_pair(work / "keys", SITE)
    keys_dir = work / "keys"
    broker = None
    bootstrap = os.environ.get("FLARESTREAM_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = LocalBroker(work / "broker")
        bootstrap = broker.start()
    rates: dict[str, dict[str, list[float]]] = {"unsigned": {}, "signed": {}}
    try:
        for r in range(args.rounds):
            for mode in ("unsigned", "signed"):
                got = rates[mode]
                topic = f"bench.signing.{mode}.{uuid.uuid4().hex[:8]}"
                create_topic(bootstrap, topic, 3, 1)
                signing = key if mode == "signed" else False
                got.setdefault("sender", []).append(send(bootstrap, topic, n, signing))
                verify = keys_dir if mode == "signed" else None
                got.setdefault("drain, counting sink", []).append(
                    drain(bootstrap, topic, n, CountingSink(), verify)
                )
                root = work / f"archive-{mode}-{r}"
                got.setdefault("drain, archive sink", []).append(
                    drain(bootstrap, topic, n, ArchiveSink(root, max_age_s=1.0), verify)
                )
                shutil.rmtree(root, ignore_errors=True)
            topic = f"bench.signing.python.{uuid.uuid4().hex[:8]}"
            create_topic(bootstrap, topic, 3, 1)
            rates["unsigned"].setdefault("sender, python path", []).append(
                python_path_rate(bootstrap, topic, n)
            )
    finally:
        if broker is not None:
            broker.stop()
    sign_us, verify_us = per_record_us(key, PublicKeys.load(keys_dir), min(n, 20_000))
    med = {m: {case: statistics.median(v) for case, v in c.items()} for m, c in rates.items()}
    med["signed"]["sender, python path"] = med["signed"]["sender"]  # signed is the python path
    report(n, args.rounds, med, sign_us, verify_us)
    if args.json:
        result = {"records": n, "rounds": args.rounds, "records_per_s": med,
                  "sign_us": sign_us, "verify_us": verify_us}  # fmt: skip
        Path(args.json).write_text(json.dumps(result, indent=1))
    shutil.rmtree(work, ignore_errors=True)
    return 0


def report(
    n: int, rounds: int, med: dict[str, dict[str, float]], sign_us: float, verify_us: float
) -> None:
    print(f"{n} scalar records, 1 site, 3 partitions, {rounds} rounds (median records/s), "
          f"python {sys.version.split()[0]}")  # fmt: skip
    print(f"  {'':<28}{'unsigned':>12}{'signed':>12}{'signed/unsigned':>17}")
    for case in ("sender", "sender, python path", "drain, counting sink", "drain, archive sink"):
        u, s = med["unsigned"][case], med["signed"][case]
        print(f"  {case:<28}{u:>12,.0f}{s:>12,.0f}{s / u:>17.2f}")
    print(f"  Ed25519 per record, no Kafka: sign {sign_us:.1f} us, verify {verify_us:.1f} us")


if __name__ == "__main__":
    raise SystemExit(main())
