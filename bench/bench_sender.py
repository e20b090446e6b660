"""Sender and codec throughput beside the raw libraries, side by side in one run.

Measures, for the same N scalar records, interleaved over several rounds (median
reported, because absolute times drift on shared machines):

- raw fastavro: ``schemaless_writer`` of prepared datum dicts
- codec encode: ``Codec.encode(Record)`` (validation-free, framing included)
- raw fastavro decode vs ``Codec.decode``
- raw confluent-kafka: ``produce()`` of the pre-encoded bytes, same producer
  settings as the sender (idempotent, acks=all, lz4), flush included
- ``AnalyticsSender.add()`` for scalars: validate + encode + enqueue, flush included

Usage: ``python bench/bench_sender.py [--records N] [--rounds R]``. Uses
``FLARESTREAM_BOOTSTRAP_SERVERS`` when set, else starts a throwaway local broker.
"""

from __future__ import annotations

import argparse
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from io import BytesIO
from pathlib import Path

from confluent_kafka import Producer
from fastavro import schemaless_reader, schemaless_writer

from flarestream.deploy import LocalBroker, create_topic
from flarestream.producer import AnalyticsDataType, AnalyticsSender
from flarestream.producer.sender import DEFAULT_SETTINGS, REQUIRED_SETTINGS
from flarestream.schemas import Codec, Record


def timed(fn: Callable[[], object], n: int) -> float:
    start = time.perf_counter()
    fn()
    return n / (time.perf_counter() - start)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=300_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.records

    codec = Codec()
    records = [
        Record("site-1", "job-1", "0123456789abcdef", i, 1_700_000_000_000 + i // 100,
               "train/loss", AnalyticsDataType.SCALAR, 1.0 / (i + 1), step=i)
        for i in range(n)
    ]  # fmt: skip
    datums = [codec.to_datum(r) for r in records]
    bodies = [codec.encode(r)[10:] for r in records]
    payloads = [codec.encode(r) for r in records]
    schema = codec.schema

    def raw_encode() -> None:
        for d in datums:
            out = BytesIO()
            schemaless_writer(out, schema, d)
            out.getvalue()

    def codec_encode() -> None:
        enc = codec.encode
        for r in records:
            enc(r)

    def raw_decode() -> None:
        for b in bodies:
            schemaless_reader(BytesIO(b), schema, None)

    def codec_decode() -> None:
        dec = codec.decode
        for p in payloads:
            dec(p)

    broker = None
    bootstrap = os.environ.get("FLARESTREAM_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = LocalBroker(Path(tempfile.mkdtemp(prefix="flarestream-bench-")))
        bootstrap = broker.start()
    try:
        topic = f"bench.sender.{int(time.time())}"
        create_topic(bootstrap, topic, 1, 1)
        config = {**DEFAULT_SETTINGS, **REQUIRED_SETTINGS, "bootstrap.servers": bootstrap}
        raw_producer = Producer(config)
        sender = AnalyticsSender(
            site="site-1", job_id="job-1", bootstrap_servers=bootstrap, topic=topic
        )
        sender.add("warmup", 0.0, AnalyticsDataType.SCALAR)
        sender.flush()
        raw_producer.produce(topic, payloads[0], b"site-1")
        raw_producer.flush()

        def raw_produce() -> None:
            produce, poll = raw_producer.produce, raw_producer.poll
            for i, p in enumerate(payloads):
                produce(topic, p, b"site-1")
                if not i % 1024:
                    poll(0)
            raw_producer.flush()

        def sender_add() -> None:
            add, scalar = sender.add, AnalyticsDataType.SCALAR
            for i in range(n):
                add("train/loss", 1.0 / (i + 1), scalar, i)
            sender.flush()

        cases = {
            "raw fastavro encode": raw_encode,
            "codec encode": codec_encode,
            "raw fastavro decode": raw_decode,
            "codec decode": codec_decode,
            "raw confluent-kafka produce": raw_produce,
            "AnalyticsSender.add": sender_add,
        }
        rates: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, fn in cases.items():
                rates[name].append(timed(fn, n))
        sender.close()
    finally:
        if broker is not None:
            broker.stop()

    med = {name: statistics.median(v) for name, v in rates.items()}
    py = sys.version.split()[0]
    print(f"{n} scalar records x {args.rounds} rounds (median records/s), python {py}")
    for name, rate in med.items():
        print(f"  {name:<30} {rate:>12,.0f}")
    print("ratios:")
    for label, num, den in (
        ("codec encode / raw fastavro encode", "codec encode", "raw fastavro encode"),
        ("codec decode / raw fastavro decode", "codec decode", "raw fastavro decode"),
        ("sender / raw produce", "AnalyticsSender.add", "raw confluent-kafka produce"),
    ):
        print(f"  {label:<36} {med[num] / med[den]:.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
