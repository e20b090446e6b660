"""A real single-node Kafka (KRaft, broker and controller in one JVM) for development
and tests, listening on 127.0.0.1 only.

Everything a broker owns lives in its data directory: ``server.properties``,
``log4j2.xml``, the Kafka data (``kraft/``), ``broker.log`` (Kafka's log),
``stdout.log`` (the JVM's output) and ``broker.json`` (pid and ports). Starting a
broker again on the same directory reuses its ports and its data.
"""

from __future__ import annotations

import base64
import json
import shutil
import signal
import string
import subprocess
import time
import uuid
from pathlib import Path
from typing import Any

from flarestream.deploy import runtime
from flarestream.deploy.osutil import HOST, free_port, pid_alive, port_in_use, send_signal
from flarestream.errors import BrokerError, ConfigError

STATE_FILE = "broker.json"
HEAP = "512m"


def read_state(data_dir: Path) -> dict[str, Any]:
    """The content of ``data_dir/broker.json`` ({} when absent or unreadable)."""
    try:
        state = json.loads((Path(data_dir) / STATE_FILE).read_text())
    except (OSError, ValueError):
        return {}
    return state if isinstance(state, dict) else {}


class LocalBroker:
    """One local Kafka broker bound to one data directory.

    Ports: an explicit ``port``/``controller_port`` wins; otherwise the ports
    remembered in the data directory; otherwise free ports chosen at :meth:`start`
    and remembered for the next start. The broker process runs detached (own
    session), so it outlives the Python process that started it until :meth:`stop`.
    """

    # True for a broker whose listeners need TLS and authentication (SecureBroker)
    secure = False

    def __init__(
        self,
        data_dir: Path,
        port: int | None = None,
        controller_port: int | None = None,
        kafka_version: str | None = None,
        heap: str = HEAP,
    ) -> None:
        for name, value in (("port", port), ("controller_port", controller_port)):
            if value is not None and not (isinstance(value, int) and 0 < value < 65536):
                raise ConfigError(f"{name} must be a TCP port (1-65535), got {value!r}")
        if port is not None and port == controller_port:
            raise ConfigError(f"port and controller_port must differ, both are {port}")
        self.data_dir = Path(data_dir).expanduser().resolve()
        state = read_state(self.data_dir)
        self._port: int | None = port or state.get("port")
        self._controller_port: int | None = controller_port or state.get("controller_port")
        self.kafka_version = kafka_version or runtime.pinned_kafka_version()
        self.heap = heap
        self._proc: subprocess.Popen[bytes] | None = None

    # -- paths and addresses -------------------------------------------------
    @property
    def port(self) -> int | None:
        """The client port (None until chosen by the first start)."""
        return self._port

    @property
    def controller_port(self) -> int | None:
        """The KRaft controller port (None until chosen by the first start)."""
        return self._controller_port

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:PORT``; :class:`BrokerError` if no port was chosen yet."""
        if self._port is None:
            raise BrokerError(f"the broker in {self.data_dir} has no port yet: start it first")
        return f"{HOST}:{self._port}"

    @property
    def log_path(self) -> Path:
        """Kafka's own log (warnings and errors)."""
        return self.data_dir / "broker.log"

    @property
    def pid(self) -> int | None:
        """The pid of the running broker process, or None when it is not running."""
        pid = read_state(self.data_dir).get("pid")
        return pid if isinstance(pid, int) and self._alive(pid) else None

    def is_running(self) -> bool:
        """True while the broker process of this data directory is alive (maybe not serving)."""
        return self.pid is not None

    def log_tail(self, lines: int = 25) -> str:
        """The last ``lines`` lines of the JVM output and of Kafka's log."""
        parts = []
        for path in (self.data_dir / "stdout.log", self.log_path):
            try:
                text = path.read_text(errors="replace").strip().splitlines()[-lines:]
            except OSError:
                continue
            if text:
                parts.append(f"--- {path} ---\n" + "\n".join(text))
        return "\n".join(parts) or "(no log output)"

    # -- lifecycle -------------------------------------------------------------
    def start(self, timeout: float = 120, log: runtime.Log = runtime.quiet) -> str:
        """Start the broker and return ``127.0.0.1:PORT`` once it answers metadata requests.

        Fetches the jars if they are not cached and formats the storage if the data
        directory is new. Refuses with :class:`BrokerError` (and starts nothing)
        when this data directory's broker is already running, Java 17+ or (for a
        first fetch) Maven is missing, or a port is taken. If the process dies or
        does not serve within ``timeout`` seconds it is stopped and the error
        carries the tail of its log.
        """
        self.data_dir.mkdir(parents=True, exist_ok=True)
        running = self.pid
        if running is not None:
            where = f"{HOST}:{read_state(self.data_dir).get('port')}"
            raise BrokerError(
                f"a broker (pid {running}) is already running for {self.data_dir} at {where}; "
                f"use it, stop it first (flarestream broker stop --data-dir {self.data_dir}), "
                "or choose another data directory"
            )
        if read_state(self.data_dir).get("secure") and not self.secure:
            raise BrokerError(
                f"the broker in {self.data_dir} was set up with TLS and authentication; "
                "start it the same way (flarestream broker start --secure) rather than "
                "silently without them"
            )
        java = runtime.check_java()
        port = self._port or free_port()
        cport = self._controller_port or free_port()
        while cport == port:
            cport = free_port()
        for what, value in (("client", port), ("controller", cport)):
            if port_in_use(value):
                raise BrokerError(
                    f"the {what} port {HOST}:{value} is already in use; stop whatever listens "
                    "there or choose another port (flarestream broker start --port PORT)"
                )
        self._port, self._controller_port = port, cport
        libs = runtime.ensure_jars(self.kafka_version, log=log)
        cp = runtime.classpath(libs)
        props = self._write_config()
        state = read_state(self.data_dir)
        if not (self.data_dir / "kraft" / "meta.properties").is_file():
            state["cluster_id"] = state.get("cluster_id") or _cluster_id()
            log(f"formatting new broker storage in {self.data_dir}")
            self._format(java, cp, props, str(state["cluster_id"]))
        log(f"starting Kafka {self.kafka_version} at {self.bootstrap}")
        with open(self.data_dir / "stdout.log", "ab") as out:
            self._proc = subprocess.Popen(
                [str(java), *self._jvm_options(), "-cp", cp, "kafka.Kafka", str(props)],
                stdin=subprocess.DEVNULL,
                stdout=out,
                stderr=subprocess.STDOUT,
                cwd=self.data_dir,
                start_new_session=True,
            )
        state.update(
            pid=self._proc.pid,
            port=port,
            controller_port=cport,
            kafka_version=self.kafka_version,
            started_at=time.time(),
        )
        self._write_state(state)
        self._wait_serving(timeout)
        return self.bootstrap

    def stop(self, timeout: float = 30) -> bool:
        """Stop the broker: SIGTERM (clean shutdown), then SIGKILL after ``timeout`` s.

        Returns True if it was running. Guarantees the process is gone on return.
        """
        pid = self.pid
        if pid is None:
            return False
        send_signal(pid, signal.SIGTERM)
        if not self._wait_dead(pid, timeout):
            send_signal(pid, signal.SIGKILL)
            if not self._wait_dead(pid, 15):
                raise BrokerError(f"broker pid {pid} survived SIGKILL")
        state = read_state(self.data_dir)
        state["pid"] = None
        self._write_state(state)
        return True

    def kill(self) -> None:
        """SIGKILL the broker, as a crash would (the stale pid stays in broker.json)."""
        pid = self.pid
        if pid is not None:
            send_signal(pid, signal.SIGKILL)
            self._wait_dead(pid, 15)

    def __enter__(self) -> LocalBroker:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals ---------------------------------------------------------------
    def _jvm_options(self) -> list[str]:
        return [
            f"-Xmx{self.heap}",
            "-Xms64m",
            "-XX:+UseG1GC",
            "-XX:MaxGCPauseMillis=20",
            "-Djava.awt.headless=true",
            f"-Dlog4j2.configurationFile={self.data_dir / 'log4j2.xml'}",
            f"-Dkafka.logs.dir={self.data_dir}",
        ]

    def _write_config(self) -> Path:
        with runtime.packaged_file("log4j2.xml") as src:
            shutil.copyfile(src, self.data_dir / "log4j2.xml")
        with runtime.packaged_file("server.properties") as template:
            text = string.Template(template.read_text()).substitute(
                host=HOST,
                port=self._port,
                controller_port=self._controller_port,
                log_dirs=self.data_dir / "kraft",
            )
        props = self.data_dir / "server.properties"
        props.write_text(text)
        return props

    def _client_settings(self) -> dict[str, Any]:
        """librdkafka settings with which :meth:`start` checks that the broker serves
        (none for plaintext; they may name another ``bootstrap.servers``)."""
        return {}

    def _format(self, java: Path, cp: str, props: Path, cluster_id: str) -> None:
        cmd = [str(java), *self._jvm_options(), "-cp", cp, "kafka.tools.StorageTool"]
        # "--cluster-id=ID": an id may start with "-", which the option parser would
        # otherwise take for an option
        cmd += ["format", f"--cluster-id={cluster_id}", "-c", str(props)]
        done = subprocess.run(
            cmd, capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=300, check=False
        )
        if done.returncode != 0:
            raise BrokerError(
                f"formatting the broker storage in {self.data_dir} failed (exit "
                f"{done.returncode}):\n{(done.stdout + done.stderr).strip()[-3000:]}"
            )

    def _wait_serving(self, timeout: float) -> None:
        from confluent_kafka.admin import AdminClient

        admin = AdminClient(
            {
                "bootstrap.servers": self.bootstrap,
                "reconnect.backoff.ms": 100,
                "reconnect.backoff.max.ms": 500,
                "log_level": 0,
                **self._client_settings(),
            }
        )
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise BrokerError(
                    f"the broker process exited with code {self._proc.returncode} while "
                    f"starting; its log:\n{self.log_tail()}"
                )
            try:
                if admin.list_topics(timeout=1).brokers:
                    return
            except Exception:  # KafkaException while not yet up: keep waiting
                time.sleep(0.1)
        self.stop(timeout=10)
        raise BrokerError(
            f"the broker did not serve at {self.bootstrap} within {timeout:.0f}s and was "
            f"stopped; its log:\n{self.log_tail()}"
        )

    def _alive(self, pid: int) -> bool:
        """True when ``pid`` is a live (not zombie) broker of this data directory."""
        if self._proc is not None and self._proc.pid == pid:
            return self._proc.poll() is None
        return pid_alive(pid, "kafka.Kafka", str(self.data_dir / "server.properties"))

    def _wait_dead(self, pid: int, timeout: float) -> bool:
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.pid == pid:
                try:
                    self._proc.wait(timeout=max(0.0, deadline - time.monotonic()))
                except subprocess.TimeoutExpired:
                    return False
                return True
            if not self._alive(pid):
                return True
            time.sleep(0.1)
        return not self._alive(pid)

    def _write_state(self, state: dict[str, Any]) -> None:
        tmp = self.data_dir / f".{STATE_FILE}.tmp"
        tmp.write_text(json.dumps(state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.data_dir / STATE_FILE)


def _cluster_id() -> str:
    """A new KRaft cluster id: 16 random bytes, URL-safe base64 without padding."""
    return base64.urlsafe_b64encode(uuid.uuid4().bytes).decode().rstrip("=")
