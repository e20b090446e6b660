"""The archive sink without a broker: messages are handed to it as the loop would."""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import time
import uuid
from collections import Counter
from pathlib import Path

import fastavro
import pytest

from flarestream.consumers.archive import ArchiveSink
from flarestream.consumers.archive_files import ARCHIVE_SCHEMA, MANIFEST_SUFFIX, ArchiveError
from flarestream.consumers.archive_reader import ArchiveReader, parse_storage_options
from flarestream.consumers.sink import Delivered
from flarestream.errors import ConfigError
from flarestream.schemas import AnalyticsDataType, Record, default_codec

DAY1 = 1_700_000_000_000  # 2023-11-14 22:13:20 UTC
DAY2 = DAY1 + 86_400_000
CODEC = default_codec()


def msg(offset, site="site-1", job="job-1", partition=0, ts=DAY1, topic="t", value=None):
    record = Record(
        site,
        job,
        f"sender-{site}",
        offset,
        ts,
        "loss",
        AnalyticsDataType.SCALAR,
        float(offset) if value is None else value,
        step=offset,
    )
    raw = CODEC.encode(record)
    return Delivered(topic, partition, offset, ts + 7, raw, CODEC.decode(raw))


def archived(root, **options) -> list[tuple[str, int, int, bytes]]:
    """(topic, partition, offset, raw) of every record in complete files."""
    with ArchiveReader(root, **options) as reader:
        return [
            (r.topic, r.partition, r.offset, r.raw)
            for f in reader.files()
            for r in reader.records(f)
        ]


def names(root: Path) -> list[str]:
    return sorted(p.relative_to(root).as_posix() for p in root.rglob("*") if p.is_file())


def test_complete_files_keep_bytes_coordinates_and_layout(tmp_path):
    sink = ArchiveSink(tmp_path, max_records=4)
    sent = [msg(0, "a"), msg(1, "b"), msg(2, "a", ts=DAY2), msg(3, "a"), msg(4, "b")]
    sent += [msg(i, "c", partition=1) for i in range(3)]
    assert sink.write(sent) == []
    sink.close()
    assert names(tmp_path) == [
        "job-1/a/2023-11-14/t+0+00000000000000000000.avro",
        "job-1/a/2023-11-14/t+0+00000000000000000000.avro" + MANIFEST_SUFFIX,
        "job-1/a/2023-11-15/t+0+00000000000000000002.avro",
        "job-1/a/2023-11-15/t+0+00000000000000000002.avro" + MANIFEST_SUFFIX,
        "job-1/b/2023-11-14/t+0+00000000000000000001.avro",
        "job-1/b/2023-11-14/t+0+00000000000000000001.avro" + MANIFEST_SUFFIX,
        "job-1/c/2023-11-14/t+1+00000000000000000000.avro",
        "job-1/c/2023-11-14/t+1+00000000000000000000.avro" + MANIFEST_SUFFIX,
    ]
    got = archived(tmp_path)
    assert sorted(got) == sorted((d.topic, d.partition, d.offset, d.raw) for d in sent)
    with ArchiveReader(tmp_path) as reader:
        files = list(reader.files())
        assert all(reader.verify(f) == [] for f in files)
        a = next(f for f in files if f.path.startswith("job-1/a/2023-11-14"))
        m = a.manifest
        assert (m.first_offset, m.last_offset, m.record_count) == (0, 3, 2)
        assert (m.job_id, m.site, m.date, m.format, m.compression) == (
            "job-1",
            "a",
            "2023-11-14",
            "avro",
            "deflate",
        )
        assert m.size_bytes == (tmp_path / a.path).stat().st_size
        rows = list(reader.rows(a))
        assert rows[1]["kafka_timestamp_ms"] == DAY1 + 7 and rows[1]["step"] == 3
        assert [r.record for r in reader.records(a)] == [sent[0].record, sent[3].record]
        with open(tmp_path / a.path, "rb") as fo:
            avro = fastavro.reader(fo)
            assert avro.codec == "deflate"
            assert avro.writer_schema["name"] == "flarestream.archive.ArchivedRecord"


def test_flush_reports_oldest_open_file_start_then_next_offset(tmp_path):
    sink = ArchiveSink(tmp_path, max_records=2, max_age_s=3600)
    sink.write([msg(0, "a"), msg(1, "b"), msg(2, "a"), msg(3, "c", partition=1)])
    # a's file [0, 2] is complete; b's (from 1) is open; c's (from 3) is open
    assert sink.flush() == {("t", 0): 1, ("t", 1): 3}
    assert len(sink.pending_files()) == 2
    sink.write([msg(4, "b")])  # b's file reaches 2 records and completes
    assert sink.flush() == {("t", 0): 5, ("t", 1): 3}
    sink.close()


def test_rotation_by_record_count(tmp_path):
    sink = ArchiveSink(tmp_path, max_records=10)
    sink.write([msg(i) for i in range(25)])
    assert sink.flush() == {("t", 0): 20}
    sink.close()
    with ArchiveReader(tmp_path) as reader:
        counts = [f.manifest.record_count for f in reader.files()]
    assert counts == [10, 10, 5]


def test_rotation_by_bytes(tmp_path):
    sink = ArchiveSink(tmp_path, compression="none", max_bytes=4000)
    big = "x" * 900
    sink.write([msg(i, value=big + str(i)) for i in range(20)])
    sink.close()
    with ArchiveReader(tmp_path) as reader:
        files = list(reader.files())
    assert len(files) >= 4
    assert sum(f.manifest.record_count for f in files) == 20
    # every file ends at the first record that reaches the limit (block included)
    assert all(f.manifest.size_bytes < 4000 + 2 * 1000 for f in files)


def test_idle_file_completes_after_max_age_when_flushed(tmp_path):
    sink = ArchiveSink(tmp_path, max_age_s=0.2)
    sink.write([msg(0), msg(1)])
    assert sink.flush() == {("t", 0): 0}
    assert archived(tmp_path) == []
    time.sleep(0.3)
    assert sink.flush() == {("t", 0): 2}  # no new record, the file completed all the same
    assert sink.pending_files() == []
    assert [o for _, _, o, _ in archived(tmp_path)] == [0, 1]
    sink.close()


def test_open_file_limit_completes_least_recently_used(tmp_path):
    sink = ArchiveSink(tmp_path, max_open_files=2)
    sink.write([msg(0, "a"), msg(1, "b"), msg(2, "a"), msg(3, "c")])
    assert sink.pending_files() == [
        "job-1/a/2023-11-14/t+0+00000000000000000000.avro",
        "job-1/c/2023-11-14/t+0+00000000000000000003.avro",
    ]
    assert [o for _, _, o, _ in archived(tmp_path)] == [1]
    sink.close()


def test_records_are_streamed_to_disk_before_the_file_completes(tmp_path):
    sink = ArchiveSink(tmp_path, compression="none")
    sink.write([msg(i, value="y" * 1000 + str(i)) for i in range(200)])
    temp = [p for p in tmp_path.rglob(".*.tmp")]
    assert len(temp) == 1 and temp[0].stat().st_size > 100_000
    sink.close()
    assert not list(tmp_path.rglob(".*.tmp"))


@pytest.mark.parametrize("site", ["..", "../up", "a/b", ".hidden", "a\\b", "a\x00b", "", " "])
def test_site_that_would_escape_the_root_is_rejected(tmp_path, site):
    sink = ArchiveSink(tmp_path)
    bad = msg(1, site=site)
    rejections = sink.write([msg(0), bad, msg(2)])
    assert [r.delivered for r in rejections] == [bad]
    assert "site" in rejections[0].reason
    sink.close()
    assert [o for _, _, o, _ in archived(tmp_path)] == [0, 2]
    assert {n.split("/")[1] for n in names(tmp_path)} == {"site-1"}


def test_unsafe_job_id_and_impossible_date_are_rejected(tmp_path):
    sink = ArchiveSink(tmp_path)
    rejections = sink.write([msg(0, job="../../etc"), msg(1, ts=10**17)])
    assert ["job" in rejections[0].reason, "date" in rejections[1].reason] == [True, True]
    assert sink.flush() == {("t", 0): 2}
    sink.close()
    assert names(tmp_path) == []


def crash_and_restart(root, first, second, resend_from_commit, **options):
    """Write ``first``, flush, write ``second``, crash; a new sink gets everything from
    the committed offsets on. Returns (files open at the crash, files after restart)."""
    sink = ArchiveSink(root, **options)
    sink.write(first)
    committed = sink.flush()
    sink.write(second)
    open_at_crash = sink.pending_files()
    del sink  # killed: no flush, no close
    again = [d for d in resend_from_commit if d.offset >= committed[(d.topic, d.partition)]]
    restarted = ArchiveSink(root, **options)
    restarted.write(again)
    restarted.close()
    return open_at_crash, names(root)


def test_restart_after_crash_rewrites_open_files_under_the_same_names(tmp_path):
    stream = [msg(i, "a" if i % 3 else "b") for i in range(30)]
    open_at_crash, files = crash_and_restart(
        tmp_path, stream[:12], stream[12:20], stream, max_records=5
    )
    assert open_at_crash and all(name in files for name in open_at_crash)
    offsets = Counter(o for _, _, o, _ in archived(tmp_path))
    assert offsets == Counter(range(30))  # every record once
    assert not [n for n in files if n.endswith(".tmp")]


def test_restart_skips_records_of_a_file_completed_across_the_commit_point(tmp_path):
    # a's first file [0, 2, 3] completes while b's file (from 1) stays open, so the
    # commit stays at 1 and a's records 2 and 3 come again after the crash
    stream = [msg(0, "a"), msg(1, "b")] + [msg(i, "a") for i in range(2, 12)]
    open_at_crash, files = crash_and_restart(
        tmp_path, stream[:6], stream[6:], stream, max_records=3
    )
    assert "job-1/b/2023-11-14/t+0+00000000000000000001.avro" in open_at_crash
    assert all(name in files for name in open_at_crash)
    assert Counter(o for _, _, o, _ in archived(tmp_path)) == Counter(range(12))


def test_restart_with_other_file_boundaries_writes_no_duplicates(tmp_path):
    stream = [msg(0, "b")] + [msg(i, "a") for i in range(1, 20)]
    crash_and_restart(tmp_path, stream[:10], stream[10:15], stream, max_records=4)
    # a different limit after the restart: boundaries change, records do not repeat
    sink = ArchiveSink(tmp_path, max_records=7)
    sink.write(stream)  # everything again, as a re-read from the beginning would
    sink.close()
    assert Counter(o for _, _, o, _ in archived(tmp_path)) == Counter(range(20))


def test_redelivery_in_the_same_session_writes_no_duplicates(tmp_path):
    sink = ArchiveSink(tmp_path, max_records=4)
    stream = [msg(i, "a" if i % 2 else "b") for i in range(12)]
    sink.write(stream[:9])
    sink.flush()
    sink.write(stream[3:])  # a rebalance handed part of the partition again
    sink.close()
    assert Counter(o for _, _, o, _ in archived(tmp_path)) == Counter(range(12))


def test_lost_partition_discards_its_open_files(tmp_path):
    sink = ArchiveSink(tmp_path)
    sink.write([msg(0, "a"), msg(1, "b", partition=1)])
    sink.drop([("t", 1)])
    assert sink.flush() == {("t", 0): 0}
    sink.close()
    assert [p for _, p, _, _ in archived(tmp_path)] == [0]
    assert not list(tmp_path.rglob("*.tmp"))


def test_data_file_without_manifest_is_incomplete_and_replaced_on_rewrite(tmp_path):
    sink = ArchiveSink(tmp_path)
    sink.write([msg(0), msg(1)])
    sink.close()
    manifest = next(tmp_path.rglob("*" + MANIFEST_SUFFIX))
    manifest.unlink()  # as if killed between the data file and its manifest
    with ArchiveReader(tmp_path) as reader:
        assert list(reader.files()) == []
        [incomplete] = reader.files(include_incomplete=True)
        assert not incomplete.complete and reader.verify(incomplete)
    sink = ArchiveSink(tmp_path)
    sink.write([msg(0), msg(1), msg(2)])
    sink.close()
    assert [o for _, _, o, _ in archived(tmp_path)] == [0, 1, 2]
    assert len(list(tmp_path.rglob("*.avro"))) == 1


def test_verify_reports_a_changed_file(tmp_path):
    sink = ArchiveSink(tmp_path)
    sink.write([msg(0), msg(1)])
    sink.close()
    data = next(tmp_path.rglob("*.avro"))
    data.write_bytes(data.read_bytes()[:-1] + b"\x00")
    with ArchiveReader(tmp_path) as reader:
        [problem] = reader.verify(next(reader.files()))
    assert "sha256" in problem


def test_unreadable_manifest_stops_the_sink_with_advice(tmp_path):
    sink = ArchiveSink(tmp_path)
    sink.write([msg(0)])
    sink.close()
    next(tmp_path.rglob("*" + MANIFEST_SUFFIX)).write_text("{not json")
    with pytest.raises(ArchiveError, match="unreadable"):
        ArchiveSink(tmp_path).write([msg(0)])


@pytest.mark.parametrize("compression", [None, "snappy", "zstd"])
def test_parquet_round_trips_every_column(tmp_path, compression):
    pq = pytest.importorskip("pyarrow.parquet")
    sink = ArchiveSink(tmp_path, format="parquet", compression=compression)
    sent = [msg(i, "a" if i % 2 else "b") for i in range(10)]
    sink.write(sent)
    sink.close()
    assert sorted(archived(tmp_path)) == sorted(
        (d.topic, d.partition, d.offset, d.raw) for d in sent
    )
    with ArchiveReader(tmp_path) as reader:
        files = list(reader.files())
        assert all(reader.verify(f) == [] for f in files)
        assert {f.path.rsplit(".", 1)[1] for f in files} == {"parquet"}
    meta = pq.ParquetFile(tmp_path / files[0].path).metadata
    assert meta.row_group(0).column(0).compression == (compression or "zstd").upper()
    assert json.loads(meta.metadata[b"flarestream.archive.schema"]) == ARCHIVE_SCHEMA


def test_avro_zstd_compression(tmp_path):
    sink = ArchiveSink(tmp_path, compression="zstd")
    sink.write([msg(i) for i in range(5)])
    sink.close()
    data = next(tmp_path.rglob("*.avro"))
    with open(data, "rb") as fo:
        assert fastavro.reader(fo).codec == "zstandard"
    assert [o for _, _, o, _ in archived(tmp_path)] == list(range(5))


def test_fsspec_url_root_round_trips(tmp_path):
    pytest.importorskip("fsspec")
    root = f"memory://archive-test-{uuid.uuid4().hex}/prefix"
    sink = ArchiveSink(root, max_records=3)
    sink.write([msg(i) for i in range(7)])
    assert sink.flush() == {("t", 0): 6}
    sink.close()
    assert [o for _, _, o, _ in archived(root)] == list(range(7))
    with ArchiveReader(root) as reader:
        assert [reader.verify(f) for f in reader.files()] == [[], [], []]


def test_command_line_options_build_the_sink():
    parser = argparse.ArgumentParser()
    ArchiveSink.add_arguments(parser)
    args = parser.parse_args(
        [
            "--root",
            "s3://b/p",
            "--format",
            "parquet",
            "--compression",
            "snappy",
            "--max-records",
            "5",
            "--max-bytes",
            "1000",
            "--max-age",
            "2.5",
            "--storage-option",
            "endpoint_url=http://127.0.0.1:9",
            "--storage-option",
            'client_kwargs={"region_name": "us-east-1"}',
            "--storage-option",
            "secret=abc",
        ]
    )
    sink = ArchiveSink.from_args(args)
    assert (sink.format, sink.compression, sink.max_records, sink.max_bytes, sink.max_age_s) == (
        "parquet",
        "snappy",
        5,
        1000,
        2.5,
    )
    assert sink.storage_options["client_kwargs"] == {"region_name": "us-east-1"}
    described = sink.describe()
    assert described["storage_options"]["secret"] == "***"
    assert "abc" not in json.dumps(described)
    assert ArchiveSink("s3://user:pw@b/p").describe()["root"] == "s3://***@b/p"
    defaults = ArchiveSink.from_args(parser.parse_args([]))
    assert (defaults.root, defaults.format, defaults.compression) == ("archive", "avro", "deflate")


@pytest.mark.parametrize(
    "kwargs",
    [
        {"format": "csv"},
        {"compression": "brotli"},  # parquet only
        {"format": "parquet", "compression": "xz"},  # avro only
        {"max_records": 0},
        {"max_age_s": 0},
        {"storage_options": {"key": "x"}},  # a local root takes none
    ],
)
def test_bad_settings_raise_config_error(tmp_path, kwargs):
    with pytest.raises(ConfigError):
        ArchiveSink(tmp_path, **kwargs).open()


def test_storage_option_without_value_is_refused():
    with pytest.raises(ConfigError, match="KEY=VALUE"):
        parse_storage_options(["endpoint_url"])
    assert parse_storage_options(["a=1", "b=x=y", "c=true"]) == {"a": 1, "b": "x=y", "c": True}


def test_importing_the_sink_loads_no_heavy_backend():
    code = (
        "import sys, flarestream.consumers.archive, flarestream.consumers.archive_reader;"
        "print(sorted(m for m in ('pyarrow', 'fsspec', 's3fs') if m in sys.modules))"
    )
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


def test_local_root_is_created_on_open(tmp_path):
    root = tmp_path / "deep" / "archive"
    sink = ArchiveSink(root)
    sink.open()
    sink.close()
    assert os.path.isdir(root)
