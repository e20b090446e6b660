"""``flarestream broker cluster start|stop|status|kill|start-node``: a local multi-broker
Kafka (KRaft) on 127.0.0.1 for failure drills.

``start`` prints progress on stderr and the bootstrap address (every node) as the last
line of stdout, so ``BOOTSTRAP=$(flarestream broker cluster start | tail -n1)`` works.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from flarestream import settings
from flarestream.deploy.cluster import MAX_SIZE, MIN_SIZE, LocalCluster


def _default_data_dir() -> Path:
    return settings.home_dir() / "cluster"


def _progress(message: str) -> None:
    print(f"flarestream broker cluster: {message}", file=sys.stderr, flush=True)


def add_cluster_parser(commands: Any) -> None:
    """Register ``cluster`` and its actions under ``flarestream broker`` (``commands`` is
    the broker command's subparsers object)."""
    parser = commands.add_parser(
        "cluster",
        help="run a local multi-broker Kafka cluster (KRaft) on 127.0.0.1",
        description="Run a real Kafka cluster of several brokers on 127.0.0.1 (each broker "
        "also a controller; replication 3, min.insync.replicas 2) to rehearse failures: "
        "kill a node, keep streaming, bring it back. Same Java and jars as 'broker start'.",
    )
    actions = parser.add_subparsers(dest="cluster_command", metavar="ACTION", required=True)

    def data_dir_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument(
            "--data-dir",
            type=Path,
            default=None,
            help="the cluster's directory: one node-N directory per broker plus "
            "cluster.json (default: $FLARESTREAM_HOME/cluster, i.e. ~/.flarestream/cluster)",
        )

    def node_option(sub: argparse.ArgumentParser) -> None:
        sub.add_argument("--node", type=int, required=True, help="node id (1 to the size)")

    start = actions.add_parser(
        "start",
        help="start every node and print the bootstrap address",
        description="Start every node in the background, wait until all of them serve as "
        "brokers, and print the bootstrap address as the last line of stdout. A data "
        "directory used before keeps its ports and data.",
    )
    start.add_argument(
        "--size",
        type=int,
        default=None,
        help=f"number of nodes, {MIN_SIZE} to {MAX_SIZE} (default: the size this data dir "
        "had before, else 3)",
    )
    start.add_argument(
        "--timeout", type=float, default=180.0, help="seconds to wait (default: 180)"
    )
    data_dir_option(start)
    start.set_defaults(func=_start)

    stop = actions.add_parser("stop", help="stop every node (data is kept)")
    stop.add_argument(
        "--timeout",
        type=float,
        default=30.0,
        help="seconds to wait for a clean shutdown before killing (default: 30)",
    )
    data_dir_option(stop)
    stop.set_defaults(func=_stop)

    status = actions.add_parser(
        "status", help="show each node (exit 0 if every node runs, 1 if not)"
    )
    data_dir_option(status)
    status.set_defaults(func=_status)

    kill = actions.add_parser("kill", help="SIGKILL one node, as a crash would")
    node_option(kill)
    data_dir_option(kill)
    kill.set_defaults(func=_kill)

    start_node = actions.add_parser(
        "start-node",
        help="start one node again and wait until it has rejoined",
    )
    node_option(start_node)
    start_node.add_argument(
        "--timeout", type=float, default=120.0, help="seconds to wait (default: 120)"
    )
    data_dir_option(start_node)
    start_node.set_defaults(func=_start_node)


def _cluster(args: argparse.Namespace) -> LocalCluster:
    return LocalCluster.at(args.data_dir or _default_data_dir())


def _start(args: argparse.Namespace) -> int:
    data_dir = args.data_dir or _default_data_dir()
    cluster = LocalCluster(data_dir, size=args.size) if args.size else LocalCluster.at(data_dir)
    address = cluster.start(timeout=args.timeout, log=_progress)
    _progress(f"running: {cluster.size} nodes, data in {cluster.data_dir}")
    print(address, flush=True)
    return 0


def _stop(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    if cluster.stop(timeout=args.timeout):
        print(f"stopped (data kept in {cluster.data_dir})")
    else:
        print(f"not running (data dir {cluster.data_dir})")
    return 0


def _status(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    if not cluster.started_before:
        print(f"no cluster in {cluster.data_dir} (never started)")
        return 1
    running = cluster.running_nodes()
    for node_id in cluster.node_ids:
        node = cluster.node(node_id)
        state = f"running (pid {node.pid})" if node_id in running else "stopped"
        print(f"node {node_id}: {state} at {node.bootstrap}, log {node.log_path}")
    every = len(running) == cluster.size
    summary = "running" if every else ("stopped" if not running else "degraded")
    print(f"{summary}: {len(running)} of {cluster.size} nodes; bootstrap {cluster.bootstrap}")
    return 0 if every else 1


def _kill(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    cluster.kill(args.node)
    print(f"node {args.node} killed")
    return 0


def _start_node(args: argparse.Namespace) -> int:
    cluster = _cluster(args)
    cluster.start_node(args.node, timeout=args.timeout)
    print(f"node {args.node} running at {cluster.node(args.node).bootstrap}")
    return 0
