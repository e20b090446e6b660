"""The sinks of ``flarestream demo``, each a separate ``flarestream sink`` process in
its own consumer group, and how the demo knows they have caught up.

Caught up means lag 0: for every partition of the topic, the group's committed
offset equals the end offset captured after every site's sender was flushed. The
sinks commit only what they have made durable (see the consumer loop), so lag 0
means every record sent so far is stored in that sink.
"""

from __future__ import annotations

import signal
import subprocess
import sys
import time
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from flarestream import settings
from flarestream.errors import FlarestreamError

SINKS = ("tensorboard", "mlflow", "archive")


class SinkFailed(FlarestreamError):
    """A sink process died, or did not stop cleanly; the message holds its stderr tail."""


@dataclass
class SinkProcess:
    """One ``flarestream sink NAME`` child process, its stderr going to ``log_path``."""

    name: str
    group: str
    argv: list[str]
    log_path: Path
    proc: subprocess.Popen[bytes] | None = field(default=None, repr=False)
    _terminated: bool = field(default=False, repr=False)

    def start(self) -> None:
        self.log_path.parent.mkdir(parents=True, exist_ok=True)
        # a file, not a pipe: nobody reads a pipe while the sink runs, and a full
        # pipe would block the sink
        with open(self.log_path, "wb") as log:  # this run only: its tail is the story
            self.proc = subprocess.Popen(
                self.argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=log,
                start_new_session=True,  # Ctrl-C reaches the demo only; it stops the sinks
            )

    def exit_code(self) -> int | None:
        """None while running."""
        return None if self.proc is None else self.proc.poll()

    def tail(self, lines: int = 15) -> str:
        try:
            text = self.log_path.read_text(errors="replace")
        except OSError:
            return "(no log)"
        return "\n".join("    " + line for line in text.splitlines()[-lines:])

    def failure(self, what: str) -> SinkFailed:
        return SinkFailed(
            f"the {self.name} sink {what} (exit code {self.exit_code()}); the end of "
            f"{self.log_path}:\n{self.tail()}"
        )

    def terminate(self) -> None:
        """SIGTERM once: the loop then flushes, commits and exits 0. Only once, because
        a second signal may land after the sink's handler is gone and kill it."""
        if self.proc is not None and not self._terminated and self.proc.poll() is None:
            self._terminated = True
            self.proc.send_signal(signal.SIGTERM)

    def stop(self, timeout: float = 30) -> int:
        """:meth:`terminate`, wait, kill after ``timeout`` seconds; the exit code."""
        if self.proc is None:
            return 0
        self.terminate()
        try:
            return self.proc.wait(timeout)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            return self.proc.wait()


def sink_processes(
    work: Path, bootstrap: str, topic: str, group_prefix: str, verify_keys: Path | None = None
) -> list[SinkProcess]:
    """The three sinks, writing under ``work``, flushing every second; each verifies
    signatures against ``verify_keys`` when given."""
    own = {
        "tensorboard": ["--logdir", str(work / "tensorboard")],
        "mlflow": ["--tracking-uri", mlflow_uri(work)],
        # small files: a file is committed only once complete, so catching up waits
        # for the open file's age limit
        "archive": ["--root", str(work / "archive"), "--max-age", "2"],
    }
    made = []
    for name in SINKS:
        group = f"{group_prefix}.{name}"
        argv = [sys.executable, "-m", "flarestream", "sink", name, "--bootstrap-servers"]
        argv += [bootstrap, "--topic", topic, "--group", group, "--flush-interval", "1"]
        if verify_keys is not None:
            argv += ["--verify-keys", str(verify_keys)]
        made.append(SinkProcess(name, group, argv + own[name], work / "logs" / f"{name}.log"))
    return made


def mlflow_uri(work: Path) -> str:
    return f"sqlite:///{work.absolute() / 'mlflow.db'}"


class Offsets:
    """End offsets of the topic and committed offsets of consumer groups."""

    def __init__(self, bootstrap: str, topic: str) -> None:
        from confluent_kafka import Consumer
        from confluent_kafka.admin import AdminClient

        base = settings.kafka_client_config({"bootstrap.servers": bootstrap})
        self.topic = topic
        self._admin = AdminClient(base)
        # a consumer that never subscribes: it only asks for watermarks
        self._consumer = Consumer({**base, "group.id": "flarestream.demo.watermarks"})
        meta = self._consumer.list_topics(topic, timeout=30).topics[topic]
        self.partitions = sorted(meta.partitions)

    def watermarks(self) -> dict[int, tuple[int, int]]:
        """(low, high) per partition; high is the offset the next record will get."""
        from confluent_kafka import TopicPartition

        return {
            p: self._consumer.get_watermark_offsets(TopicPartition(self.topic, p), timeout=30)
            for p in self.partitions
        }

    def committed(self, group: str) -> dict[int, int]:
        """The group's committed offset per partition; -1 where it has none."""
        from confluent_kafka import ConsumerGroupTopicPartitions, TopicPartition

        request = ConsumerGroupTopicPartitions(
            group, [TopicPartition(self.topic, p) for p in self.partitions]
        )
        result = self._admin.list_consumer_group_offsets([request])[group].result(timeout=30)
        return {tp.partition: tp.offset for tp in result.topic_partitions}

    def lag(self, group: str, marks: Mapping[int, tuple[int, int]]) -> int:
        """Records below the captured ends that ``group`` has not committed."""
        done = self.committed(group)
        return sum(max(0, high - max(low, done.get(p, -1))) for p, (low, high) in marks.items())

    def close(self) -> None:
        self._consumer.close()


def check_alive(sinks: list[SinkProcess]) -> None:
    """Raise :class:`SinkFailed` for the first sink process that has exited."""
    for sink in sinks:
        if sink.exit_code() is not None:
            raise sink.failure("exited early")


def wait_caught_up(
    sinks: list[SinkProcess],
    offsets: Offsets,
    marks: Mapping[int, tuple[int, int]],
    timeout: float,
    on_lag: Callable[[int], Any],
) -> dict[str, int]:
    """Poll every group until its lag below ``marks`` is 0; ``on_lag(total)`` after each
    poll. Returns the lag per group (all 0). Raises :class:`SinkFailed` when a sink
    dies, FlarestreamError on timeout."""
    deadline = time.monotonic() + timeout
    while True:
        check_alive(sinks)
        lags = {s.group: offsets.lag(s.group, marks) for s in sinks}
        on_lag(sum(lags.values()))
        if not any(lags.values()):
            return lags
        if time.monotonic() > deadline:
            behind = ", ".join(f"{g} {n}" for g, n in lags.items() if n)
            logs = ", ".join(str(s.log_path) for s in sinks)
            raise FlarestreamError(
                f"the sinks did not catch up within {timeout:g} s (records behind: {behind}); "
                f"see their logs ({logs}) or give more --timeout"
            )
        time.sleep(0.5)


def stop_all(sinks: list[SinkProcess], timeout: float = 30) -> dict[str, int]:
    """SIGTERM every sink at once, then wait for each; exit code per sink name."""
    for sink in sinks:
        sink.terminate()
    return {s.name: s.stop(timeout) for s in sinks}
