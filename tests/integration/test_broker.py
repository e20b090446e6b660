"""The local broker for real: CLI lifecycle, refusals, restart keeping data, crash recovery."""

from __future__ import annotations

import socket
import subprocess
import sys
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest

from flarestream.deploy import LocalBroker, create_topic, describe_topic, free_port, read_state
from flarestream.errors import BrokerError

pytestmark = pytest.mark.integration

# `flarestream ARGS` in a child process, leaving out subcommands whose module is not written yet
_CLI = (
    "import sys, importlib.util, flarestream.cli as c; "
    "c.SUBCOMMANDS = tuple(s for s in c.SUBCOMMANDS if importlib.util.find_spec(s[1])); "
    "sys.exit(c.main(sys.argv[1:]))"
)


def _flarestream(*argv: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-c", _CLI, *argv], capture_output=True, text=True, timeout=300
    )


def test_cli_lifecycle_and_restart_keeps_data(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    data_dir = tmp_path / "broker"
    port = free_port()
    address = f"127.0.0.1:{port}"
    # a separate process: the broker must outlive the command that started it
    started = _flarestream("broker", "start", "--port", str(port), "--data-dir", str(data_dir))
    try:
        assert started.returncode == 0, started.stderr
        assert started.stdout.strip().splitlines()[-1] == address
        assert "starting Kafka" in started.stderr  # progress goes to stderr

        status = run_cli("broker", "status", "--data-dir", str(data_dir))
        assert status.rc == 0
        assert "running" in status.out and address in status.out

        assert create_topic(address, "kept.across.restart", partitions=2, replication_factor=1)

        again = run_cli("broker", "start", "--port", str(port), "--data-dir", str(data_dir))
        assert again.rc == 1
        assert "already running" in again.err and "broker stop" in again.err

        stopped = run_cli("broker", "stop", "--data-dir", str(data_dir))
        assert stopped.rc == 0 and "stopped" in stopped.out
        status = run_cli("broker", "status", "--data-dir", str(data_dir))
        assert status.rc == 1 and "stopped" in status.out

        # no --port: the port remembered in the data dir is reused, and so is the data
        restarted = run_cli("broker", "start", "--data-dir", str(data_dir))
        assert restarted.rc == 0, restarted.err
        assert restarted.last_line == address
        info = describe_topic(address, "kept.across.restart")
        assert (info.partitions, info.replication_factor) == (2, 1)
    finally:
        LocalBroker(data_dir).stop()
    assert not LocalBroker(data_dir).is_running()


def test_start_refuses_a_taken_port(tmp_path: Path, run_cli: Callable[..., Any]) -> None:
    with socket.socket() as squatter:
        squatter.bind(("127.0.0.1", 0))
        squatter.listen()
        port = squatter.getsockname()[1]
        result = run_cli("broker", "start", "--port", str(port), "--data-dir", str(tmp_path))
    assert result.rc == 1
    assert f"127.0.0.1:{port} is already in use" in result.err
    assert "--port" in result.err
    assert not LocalBroker(tmp_path).is_running()
    assert read_state(tmp_path).get("pid") is None


def test_api_data_dir_in_use_crash_recovery_and_a_dying_process(
    local_broker_factory: Callable[..., LocalBroker],
) -> None:
    broker = local_broker_factory()
    assert broker.is_running()
    assert broker.bootstrap == f"127.0.0.1:{broker.port}"
    state = read_state(broker.data_dir)
    assert (state["pid"], state["port"], state["controller_port"]) == (
        broker.pid,
        broker.port,
        broker.controller_port,
    )
    create_topic(broker.bootstrap, "survives.crash", partitions=1, replication_factor=1)

    twin = LocalBroker(broker.data_dir, port=free_port())
    with pytest.raises(BrokerError, match="already running"):
        twin.start()

    broker.kill()  # as a crash would: no clean shutdown, stale pid left behind
    assert not broker.is_running()
    assert LocalBroker(broker.data_dir).start() == broker.bootstrap  # same port, same data
    assert describe_topic(broker.bootstrap, "survives.crash").partitions == 1

    LocalBroker(broker.data_dir).stop()
    # a broker process that dies while starting: refused with the tail of its log
    with pytest.raises(BrokerError, match=r"exited with code \d+ while starting(?s:.*)heap"):
        LocalBroker(broker.data_dir, heap="1k").start()
    assert not broker.is_running()
