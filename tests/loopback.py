"""A Ray cluster of several nodes on this one machine, on loopback addresses, for tests.

Each node is its own ``ray start --block`` (a head, then workers joining it), as
``deploy/compose.cluster.yaml`` starts one per host, each with its own CPUs and one logical GPU
slot (a training process of veRL's CPU overlay). Every node runs in a process group of its own,
and stopping the cluster signals exactly those groups: never ``ray stop``, which would stop every
Ray instance on the machine.

Addresses: Ray rewrites ``127.0.0.1`` to the machine's routable address
(``ray._private.services.resolve_ip_for_localhost``), so the nodes take ``127.0.0.2``,
``127.0.0.3``, ...: loopback (Linux routes all of 127.0.0.0/8 to ``lo``) and one address per node,
as on separate hosts. Each node has its own temp dir under the cluster's (so no address file
attracts another ``ray.init()`` on this machine), and the cluster its own authentication token.
"""

from __future__ import annotations

import contextlib
import json
import os
import secrets
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from pathlib import Path

BIN = Path(sys.executable).parent
STOP_GRACE_S = 20.0
START_TIMEOUT_S = 180.0


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return int(s.getsockname()[1])


def node_ip(index: int) -> str:
    """Node 0 (the head) is 127.0.0.2, node 1 is 127.0.0.3, ..."""
    return f"127.0.0.{index + 2}"


@dataclass
class Cluster:
    """A running cluster: its address, the environment a driver needs, and its nodes."""

    address: str
    env: dict[str, str]
    temp_dir: Path
    nodes: list[subprocess.Popen] = field(default_factory=list)

    def node_ids(self) -> dict[str, str]:
        """Alive node ID -> its address, from Ray's public ``ray.nodes()``, in a fresh driver."""
        code = (
            "import json, sys, ray; ray.init(address=sys.argv[1], logging_level='ERROR');"
            "print(json.dumps({n['NodeID']: n['NodeManagerAddress'] for n in ray.nodes()"
            " if n['Alive']}))"
        )
        out = subprocess.run(
            [sys.executable, "-c", code, self.address],
            env={**os.environ, **self.env},
            capture_output=True,
            text=True,
            timeout=120,
        )
        if out.returncode != 0:
            raise RuntimeError(f"cannot reach the cluster at {self.address}: {out.stderr[-2000:]}")
        return json.loads(out.stdout.strip().splitlines()[-1])


def _node_args(index: int, cpus: int, gpus: int, temp_dir: Path) -> list[str]:
    """One node's resources, ports and temp dir of its own: two nodes on one machine must not
    share ports, and with one temp dir each node's log monitor would also publish the other's
    workers' output as its own."""
    return [
        f"--node-ip-address={node_ip(index)}",
        f"--temp-dir={temp_dir / f'node{index}'}",
        f"--num-cpus={cpus}",
        f"--num-gpus={gpus}",
        f"--node-manager-port={free_port()}",
        f"--object-manager-port={free_port()}",
        f"--dashboard-agent-listen-port={free_port()}",
        f"--dashboard-agent-grpc-port={free_port()}",
        f"--metrics-export-port={free_port()}",
        f"--runtime-env-agent-port={free_port()}",
        "--object-store-memory=200000000",
        "--disable-usage-stats",
    ]


def _stop(node: subprocess.Popen) -> None:
    """SIGTERM to the node's process group, SIGKILL after a grace period."""
    for sig, wait in ((signal.SIGTERM, STOP_GRACE_S), (signal.SIGKILL, 5.0)):
        with contextlib.suppress(ProcessLookupError):
            os.killpg(node.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            node.wait(timeout=wait)
            break
    with contextlib.suppress(ProcessLookupError):  # the raylet's workers, if any outlived it
        os.killpg(node.pid, signal.SIGKILL)


@contextlib.contextmanager
def loopback_cluster(
    temp_dir: Path, nodes: int, cpus_per_node: int, gpus_per_node: int = 1
) -> Iterator[Cluster]:
    """Start ``nodes`` nodes, wait until all are alive, yield the cluster, stop every node."""
    temp_dir.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {
        "RAY_AUTH_MODE": "token",
        "RAY_AUTH_TOKEN": secrets.token_hex(32),
        "RAY_USAGE_STATS_ENABLED": "0",
    }
    cluster = Cluster(f"{node_ip(0)}:{port}", env, temp_dir)
    head = [
        "--head",
        f"--port={port}",
        "--include-dashboard=false",
        f"--ray-client-server-port={free_port()}",
    ]
    log = (temp_dir / "nodes.log").open("ab")
    try:
        for index in range(nodes):
            role = head if index == 0 else [f"--address={cluster.address}"]
            cluster.nodes.append(
                subprocess.Popen(
                    [str(BIN / "ray"), "start", "--block", *role,
                     *_node_args(index, cpus_per_node, gpus_per_node, temp_dir)],
                    stdout=log,
                    stderr=subprocess.STDOUT,
                    env={**os.environ, **env},
                    start_new_session=True,
                )
            )  # fmt: skip
            _wait_for(cluster, index + 1)
        yield cluster
    finally:
        for node in reversed(cluster.nodes):
            _stop(node)
        log.close()


def _wait_for(cluster: Cluster, alive: int) -> None:
    deadline = time.monotonic() + START_TIMEOUT_S
    error: Exception | None = None
    while time.monotonic() < deadline:
        if any(node.poll() is not None for node in cluster.nodes):
            raise RuntimeError(f"a Ray node exited; see {cluster.temp_dir / 'nodes.log'}")
        try:
            if len(cluster.node_ids()) >= alive:
                return
        except RuntimeError as exc:
            error = exc
        time.sleep(2)
    raise TimeoutError(f"{alive} Ray node(s) not alive after {START_TIMEOUT_S:.0f} s: {error}")
