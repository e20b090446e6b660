"""A real local Kafka cluster (KRaft, several brokers) on 127.0.0.1 for failure tests.

Every node is one JVM acting as broker and controller, with its own client port,
controller port and data directory (``DATA_DIR/node-N``); the controllers form a
static quorum of all nodes (``controller.quorum.voters``). Internal topics are
replicated 3 times with ``min.insync.replicas=2`` and unclean leader election is
off, so a cluster of 3 survives the loss of any one node without losing an
acknowledged (``acks=all``) record. Topics created on it inherit
``min.insync.replicas=2``: give them a replication factor of at least 2.

The process handling is :class:`~flarestream.deploy.broker.LocalBroker`'s (one per
node, same jars, same logs, same refusals); this module only writes the cluster's
configuration and waits for the nodes together, since a lone voter cannot serve
before a quorum exists. ``DATA_DIR/cluster.json`` remembers the cluster id and the
ports, so starting again on the same directory reuses both and the data.
"""

from __future__ import annotations

import json
import shutil
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Any

from flarestream.deploy import runtime
from flarestream.deploy.broker import LocalBroker, _cluster_id, read_state
from flarestream.deploy.osutil import HOST, free_port
from flarestream.errors import BrokerError, ConfigError

CLUSTER_STATE = "cluster.json"
CLUSTER_HEAP = "384m"
MIN_SIZE, MAX_SIZE = 3, 9

# Written to each node's server.properties; ${...} are filled per node.
_NODE_PROPERTIES = """\
# Written by flarestream.deploy.LocalCluster on every start of node {node_id}; edits are lost.
process.roles=broker,controller
node.id={node_id}
controller.quorum.voters={voters}
controller.listener.names=CONTROLLER
listeners=PLAINTEXT://{host}:{port},CONTROLLER://{host}:{controller_port}
advertised.listeners=PLAINTEXT://{host}:{port}
inter.broker.listener.name=PLAINTEXT
listener.security.protocol.map=PLAINTEXT:PLAINTEXT,CONTROLLER:PLAINTEXT
log.dirs={log_dirs}

# durability: 3 copies of everything, an acknowledged write is on at least 2 of them,
# and a replica that missed writes never becomes leader
default.replication.factor=3
min.insync.replicas=2
unclean.leader.election.enable=false
offsets.topic.replication.factor=3
offsets.topic.num.partitions=3
transaction.state.log.replication.factor=3
transaction.state.log.min.isr=2
transaction.state.log.num.partitions=3
share.coordinator.state.topic.replication.factor=3
share.coordinator.state.topic.min.isr=2
share.coordinator.state.topic.num.partitions=3
num.partitions=1
group.initial.rebalance.delay.ms=0

# a small machine runs several of these: fewer threads than Kafka's defaults
num.network.threads=2
num.io.threads=4
background.threads=4

# a killed node is fenced (its partitions fail over) after the session timeout, and
# its restart waits for that old session to expire: keep both short
broker.session.timeout.ms=4000
broker.heartbeat.interval.ms=500
"""


class _ClusterNode(LocalBroker):
    """One node of a :class:`LocalCluster`: a :class:`LocalBroker` that writes the
    cluster's configuration and leaves waiting for service to the cluster."""

    def __init__(
        self,
        data_dir: Path,
        node_id: int,
        port: int,
        controller_port: int,
        voters: str,
        kafka_version: str | None,
        heap: str,
    ) -> None:
        super().__init__(data_dir, port, controller_port, kafka_version, heap)
        self.node_id = node_id
        self._voters = voters

    def prepare(self, cluster_id: str) -> None:
        """Make the next :meth:`start` format new storage with ``cluster_id`` (the
        broker formats from the id kept in its state file)."""
        self.data_dir.mkdir(parents=True, exist_ok=True)
        state = read_state(self.data_dir)
        if state.get("cluster_id") != cluster_id:
            state["cluster_id"] = cluster_id
            self._write_state(state)

    def _write_config(self) -> Path:
        with runtime.packaged_file("log4j2.xml") as src:
            shutil.copyfile(src, self.data_dir / "log4j2.xml")
        props = self.data_dir / "server.properties"
        props.write_text(
            _NODE_PROPERTIES.format(
                node_id=self.node_id,
                voters=self._voters,
                host=HOST,
                port=self.port,
                controller_port=self.controller_port,
                log_dirs=self.data_dir / "kraft",
            )
        )
        return props

    def _wait_serving(self, timeout: float) -> None:
        """Nothing: one voter of a quorum cannot serve alone (the cluster waits)."""


class LocalCluster:
    """A local Kafka cluster of ``size`` nodes (3 to 9) bound to one data directory.

    Ports are free ports chosen at the first :meth:`start` and remembered in
    ``cluster.json``. Node processes run detached, so the cluster outlives the
    Python process that started it until :meth:`stop`.
    """

    def __init__(
        self,
        data_dir: Path,
        size: int = 3,
        kafka_version: str | None = None,
        heap: str = CLUSTER_HEAP,
    ) -> None:
        if isinstance(size, bool) or not isinstance(size, int) or not MIN_SIZE <= size <= MAX_SIZE:
            raise ConfigError(
                f"size must be an integer from {MIN_SIZE} to {MAX_SIZE}, got {size!r}; "
                "for a single broker use LocalBroker (flarestream broker start)"
            )
        self.data_dir = Path(data_dir).expanduser().resolve()
        self.size = size
        self.kafka_version = kafka_version or runtime.pinned_kafka_version()
        self.heap = heap
        state = self._read_state()
        known = state.get("size")
        if known is not None and known != size:
            raise ConfigError(
                f"the cluster in {self.data_dir} has {known} nodes, not {size}: use "
                f"size={known} or another data directory"
            )
        self._state = state
        self._nodes: dict[int, _ClusterNode] = {}
        if "nodes" in state:
            self._make_nodes()

    @classmethod
    def at(cls, data_dir: Path) -> LocalCluster:
        """The cluster recorded in ``data_dir`` (its size from ``cluster.json``; a
        directory without one gives a new cluster of 3 nodes)."""
        path = Path(data_dir).expanduser() / CLUSTER_STATE
        try:
            size = json.loads(path.read_text()).get("size", 3)
        except (OSError, ValueError, AttributeError):
            size = 3
        return cls(data_dir, size=size)

    @property
    def started_before(self) -> bool:
        """True once the cluster has ports and a cluster id (its first start)."""
        return bool(self._nodes)

    # -- addresses ---------------------------------------------------------------
    @property
    def node_ids(self) -> list[int]:
        """The node ids, 1 to ``size``."""
        return list(range(1, self.size + 1))

    @property
    def bootstrap(self) -> str:
        """``127.0.0.1:P1,127.0.0.1:P2,...``; :class:`BrokerError` before the first start."""
        if not self._nodes:
            raise BrokerError(f"the cluster in {self.data_dir} has no ports yet: start it first")
        return ",".join(self._nodes[i].bootstrap for i in self.node_ids)

    def node(self, node_id: int) -> LocalBroker:
        """The broker of node ``node_id`` (its pid, ports, logs); after the first start."""
        self._check_id(node_id)
        if not self._nodes:
            raise BrokerError(f"the cluster in {self.data_dir} was never started")
        return self._nodes[node_id]

    def running_nodes(self) -> list[int]:
        """Ids of the nodes whose process is alive (maybe not serving yet)."""
        return [i for i, node in sorted(self._nodes.items()) if node.is_running()]

    def is_running(self) -> bool:
        """True while the process of every node is alive."""
        return bool(self._nodes) and len(self.running_nodes()) == self.size

    def log_tail(self, lines: int = 15) -> str:
        """The last ``lines`` lines of every node's logs."""
        return "\n".join(
            f"=== node {i} ===\n{node.log_tail(lines)}" for i, node in sorted(self._nodes.items())
        )

    # -- lifecycle ---------------------------------------------------------------
    def start(self, timeout: float = 180, log: runtime.Log = runtime.quiet) -> str:
        """Start every node and return the bootstrap address once the cluster serves
        metadata requests with all ``size`` brokers registered and unfenced.

        Refuses with :class:`BrokerError` (starting nothing) when a node of this
        directory is already running; use :meth:`start_node` to bring back one node.
        On any failure every node this call started is stopped and the error carries
        the nodes' log tails.
        """
        running = self.running_nodes()
        if running:
            raise BrokerError(
                f"nodes {running} of the cluster in {self.data_dir} are already running; "
                "use it, restart single nodes with start_node (flarestream broker cluster "
                "start-node), or stop it first (flarestream broker cluster stop)"
            )
        self.data_dir.mkdir(parents=True, exist_ok=True)
        if "nodes" not in self._state:
            self._state = {
                "size": self.size,
                "cluster_id": _cluster_id(),
                "nodes": _free_ports(self.size),
            }
            self._write_state()
            self._make_nodes()
        runtime.ensure_jars(self.kafka_version, log=log)
        started: list[_ClusterNode] = []
        try:
            for node_id in self.node_ids:
                node = self._nodes[node_id]
                node.prepare(str(self._state["cluster_id"]))
                log(f"starting node {node_id} at {node.bootstrap}")
                node.start(timeout=timeout, log=log)
                started.append(node)
            self._wait_ready(self.node_ids, timeout)
        except Exception as exc:
            logs = f" Their logs:\n{self.log_tail()}" if started else ""
            self._stop_nodes(started, timeout=10)
            raise BrokerError(
                f"the cluster in {self.data_dir} did not start: {exc}. Every node this call "
                f"started was stopped.{logs}"
            ) from exc
        except BaseException:  # KeyboardInterrupt: leave nothing running
            self._stop_nodes(started, timeout=10)
            raise
        return self.bootstrap

    def stop(self, timeout: float = 30) -> bool:
        """Stop every node (all at once: a node stopping alone may wait for a quorum
        that its peers, also stopping, no longer form). SIGTERM, then SIGKILL after
        ``timeout`` s. Returns True if any node was running; on return none runs."""
        return self._stop_nodes(list(self._nodes.values()), timeout)

    def kill(self, node_id: int) -> None:
        """SIGKILL node ``node_id``, as a crash would; returns once its process is gone."""
        self.node(node_id).kill()

    def start_node(self, node_id: int, timeout: float = 120) -> None:
        """Start node ``node_id`` again (after :meth:`kill` or a crash) and return once it
        is registered and unfenced in the cluster; :class:`BrokerError` if it is
        already running or does not rejoin within ``timeout`` s (it is then stopped)."""
        node = self.node(node_id)
        node.start(timeout=timeout)
        try:
            self._wait_ready([node_id], timeout)
        except BrokerError:
            node.stop(timeout=10)
            raise

    def __enter__(self) -> LocalCluster:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    # -- internals -----------------------------------------------------------------
    def _check_id(self, node_id: int) -> None:
        if node_id not in self.node_ids:
            raise ConfigError(f"node id must be one of {self.node_ids}, got {node_id!r}")

    def _make_nodes(self) -> None:
        ports = {int(k): v for k, v in self._state["nodes"].items()}
        voters = ",".join(f"{i}@{HOST}:{ports[i]['controller_port']}" for i in sorted(ports))
        self._nodes = {
            i: _ClusterNode(
                self.data_dir / f"node-{i}",
                i,
                int(ports[i]["port"]),
                int(ports[i]["controller_port"]),
                voters,
                self.kafka_version,
                self.heap,
            )
            for i in self.node_ids
        }

    def _wait_ready(self, node_ids: list[int], timeout: float) -> None:
        """Wait until each node of ``node_ids``, asked itself, lists all of them as
        live (registered, unfenced) brokers.

        Each node is asked directly because the others may still list a node that
        was just killed until its session expires; only the new process of a node
        answers on its port, and it answers after it has caught up with the
        metadata, so it sees itself live only once its new registration is unfenced.
        """
        wanted = set(node_ids)
        views: dict[int, set[int]] = {}
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            dead = [i for i in node_ids if not self._nodes[i].is_running()]
            if dead:
                raise BrokerError(f"nodes {dead} of {self.data_dir} exited while starting")
            views = {i: _live_brokers(self._nodes[i].bootstrap) for i in node_ids}
            if all(wanted <= view for view in views.values()):
                return
            time.sleep(0.2)
        raise BrokerError(
            f"nodes {node_ids} of {self.data_dir} did not all join the cluster within "
            f"{timeout:.0f}s (live brokers as each node saw them: {views})"
        )

    @staticmethod
    def _stop_nodes(nodes: list[_ClusterNode], timeout: float) -> bool:
        if not nodes:
            return False
        with ThreadPoolExecutor(max_workers=len(nodes)) as pool:
            return any(list(pool.map(lambda node: node.stop(timeout=timeout), nodes)))

    def _read_state(self) -> dict[str, Any]:
        try:
            state = json.loads((self.data_dir / CLUSTER_STATE).read_text())
        except (OSError, ValueError):
            return {}
        return state if isinstance(state, dict) else {}

    def _write_state(self) -> None:
        tmp = self.data_dir / f".{CLUSTER_STATE}.tmp"
        tmp.write_text(json.dumps(self._state, indent=2, sort_keys=True) + "\n")
        tmp.replace(self.data_dir / CLUSTER_STATE)


def _free_ports(size: int) -> dict[str, dict[str, int]]:
    """Distinct free client and controller ports for nodes 1..size."""
    ports: list[int] = []
    for _ in range(1000):
        if len(ports) == 2 * size:
            break
        port = free_port()
        if port not in ports:
            ports.append(port)
    else:
        raise BrokerError("could not find enough free ports on 127.0.0.1")
    return {
        str(i): {"port": ports[2 * (i - 1)], "controller_port": ports[2 * i - 1]}
        for i in range(1, size + 1)
    }


def _live_brokers(address: str) -> set[int]:
    """The live broker ids in the metadata of the broker at ``address`` ({} if it does
    not answer). A new client each time: its first request can only go to its one
    bootstrap broker, so the answer is that broker's own view."""
    from confluent_kafka.admin import AdminClient

    admin = AdminClient({"bootstrap.servers": address, "log_level": 0})
    try:
        return set(admin.list_topics(timeout=1).brokers)
    except Exception:  # KafkaException: not serving yet
        return set()
