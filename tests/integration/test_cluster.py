"""A real 3-broker cluster: sites keep streaming while a broker is SIGKILLed and brought
back, and nothing is lost, doubled or reordered.

One module-scoped run does the expensive part (start the cluster, stream through the
crash); the tests read what landed, each in its own way.
"""

from __future__ import annotations

import argparse
import sys
import threading
import traceback
import uuid
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

import pytest
from confluent_kafka import Consumer, TopicPartition

from flarestream.deploy import create_topic, describe_topic
from flarestream.deploy.cluster import LocalCluster
from flarestream.deploy.cluster_cli import add_cluster_parser
from flarestream.errors import BrokerError, ConfigError, FlarestreamError
from flarestream.producer import AnalyticsSender
from flarestream.schemas import AnalyticsDataType, Record, default_codec

SITES = ("site-1", "site-2", "site-3")
PER_SITE = 5_000
PARTITIONS = 6
# where each site pauses, so that the crash happens mid-stream whatever the speed
FLUSHED = 1_000  # sent and confirmed before anything happens
AT_KILL = 2_500  # sent (not flushed) when the broker is killed
AT_RESTART = 3_750  # sent while the broker is down
WAIT_S = 180


def value_of(i: int) -> float:
    return i / 4 - 100.0  # exact in binary floating point


@dataclass
class CrashRun:
    """What the streaming run left behind for the tests to check."""

    cluster: LocalCluster
    topic: str
    victim: int
    victim_led: list[int]  # partitions with the sites' data that the victim led
    errors: list[str] = field(default_factory=list)  # tracebacks of the run's failures


class _Phases:
    """Rendezvous points between the site threads and the test's crash schedule."""

    def __init__(self) -> None:
        self.flushed = threading.Barrier(len(SITES) + 1, timeout=WAIT_S)
        self.at_kill = threading.Barrier(len(SITES) + 1, timeout=WAIT_S)
        self.killed = threading.Event()
        self.at_restart = threading.Barrier(len(SITES) + 1, timeout=WAIT_S)
        self.restarted = threading.Event()

    def abort(self) -> None:
        for barrier in (self.flushed, self.at_kill, self.at_restart):
            barrier.abort()
        self.killed.set()
        self.restarted.set()


def _site(site: str, bootstrap: str, topic: str, phases: _Phases, errors: list[str]) -> None:
    try:
        sender = AnalyticsSender(
            site=site, job_id="cluster-crash", bootstrap_servers=bootstrap, topic=topic
        )
        for i in range(PER_SITE):
            if i == FLUSHED:
                sender.flush(timeout=WAIT_S)
                phases.flushed.wait()
            elif i == AT_KILL:
                phases.at_kill.wait()
                phases.killed.wait(WAIT_S)
            elif i == AT_RESTART:
                phases.at_restart.wait()
                phases.restarted.wait(WAIT_S)
            sender.add("train/loss", value_of(i), AnalyticsDataType.SCALAR, global_step=i)
        sender.close(timeout=WAIT_S)  # raises DeliveryError naming what was not delivered
    except BaseException:
        errors.append(f"site {site}: {traceback.format_exc()}")
        phases.abort()


def _leaders(bootstrap: str, topic: str) -> dict[int, int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe", "log_level": 0})
    try:
        meta = consumer.list_topics(topic, timeout=30).topics[topic]
        return {p: part.leader for p, part in meta.partitions.items()}
    finally:
        consumer.close()


def _partitions_with_data(bootstrap: str, topic: str) -> list[int]:
    consumer = Consumer({"bootstrap.servers": bootstrap, "group.id": "probe", "log_level": 0})
    try:
        return [
            p
            for p in range(PARTITIONS)
            if consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1] > 0
        ]
    finally:
        consumer.close()


@pytest.fixture(scope="module")
def crash_run(tmp_path_factory: pytest.TempPathFactory) -> Iterator[CrashRun]:
    cluster = LocalCluster(tmp_path_factory.mktemp("cluster"), size=3)
    try:
        bootstrap = cluster.start(timeout=240)
    except BrokerError as exc:
        cluster.stop(timeout=10)
        pytest.fail(f"the local 3-broker cluster did not start: {exc}", pytrace=False)
    try:
        topic = f"cluster.crash.{uuid.uuid4().hex[:8]}"
        create_topic(
            bootstrap,
            topic,
            partitions=PARTITIONS,
            replication_factor=3,
            config={"min.insync.replicas": "2"},
        )
        phases = _Phases()
        errors: list[str] = []
        threads = [
            threading.Thread(target=_site, args=(s, bootstrap, topic, phases, errors), name=s)
            for s in SITES
        ]
        for thread in threads:
            thread.start()
        try:
            phases.flushed.wait()
            # kill the broker that leads most of the partitions the sites write to,
            # so producers must fail over to a new leader mid-stream
            used = _partitions_with_data(bootstrap, topic)
            leaders = _leaders(bootstrap, topic)
            victim = Counter(leaders[p] for p in used).most_common(1)[0][0]
            phases.at_kill.wait()
            cluster.kill(victim)
            phases.killed.set()
            phases.at_restart.wait()
            cluster.start_node(victim, timeout=WAIT_S)
            phases.restarted.set()
        except BaseException:
            errors.append(f"crash schedule: {traceback.format_exc()}")
            phases.abort()
            victim = -1
            used, leaders = [], {}
        for thread in threads:
            thread.join(WAIT_S * 2)
        assert not any(t.is_alive() for t in threads), "a site thread hung"
        yield CrashRun(
            cluster, topic, victim, [p for p in used if leaders.get(p) == victim], errors
        )
    finally:
        cluster.stop()


def _read_all(bootstrap: str, topic: str) -> dict[int, list[tuple[int, Record]]]:
    """Every record of ``topic`` per partition, in offset order, with its offset."""
    codec = default_codec()
    consumer = Consumer(
        {
            "bootstrap.servers": bootstrap,
            "group.id": f"verify-{uuid.uuid4().hex[:8]}",
            "enable.auto.commit": False,
            "log_level": 0,
        }
    )
    try:
        ends = {
            p: consumer.get_watermark_offsets(TopicPartition(topic, p), timeout=30)[1]
            for p in range(PARTITIONS)
        }
        consumer.assign([TopicPartition(topic, p, 0) for p in range(PARTITIONS)])
        out: dict[int, list[tuple[int, Record]]] = {p: [] for p in range(PARTITIONS)}
        done = {p for p, end in ends.items() if end == 0}
        misses = 0
        while len(done) < PARTITIONS:
            msgs = consumer.consume(1000, timeout=1)
            misses = 0 if msgs else misses + 1
            assert misses < 60, f"no progress reading {topic}: {ends=}, done={sorted(done)}"
            for msg in msgs:
                assert msg.error() is None, msg.error()
                p, offset, value = msg.partition(), msg.offset(), msg.value()
                assert p is not None and offset is not None and value is not None
                out[p].append((offset, codec.decode(value)))
                if offset + 1 >= ends[p]:
                    done.add(p)
        return out
    finally:
        consumer.close()


def _assert_every_site_complete(records_by_site: dict[str, list[Record]]) -> None:
    """Each site's records, in the order read: seq 0..N-1 once each, values as sent."""
    assert sorted(records_by_site) == sorted(SITES)
    for site, records in records_by_site.items():
        seqs = [r.seq for r in records]
        assert seqs == list(range(PER_SITE)), (
            f"{site}: {len(seqs)} records, first disorder at "
            f"{next((i for i, s in enumerate(seqs) if s != i), None)}"
        )
        assert [(r.step, r.value) for r in records] == [
            (i, value_of(i)) for i in range(PER_SITE)
        ], site
        assert len({r.record_id for r in records}) == PER_SITE


@pytest.mark.integration
@pytest.mark.slow
def test_sites_stream_through_a_broker_crash_without_delivery_errors(crash_run: CrashRun) -> None:
    assert not crash_run.errors, "\n".join(crash_run.errors)
    assert crash_run.victim in (1, 2, 3)
    assert crash_run.victim_led, "the killed broker led none of the sites' partitions"
    info = describe_topic(crash_run.cluster.bootstrap, crash_run.topic)
    assert (info.partitions, info.replication_factor) == (PARTITIONS, 3)
    assert info.config["min.insync.replicas"] == "2"
    assert crash_run.cluster.is_running()


@pytest.mark.integration
@pytest.mark.slow
def test_consumer_reads_every_record_once_in_order_after_a_broker_crash(
    crash_run: CrashRun,
) -> None:
    assert not crash_run.errors, "\n".join(crash_run.errors)
    by_partition = _read_all(crash_run.cluster.bootstrap, crash_run.topic)
    by_site: dict[str, list[Record]] = {}
    partition_of: dict[str, set[int]] = {}
    for p, entries in by_partition.items():
        offsets = [offset for offset, _ in entries]
        assert offsets == sorted(offsets)
        for _, record in entries:
            by_site.setdefault(record.site, []).append(record)
            partition_of.setdefault(record.site, set()).add(p)
    _assert_every_site_complete(by_site)
    # the site is the key: each site's records sit on one partition, in send order
    assert all(len(parts) == 1 for parts in partition_of.values()), partition_of
    assert sum(len(v) for v in by_partition.values()) == len(SITES) * PER_SITE


@pytest.mark.integration
@pytest.mark.slow
def test_archive_sink_drains_every_record_once_in_order_after_a_broker_crash(
    crash_run: CrashRun, tmp_path: Path
) -> None:
    from flarestream.consumers import LoopConfig, run_sink
    from flarestream.consumers.archive import ArchiveSink
    from flarestream.consumers.archive_reader import ArchiveReader

    assert not crash_run.errors, "\n".join(crash_run.errors)
    root = tmp_path / "archive"
    config = LoopConfig(
        bootstrap_servers=crash_run.cluster.bootstrap,
        topic=crash_run.topic,
        group=f"archive-{uuid.uuid4().hex[:8]}",
        until_end=True,
        flush_interval_s=1.0,
    )
    stats = run_sink(ArchiveSink(root), config, handle_signals=False)
    assert (stats.consumed, stats.written, stats.dead_lettered) == (
        len(SITES) * PER_SITE,
        len(SITES) * PER_SITE,
        0,
    )
    with ArchiveReader(root) as archive:
        files = list(archive.files(job_id="cluster-crash"))
        assert files and all(archive.verify(f) == [] for f in files)
        archived = [rec for f in files for rec in archive.records(f)]
    coordinates = [(a.partition, a.offset) for a in archived]
    assert len(set(coordinates)) == len(coordinates) == len(SITES) * PER_SITE
    by_site: dict[str, list[Record]] = {}
    for a in sorted(archived, key=lambda a: (a.partition, a.offset)):
        assert a.topic == crash_run.topic
        by_site.setdefault(a.record.site, []).append(a.record)
    _assert_every_site_complete(by_site)


def test_cluster_refuses_a_size_that_cannot_replicate_three_times(tmp_path: Path) -> None:
    for size in (1, 2, 10, True, "3"):
        with pytest.raises(ConfigError, match="size must be an integer from 3 to 9"):
            LocalCluster(tmp_path, size=size)  # type: ignore[arg-type]


def cluster_cli(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    """``flarestream broker cluster ARGV`` in-process: (exit code, stdout, stderr), with
    errors reported as the flarestream command does (exit 1, no traceback)."""
    parser = argparse.ArgumentParser(prog="flarestream broker")
    add_cluster_parser(parser.add_subparsers(dest="broker_command"))
    args = parser.parse_args(["cluster", *argv])
    capsys.readouterr()
    try:
        rc = args.func(args)
    except FlarestreamError as exc:
        print(exc, file=sys.stderr)
        rc = 1
    out, err = capsys.readouterr()
    return rc, out, err


@pytest.mark.integration
@pytest.mark.slow
def test_cli_kills_a_node_reports_the_cluster_degraded_and_brings_it_back(
    crash_run: CrashRun, capsys: pytest.CaptureFixture[str]
) -> None:
    where = ("--data-dir", str(crash_run.cluster.data_dir))
    rc, out, _ = cluster_cli(capsys, "status", *where)
    assert rc == 0 and f"running: 3 of 3 nodes; bootstrap {crash_run.cluster.bootstrap}" in out
    assert cluster_cli(capsys, "kill", "--node", "3", *where)[0] == 0
    rc, out, _ = cluster_cli(capsys, "status", *where)
    assert rc == 1 and "node 3: stopped" in out and "degraded: 2 of 3 nodes" in out
    rc, _, err = cluster_cli(capsys, "start", *where)
    assert rc == 1 and "already running" in err and "start-node" in err
    rc, out, _ = cluster_cli(capsys, "start-node", "--node", "3", *where)
    assert rc == 0 and "node 3 running" in out
    assert cluster_cli(capsys, "status", *where)[0] == 0


def test_cli_status_of_a_directory_without_a_cluster_fails(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    rc, out, _ = cluster_cli(capsys, "status", "--data-dir", str(tmp_path))
    assert rc == 1 and "never started" in out
    assert cluster_cli(capsys, "stop", "--data-dir", str(tmp_path))[:2] == (
        0,
        f"not running (data dir {tmp_path.resolve()})\n",
    )


@pytest.mark.integration
@pytest.mark.slow
def test_stopped_cluster_starts_again_on_its_directory_with_its_ports_and_data(
    crash_run: CrashRun, capsys: pytest.CaptureFixture[str]
) -> None:
    """Runs last in this module: it stops the cluster of the crash run."""
    where = ("--data-dir", str(crash_run.cluster.data_dir))
    before = crash_run.cluster.bootstrap
    rc, out, _ = cluster_cli(capsys, "stop", *where)
    assert rc == 0 and out.startswith("stopped")
    assert crash_run.cluster.running_nodes() == []
    rc, out, err = cluster_cli(capsys, "start", "--timeout", "240", *where)
    try:
        assert rc == 0, err
        assert out.strip().splitlines()[-1] == before  # the ports it had before
        info = describe_topic(before, crash_run.topic)
        assert (info.partitions, info.replication_factor) == (PARTITIONS, 3)
        assert sum(len(v) for v in _read_all(before, crash_run.topic).values()) == (
            len(SITES) * PER_SITE
        )
    finally:
        assert cluster_cli(capsys, "stop", *where)[0] == 0
    assert not crash_run.cluster.is_running()
