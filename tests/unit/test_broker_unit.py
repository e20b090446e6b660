"""Local-broker refusals and helpers that need no broker: Java/Maven discovery, the jar
cache, pid and port checks, the CLI's help and status."""

from __future__ import annotations

import json
import os
import signal
import socket
import subprocess
import sys
import xml.etree.ElementTree as ET
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flarestream.deploy import (
    LocalBroker,
    create_topic,
    ensure_jars,
    find_java,
    free_port,
    list_topics,
    pinned_kafka_version,
    port_in_use,
    runtime,
)
from flarestream.errors import BrokerError, ConfigError

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def _script(directory: Path, name: str, body: str) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    path = directory / name
    path.write_text("#!/bin/sh\nPATH=/usr/bin:/bin\n" + body + "\n")
    path.chmod(0o755)
    return path


def _fake_java(directory: Path, version: str) -> Path:
    return _script(directory, "java", f"echo 'openjdk version \"{version}\" 2025-01-01' >&2")


@pytest.fixture
def bare_env(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    """No java, no mvn, an empty jar cache; returns a directory that is on PATH."""
    bin_dir = tmp_path / "bin"
    bin_dir.mkdir()
    monkeypatch.setenv("PATH", str(bin_dir))
    monkeypatch.delenv("JAVA_HOME", raising=False)
    monkeypatch.setenv("FLARESTREAM_CACHE", str(tmp_path / "cache"))
    return bin_dir


def test_java_missing_is_refused_with_what_to_do(bare_env: Path, tmp_path: Path) -> None:
    with pytest.raises(BrokerError, match="java not found") as caught:
        find_java()
    assert "Java 17" in str(caught.value) and "JAVA_HOME" in str(caught.value)
    broker = LocalBroker(tmp_path / "data", port=free_port())
    with pytest.raises(BrokerError, match="java not found"):
        broker.start()
    assert not (tmp_path / "data" / "broker.json").exists()  # nothing was spawned


def test_java_home_wins_over_path(
    bare_env: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    _fake_java(bare_env, "21.0.1")
    home_java = _fake_java(tmp_path / "jdk" / "bin", "17.0.2")
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "jdk"))
    assert find_java() == home_java
    monkeypatch.setenv("JAVA_HOME", str(tmp_path / "nowhere"))
    assert find_java() == bare_env / "java"


def test_old_java_is_refused(bare_env: Path, tmp_path: Path) -> None:
    _fake_java(bare_env, "11.0.2")
    with pytest.raises(BrokerError, match=r"Java 11; Kafka 4 needs Java 17"):
        runtime.check_java()
    _fake_java(bare_env, "1.8.0_392")
    assert runtime.java_major_version(bare_env / "java") == 8
    with pytest.raises(BrokerError, match="Java 8"):
        LocalBroker(tmp_path / "data", port=free_port()).start()


def test_missing_maven_is_refused_when_jars_are_not_cached(bare_env: Path, tmp_path: Path) -> None:
    _fake_java(bare_env, "17.0.15")
    with pytest.raises(BrokerError, match=r"mvn \(Apache Maven\) not found") as caught:
        LocalBroker(tmp_path / "data", port=free_port()).start()
    assert "FLARESTREAM_CACHE" in str(caught.value)


def test_cached_jars_need_no_maven(bare_env: Path, tmp_path: Path) -> None:
    libs = runtime.libs_dir("9.9.9")
    assert libs == tmp_path / "cache" / "kafka-9.9.9" / "libs"
    libs.mkdir(parents=True)
    (libs / "kafka_2.13-9.9.9.jar").write_bytes(b"")
    with pytest.raises(BrokerError, match="mvn"):  # no marker: an interrupted fetch
        ensure_jars("9.9.9")
    (libs.parent / ".complete").write_text("9.9.9\n")
    assert ensure_jars("9.9.9") == libs
    assert runtime.classpath(libs) == str(libs / "kafka_2.13-9.9.9.jar")


def test_fetch_is_atomic_and_failures_are_redone(bare_env: Path, tmp_path: Path) -> None:
    marker = tmp_path / "cache" / "kafka-1.2.3" / ".complete"
    _script(bare_env, "mvn", "echo 'could not resolve kafka_2.13:1.2.3'; exit 1")
    with pytest.raises(BrokerError, match=r"could not resolve kafka_2\.13:1\.2\.3"):
        ensure_jars("1.2.3")
    assert not marker.exists()
    fake_fetch = (
        'for a in "$@"; do case "$a" in -DoutputDirectory=*) out="${a#-DoutputDirectory=}";; '
        'esac; done\nmkdir -p "$out" && touch "$out/kafka_2.13-1.2.3.jar" "$out/dep.jar"\n'
        'echo "$@" > "$out/../args"'
    )
    _script(bare_env, "mvn", fake_fetch)
    libs = ensure_jars("1.2.3", log=lambda _m: None)
    assert sorted(p.name for p in libs.iterdir()) == ["dep.jar", "kafka_2.13-1.2.3.jar"]
    assert marker.read_text().strip() == "1.2.3"
    args = (libs.parent / "args").read_text().split()
    assert args[0] == "-B" and "-Dkafka.version=1.2.3" in args
    assert not list(libs.parent.glob("libs.tmp-*"))


def test_pom_pins_the_version_and_the_logging_backend() -> None:
    version = pinned_kafka_version()
    assert version.split(".")[0] == "4"
    ns = {"m": "http://maven.apache.org/POM/4.0.0"}
    root = ET.parse(DEPLOY / "pom.xml").getroot()
    assert root.findtext("m:packaging", namespaces=ns) == "pom"
    artifacts = {
        d.findtext("m:artifactId", namespaces=ns) for d in root.iterfind(".//m:dependency", ns)
    }
    assert {"kafka_2.13", "log4j-core"} <= artifacts


def test_a_live_broker_pid_blocks_its_data_dir(tmp_path: Path) -> None:
    data = tmp_path / "data"
    data.mkdir()
    props = str(data.resolve() / "server.properties")
    # a stand-in whose command line looks like the broker's
    fake = subprocess.Popen(
        [sys.executable, "-c", "import time; time.sleep(60)", "kafka.Kafka", props]
    )
    try:
        state = {"pid": fake.pid, "port": free_port(), "controller_port": free_port()}
        (data / "broker.json").write_text(json.dumps(state))
        broker = LocalBroker(data)
        assert broker.is_running() and broker.pid == fake.pid
        assert broker.bootstrap == f"127.0.0.1:{state['port']}"
        with pytest.raises(BrokerError, match=rf"pid {fake.pid}\) is already running"):
            broker.start()
    finally:
        fake.send_signal(signal.SIGKILL)
        fake.wait()
    assert not LocalBroker(data).is_running()  # stale pid: not running
    (data / "broker.json").write_text(json.dumps({"pid": os.getpid()}))
    assert not LocalBroker(data).is_running()  # a live but unrelated process does not count


def test_ports() -> None:
    with socket.socket() as listener:
        listener.bind(("127.0.0.1", 0))
        listener.listen()
        assert port_in_use(listener.getsockname()[1])
    assert not port_in_use(free_port())
    with pytest.raises(ConfigError, match="must differ"):
        LocalBroker(Path("unused"), port=9999, controller_port=9999)
    with pytest.raises(ConfigError, match="TCP port"):
        LocalBroker(Path("unused"), port=70000)
    with pytest.raises(BrokerError, match="start it first"):
        _ = LocalBroker(Path("never-started")).bootstrap


def test_unreachable_kafka_is_a_broker_error() -> None:
    address = f"127.0.0.1:{free_port()}"
    with pytest.raises(BrokerError, match="did not answer"):
        list_topics(address, timeout=1)
    with pytest.raises(BrokerError, match="did not answer"):
        create_topic(address, "t", 1, 1, timeout=1)


def test_cli_help_and_status_of_a_stopped_broker(
    tmp_path: Path, run_cli: Callable[..., Any]
) -> None:
    for argv in (
        ("broker", "start", "--help"),
        ("broker", "stop", "--help"),
        ("broker", "status", "--help"),
        ("topic", "create", "--help"),
    ):
        with pytest.raises(SystemExit) as exited:
            run_cli(*argv)
        assert exited.value.code == 0
    status = run_cli("broker", "status", "--data-dir", str(tmp_path))
    assert (status.rc, status.out.split()[0]) == (1, "stopped")
    stop = run_cli("broker", "stop", "--data-dir", str(tmp_path))
    assert stop.rc == 0 and "not running" in stop.out
