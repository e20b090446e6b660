"""The archive sink against a real broker: what the topic holds is what the archive
holds, byte for byte and once, locally, as Parquet, compressed, on S3 and after a crash."""

from __future__ import annotations

import datetime as dt
import json
import shutil
import threading
import time
import uuid
from collections import Counter
from pathlib import Path

import fastavro
import numpy as np
import pytest
from confluent_kafka import OFFSET_BEGINNING, Consumer, Producer, TopicPartition

from flarestream.consumers import ConsumerLoop, LoopConfig, run_sink
from flarestream.consumers.archive import ArchiveSink
from flarestream.consumers.archive_files import MANIFEST_SUFFIX
from flarestream.consumers.archive_reader import ArchiveReader
from flarestream.producer import AnalyticsSender
from flarestream.schemas import AnalyticsDataType, Record, decode, encode
from tests.integration.s3_server import s3_server  # noqa: F401 - the fixture
from tests.integration.sinks.archive_harness import HARNESS

pytestmark = pytest.mark.integration

SITES = ("site-1", "site-2", "site-3")
DAY1 = 1_700_000_000_000  # 2023-11-14 UTC


def utc_day(ms: int) -> str:
    return dt.datetime.fromtimestamp(ms / 1000, dt.timezone.utc).date().isoformat()


def send_mix(bootstrap: str, topic: str, job: str, rounds: int = 12) -> None:
    """Records of every common kind from three sites."""
    for site in SITES:
        with AnalyticsSender(site=site, job_id=job, bootstrap_servers=bootstrap, topic=topic) as s:
            for step in range(rounds):
                s.add_scalar("loss", 1.0 / (step + 1), global_step=step)
                s.add_scalars("acc", {"train": 0.5, "val": step / 10}, global_step=step)
            s.add_text("note", f"hello from {site}", global_step=0)
            s.add("params", {"lr": 0.1, "opt": "adam"}, AnalyticsDataType.PARAMETERS)
            s.add_image("img", np.arange(12, dtype=np.uint8).reshape(3, 4), global_step=1)


def send_records(bootstrap: str, topic: str, records: list[Record]) -> None:
    """Records as given (chosen jobs, timestamps, order), keyed by site."""
    producer = Producer({"bootstrap.servers": bootstrap, "enable.idempotence": True})
    for record in records:
        producer.produce(topic, key=record.site.encode(), value=encode(record))
    assert producer.flush(30) == 0


def dated(job: str, site: str, timestamps: list[int]) -> list[Record]:
    """Scalars with chosen sender timestamps (spanning days)."""
    return [
        Record(
            site, job, f"dated-{site}", i, ts, "dated", AnalyticsDataType.SCALAR, float(i), step=i
        )
        for i, ts in enumerate(timestamps)
    ]


def interleaved(jobs: tuple[str, str], n: int) -> list[Record]:
    """Per site, one record of the first job for three of the second: files of the two
    jobs open and complete across each other's starts (what a commit point cuts)."""
    now = int(time.time() * 1000)
    return [
        Record(
            site, job, f"mix-{site}-{job}", i, now, "loss", AnalyticsDataType.SCALAR, i / 7, step=i
        )
        for site in SITES
        for i in range(n)
        for job in [jobs[0] if i % 4 == 1 else jobs[1]]
    ]


def topic_contents(bootstrap: str, topic: str) -> dict[tuple[str, int, int], tuple[bytes, int]]:
    """(value, Kafka timestamp) of every message, read with a plain consumer."""
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"reader-{uuid.uuid4().hex}",
            "enable.auto.commit": False,
        }
    )
    parts = sorted(consumer.list_topics(topic, timeout=30).topics[topic].partitions)
    total = sum(
        consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] for p in parts
    )
    consumer.assign([TopicPartition(topic, p, OFFSET_BEGINNING) for p in parts])
    out: dict[tuple[str, int, int], tuple[bytes, int]] = {}
    deadline = time.monotonic() + 60
    while len(out) < total and time.monotonic() < deadline:
        for m in consumer.consume(500, timeout=1):
            if m.error() is None:
                out[(m.topic(), m.partition(), m.offset())] = (m.value(), m.timestamp()[1])
    consumer.close()
    assert len(out) == total
    return out


def drain(sink: ArchiveSink, bootstrap: str, topic: str, group: str | None = None, **kw) -> None:
    config = LoopConfig(
        bootstrap_servers=bootstrap,
        topic=topic,
        group=group or f"archive-{uuid.uuid4().hex}",
        until_end=True,
        flush_interval_s=0.5,
        **kw,
    )
    run_sink(sink, config, handle_signals=False)


def same_record(a: Record, b: Record) -> bool:
    """Field by field; arrays (images) by content."""
    for name in Record.__slots__:
        x, y = getattr(a, name), getattr(b, name)
        if isinstance(x, np.ndarray) or isinstance(y, np.ndarray):
            if not (np.array_equal(x, y) and np.asarray(x).dtype == np.asarray(y).dtype):
                return False
        elif x != y:
            return False
    return True


def check_archive(root, contents, fmt: str = "avro", **reader_options) -> list[str]:
    """Every message of the topic once, byte for byte, in complete verified files laid
    out by job/site/date and named by topic/partition/first offset. Returns the paths."""
    records = {coords: decode(raw) for coords, (raw, _) in contents.items()}
    key_of = {c: (r.job_id, r.site, utc_day(r.timestamp_ms)) for c, r in records.items()}
    seen: Counter[tuple[str, int, int]] = Counter()
    with ArchiveReader(root, **reader_options) as archive:
        files = list(archive.files())
        assert files and list(archive.files(include_incomplete=True)) == files
        for f in files:
            m = f.manifest
            assert archive.verify(f) == [], f.path
            assert f.path == (
                f"{m.job_id}/{m.site}/{m.date}/{m.topic}+{m.partition}+{m.first_offset:020d}.{fmt}"
            )
            offsets = []
            for rec in archive.records(f):
                coords = (rec.topic, rec.partition, rec.offset)
                seen[coords] += 1
                offsets.append(rec.offset)
                raw, kafka_ts = contents[coords]
                assert rec.raw == raw and rec.kafka_timestamp_ms == kafka_ts
                assert same_record(rec.record, decode(raw))
                assert key_of[coords] == (m.job_id, m.site, m.date)
            # consecutive: every message of this job/site/date between first and last
            assert offsets == sorted(
                o
                for (t, p, o), key in key_of.items()
                if (t, p) == (m.topic, m.partition)
                and m.first_offset <= o <= m.last_offset
                and key == (m.job_id, m.site, m.date)
            )
    assert seen == Counter(dict.fromkeys(contents, 1))
    return [f.path for f in files]


def test_drained_archive_holds_every_record_once_byte_for_byte(kafka_bootstrap, topic, tmp_path):
    send_mix(kafka_bootstrap, topic, "job-a")
    send_mix(kafka_bootstrap, topic, "job-b", rounds=3)
    send_records(
        kafka_bootstrap, topic, dated("job-a", "site-1", [DAY1, DAY1 + 86_400_000, DAY1 + 1])
    )
    contents = topic_contents(kafka_bootstrap, topic)
    drain(ArchiveSink(tmp_path, max_records=10), kafka_bootstrap, topic)
    paths = check_archive(tmp_path, contents)
    dirs = {p.rsplit("/", 1)[0] for p in paths}
    assert {f"job-a/site-1/{utc_day(DAY1)}", f"job-a/site-1/{utc_day(DAY1 + 86_400_000)}"} <= dirs
    assert {d.split("/")[1] for d in dirs} == set(SITES)
    assert {d.split("/")[0] for d in dirs} == {"job-a", "job-b"}


def test_parquet_archive_round_trips_the_same(kafka_bootstrap, topic, tmp_path):
    pq = pytest.importorskip("pyarrow.parquet")
    send_mix(kafka_bootstrap, topic, "job-p")
    contents = topic_contents(kafka_bootstrap, topic)
    drain(ArchiveSink(tmp_path, format="parquet", max_records=20), kafka_bootstrap, topic)
    paths = check_archive(tmp_path, contents, fmt="parquet")
    table = pq.read_table(tmp_path / paths[0])
    assert table.column_names[:5] == [
        "topic",
        "partition",
        "offset",
        "kafka_timestamp_ms",
        "message",
    ]


def test_zstd_compressed_archive_round_trips(kafka_bootstrap, topic, tmp_path):
    send_mix(kafka_bootstrap, topic, "job-z")
    contents = topic_contents(kafka_bootstrap, topic)
    drain(ArchiveSink(tmp_path, compression="zstd"), kafka_bootstrap, topic)
    paths = check_archive(tmp_path, contents)
    with open(tmp_path / paths[0], "rb") as fo:
        assert fastavro.reader(fo).codec == "zstandard"
    manifest = json.loads((tmp_path / (paths[0] + MANIFEST_SUFFIX)).read_text())
    assert manifest["compression"] == "zstd"


def test_s3_archive_round_trips_through_fsspec(kafka_bootstrap, topic, s3_server):  # noqa: F811
    import s3fs

    send_mix(kafka_bootstrap, topic, "job-s3", rounds=4)
    contents = topic_contents(kafka_bootstrap, topic)
    root = s3_server.new_prefix()
    options = s3_server.storage_options()
    drain(ArchiveSink(root, max_records=7, storage_options=options), kafka_bootstrap, topic)
    paths = check_archive(root, contents, storage_options=options)
    fs = s3fs.S3FileSystem(**options)
    stored = sorted(p[len(root) - len("s3://") + 1 :] for p in fs.find(root[len("s3://") :]))
    assert stored == sorted(paths + [p + MANIFEST_SUFFIX for p in paths])
    # a second sink re-reading the whole topic finds the manifests on S3 and adds nothing
    drain(ArchiveSink(root, max_records=5, storage_options=options), kafka_bootstrap, topic)
    assert check_archive(root, contents, storage_options=options) == paths


class SimulatedCrash(Exception):
    pass


class KilledArchiveSink(ArchiveSink):
    """Dies in its Nth write like a killed process: nothing completed, nothing closed."""

    def __init__(self, root: Path, crash_at: int, **kwargs) -> None:
        super().__init__(root, **kwargs)
        self.crash_at, self.writes, self.open_at_crash = crash_at, 0, []

    def write(self, batch):
        self.writes += 1
        if self.writes == self.crash_at:
            self.open_at_crash = self.pending_files()
            raise SimulatedCrash
        return super().write(batch)

    def close(self) -> None:
        pass


def committed_offsets(bootstrap: str, topic: str, group: str) -> dict[int, int]:
    probe = Consumer({"bootstrap.servers": bootstrap, "group.id": group})
    parts = probe.list_topics(topic, timeout=30).topics[topic].partitions
    committed = probe.committed([TopicPartition(topic, p) for p in parts], timeout=30)
    probe.close()
    return {tp.partition: tp.offset for tp in committed if tp.offset >= 0}


def test_killed_sink_resumes_from_commit_without_duplicates(kafka_bootstrap, topic, tmp_path):
    send_records(kafka_bootstrap, topic, interleaved(("job-k1", "job-k2"), 120))
    contents = topic_contents(kafka_bootstrap, topic)
    group = f"archive-crash-{uuid.uuid4().hex}"
    killed = KilledArchiveSink(tmp_path, crash_at=20, max_records=8)
    with pytest.raises(SimulatedCrash):
        drain(killed, kafka_bootstrap, topic, group, poll_batch=10, flush_records=20)
    assert killed.open_at_crash and list(tmp_path.rglob("*.tmp"))  # left behind
    assert committed_offsets(kafka_bootstrap, topic, group)  # some progress was committed
    drain(ArchiveSink(tmp_path, max_records=8), kafka_bootstrap, topic, group)
    paths = check_archive(tmp_path, contents)  # every record once
    assert set(killed.open_at_crash) <= set(paths)  # rewritten under the same names
    assert not list(tmp_path.rglob("*.tmp"))


def archived_count(root: Path) -> int:
    """Records in complete files, from their manifests."""
    with ArchiveReader(root) as archive:
        return sum(f.manifest.record_count for f in archive.files())


def test_idle_file_completes_after_max_age_and_is_committed(kafka_bootstrap, topic, tmp_path):
    group = f"archive-idle-{uuid.uuid4().hex}"
    sink = ArchiveSink(tmp_path, max_age_s=1.0)  # count and size limits are far away
    loop = ConsumerLoop(
        sink,
        LoopConfig(
            bootstrap_servers=kafka_bootstrap, topic=topic, group=group, flush_interval_s=0.2
        ),
    )
    errors: list[BaseException] = []

    def run() -> None:
        try:
            loop.run()
        except BaseException as exc:
            errors.append(exc)

    runner = threading.Thread(target=run)
    runner.start()
    try:
        send_mix(kafka_bootstrap, topic, "job-idle", rounds=2)
        contents = topic_contents(kafka_bootstrap, topic)
        deadline = time.monotonic() + 60
        # nothing new arrives: only the age limit, checked by idle flushes, completes files
        while archived_count(tmp_path) < len(contents) and time.monotonic() < deadline:
            time.sleep(0.2)
        check_archive(tmp_path, contents)
    finally:
        loop.stop()
        runner.join(60)
    assert not errors and not runner.is_alive()
    parts = {p for (_, p, _) in contents}
    ends = {p: max(o for (_, q, o) in contents if q == p) + 1 for p in parts}
    assert committed_offsets(kafka_bootstrap, topic, group) == ends


def test_harness_reads_every_scalar_point_duplicates_included(kafka_bootstrap, topic, tmp_path):
    sent = []
    for site in SITES[:2]:
        with AnalyticsSender(
            site=site, job_id="job-h", bootstrap_servers=kafka_bootstrap, topic=topic
        ) as s:
            for step in range(15):
                s.add_scalar(f"m{step % 3}", step * 0.5, global_step=step)
                sent.append((site, f"m{step % 3}", step, step * 0.5))
            s.add_text("t", "not a point", global_step=1)
    drain(HARNESS.make_sink(tmp_path), kafka_bootstrap, topic)
    assert sorted(HARNESS.read_points(tmp_path, "job-h")) == sorted(sent)
    assert HARNESS.read_points(tmp_path, "other-job") == []
    # a file archived twice (e.g. copied by hand) shows its points twice
    data = next(p for p in tmp_path.rglob("*.avro") if "site-1" in p.parts)
    copy = data.with_name(data.name.replace("+000", "+999", 1))
    shutil.copy(data, copy)
    manifest = json.loads(Path(f"{data}{MANIFEST_SUFFIX}").read_text())
    manifest["file"] = copy.name
    Path(f"{copy}{MANIFEST_SUFFIX}").write_text(json.dumps(manifest))
    points = HARNESS.read_points(tmp_path, "job-h")
    assert len(points) > len(sent) and Counter(points) - Counter(sent)


def test_command_line_drains_into_archive(kafka_bootstrap, topic, tmp_path, run_cli):
    send_mix(kafka_bootstrap, topic, "job-cli", rounds=3)
    contents = topic_contents(kafka_bootstrap, topic)
    result = run_cli(
        "sink",
        "archive",
        "--bootstrap-servers",
        kafka_bootstrap,
        "--topic",
        topic,
        "--group",
        f"archive-cli-{uuid.uuid4().hex}",
        "--until-end",
        "--flush-interval",
        "0.5",
        *HARNESS.cli_args(tmp_path),
        "--format",
        "parquet",
        "--max-records",
        "5",
    )
    assert result.rc == 0, result.err
    check_archive(tmp_path, contents, fmt="parquet")
