"""Replay throughput beside the raw libraries doing the same reads, in one run.

For the same N records (scalars from three sites on a 3-partition topic, archived
once with the archive sink), interleaved over several rounds (median reported):

- raw confluent-kafka consumer: assign every partition at 0, consume to the high
  watermarks, touch each value (no decoding)
- replay topic -> JSON Lines (a file) and topic -> archive sink (a fresh directory)
- raw fastavro reader: every archive file with ``fastavro.reader``, touch each message
- for context, each raw read again with ``Codec.decode`` of every message: replay must
  decode (sinks take records), so these show what replay adds beyond decoding
- replay archive -> JSON Lines and archive -> archive sink (sha256 check included)

Usage: ``python bench/bench_replay.py [--records N] [--rounds R]``. Uses
``FLARESTREAM_BOOTSTRAP_SERVERS`` when set, else starts a throwaway local broker.
"""

from __future__ import annotations

import argparse
import os
import shutil
import statistics
import sys
import tempfile
import time
import uuid
from collections.abc import Callable
from pathlib import Path

import fastavro
from confluent_kafka import Consumer, Producer, TopicPartition

from flarestream.consumers import LoopConfig, run_sink
from flarestream.consumers.archive import ArchiveSink
from flarestream.consumers.archive_source import ArchiveSource
from flarestream.consumers.replay import replay
from flarestream.consumers.replay_targets import JsonLinesTarget
from flarestream.consumers.topic_source import TopicSource
from flarestream.deploy import LocalBroker, create_topic
from flarestream.schemas import AnalyticsDataType, Codec, Record

SITES = ("site-1", "site-2", "site-3")
RAW_KAFKA = "raw confluent-kafka consumer"
RAW_AVRO = "raw fastavro reader (archive)"


def produce(bootstrap: str, topic: str, n: int) -> None:
    codec = Codec()
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True,
                         "linger.ms": 20, "compression.type": "lz4"})  # fmt: skip
    now = int(time.time() * 1000)
    for i in range(n):
        site = SITES[i % 3]
        rec = Record(site, "job-bench", f"sender-{site}", i // 3, now, "train/loss",
                     AnalyticsDataType.SCALAR, 1.0 / (i + 1), step=i // 3)  # fmt: skip
        while True:
            try:
                producer.produce(topic, codec.encode(rec), site.encode())
                break
            except BufferError:
                producer.poll(0.1)
    assert producer.flush(60) == 0


def raw_consume(bootstrap: str, topic: str, decode: bool = False) -> int:
    c = Consumer({"bootstrap.servers": bootstrap, "group.id": f"bench-{uuid.uuid4().hex}",
                  "enable.auto.commit": False, "enable.partition.eof": True})  # fmt: skip
    ends = {p: c.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in range(3)}
    c.assign([TopicPartition(topic, p, 0) for p in range(3)])
    todo, seen, decoder = {p for p, end in ends.items() if end}, 0, Codec().decode
    while todo:
        for m in c.consume(2000, timeout=1):
            p, offset, value = m.partition(), m.offset(), m.value() or b""
            if m.error() is None and p is not None and offset is not None:
                seen += decoder(value) is not None if decode else len(value) > 0
                if offset + 1 >= ends[p]:
                    todo.discard(p)
    c.close()
    return seen


def raw_fastavro(root: Path, decode: bool = False) -> int:
    seen, decoder = 0, Codec().decode
    for path in sorted(root.rglob("*.avro")):
        with open(path, "rb") as fo:
            for row in fastavro.reader(fo):
                message: bytes = row["message"]  # type: ignore[index,call-overload,assignment]
                seen += decoder(message) is not None if decode else len(message) > 0
    return seen


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--records", type=int, default=200_000)
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    n = args.records
    work = Path(tempfile.mkdtemp(prefix="flarestream-bench-replay-"))
    broker = None
    bootstrap = os.environ.get("FLARESTREAM_BOOTSTRAP_SERVERS")
    if not bootstrap:
        broker = LocalBroker(work / "broker")
        bootstrap = broker.start()
    try:
        topic = f"bench.replay.{uuid.uuid4().hex[:8]}"
        create_topic(bootstrap, topic, 3, 1)
        produce(bootstrap, topic, n)
        archive = work / "archive"
        group = f"bench-{uuid.uuid4().hex}"
        config = LoopConfig(bootstrap_servers=bootstrap, topic=topic, group=group, until_end=True)
        run_sink(ArchiveSink(archive), config, handle_signals=False)

        def fresh(name: str) -> Path:
            path = work / name
            shutil.rmtree(path, ignore_errors=True)
            return path

        def from_topic(sink: Callable[[], object]) -> Callable[[], int]:
            def run() -> int:
                with TopicSource(bootstrap, topic) as source:
                    return replay(source.batches(), sink()).written  # type: ignore[arg-type]

            return run

        def from_archive(sink: Callable[[], object]) -> Callable[[], int]:
            def run() -> int:
                with ArchiveSource(str(archive)) as source:
                    return replay(source.batches(), sink()).written  # type: ignore[arg-type]

            return run

        cases: dict[str, Callable[[], int]] = {
            RAW_KAFKA: lambda: raw_consume(bootstrap, topic),
            "replay topic -> JSON Lines": from_topic(lambda: JsonLinesTarget(work / "t.jsonl")),
            "replay topic -> archive sink": from_topic(lambda: ArchiveSink(fresh("t-archive"))),
            RAW_KAFKA + " + Codec.decode": lambda: raw_consume(bootstrap, topic, decode=True),
            RAW_AVRO: lambda: raw_fastavro(archive),
            RAW_AVRO + " + Codec.decode": lambda: raw_fastavro(archive, decode=True),
            "replay archive -> JSON Lines": from_archive(lambda: JsonLinesTarget(work / "a.jsonl")),
            "replay archive -> archive sink": from_archive(lambda: ArchiveSink(fresh("a-archive"))),
        }
        rates: dict[str, list[float]] = {name: [] for name in cases}
        for _ in range(args.rounds):
            for name, fn in cases.items():
                start = time.perf_counter()
                count = fn()
                rates[name].append(count / (time.perf_counter() - start))
                assert count == n, f"{name}: {count} records, expected {n}"
    finally:
        if broker is not None:
            broker.stop()
        shutil.rmtree(work, ignore_errors=True)

    med = {name: statistics.median(v) for name, v in rates.items()}
    print(f"{n} records x {args.rounds} rounds (median records/s), python {sys.version.split()[0]}")
    for name, rate in med.items():
        print(f"  {name:<45} {rate:>10,.0f}")
    print("ratios (replay / raw read, replay / raw read + decode):")
    for name, rate in med.items():
        if name.startswith("replay"):
            base = RAW_KAFKA if name.startswith("replay topic") else RAW_AVRO
            decoded = med[base + " + Codec.decode"]
            print(f"  {name:<45} {rate / med[base]:>5.2f} {rate / decoded:>5.2f}")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
