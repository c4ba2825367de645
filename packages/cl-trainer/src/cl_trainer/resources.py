"""What a stage's veRL configuration asks Ray for, computed instead of guessed, and what Ray has.

Ray waits forever, without an error, for CPUs it does not have: veRL's placement groups and the
TransferQueue's actors hold logical CPUs for the whole run, and every other actor needs one free
to be placed. The figures per holder are read off veRL's source (``cl_trainer.private_api``,
checked by its tests); this module counts them for a configuration and compares them with a node
or a cluster (``cl_trainer.checks.check_ray_cpus`` turns a shortfall into one line).
"""

from __future__ import annotations

import json
import math
import socket
import subprocess
import sys
from dataclasses import dataclass
from typing import Any

from cl_trainer.private_api import (
    BUNDLE_CPUS,
    PLACEMENT_CPUS,
    TQ_ACTOR_CPUS,
    TQ_STORAGE_UNITS_KEY,
)


@dataclass(frozen=True)
class RayCpuDemand:
    """Logical CPUs a run holds: per training node, and for the TransferQueue (one controller,
    ``storage_units`` units spread round-robin over the nodes)."""

    gpus_per_node: int
    nnodes: int
    storage_units: int

    @property
    def bundles_per_node(self) -> int:
        """One placement bundle per GPU (per training process on the CPU)."""
        return BUNDLE_CPUS * self.gpus_per_node

    @property
    def transfer_queue(self) -> int:
        return TQ_ACTOR_CPUS * (1 + self.storage_units)

    @property
    def total(self) -> int:
        """What one node must offer when it is the only one (``ray_init.num_cpus``)."""
        return self.bundles_per_node * self.nnodes + self.transfer_queue + PLACEMENT_CPUS

    @property
    def per_node(self) -> int:
        """What each node of a cluster must offer wherever Ray puts the TransferQueue's actors:
        its bundles, the controller, its share of the storage units and a placement slot."""
        units = math.ceil(self.storage_units / self.nnodes)
        return self.bundles_per_node + TQ_ACTOR_CPUS * (1 + units) + PLACEMENT_CPUS


def ray_cpu_demand(conf: Any) -> RayCpuDemand:
    """The demand of a composed veRL configuration (``ppo_trainer`` with a stage's overrides)."""
    from omegaconf import OmegaConf

    return RayCpuDemand(
        gpus_per_node=int(conf.trainer.n_gpus_per_node),
        nnodes=int(conf.trainer.nnodes),
        storage_units=int(OmegaConf.select(conf, TQ_STORAGE_UNITS_KEY)),
    )


@dataclass(frozen=True)
class RayNode:
    """One node's logical resources, as Ray counts them."""

    cpus: float
    gpus: float


def shortfall(demand: RayCpuDemand, nodes: list[RayNode]) -> str | None:
    """Why ``nodes`` cannot hold ``demand`` (a phrase naming what is missing), or None.

    veRL packs each training node's bundles into one placement group on one Ray node (3 CPUs
    and 1 GPU per GPU; several groups may share a node that has room for them); the
    TransferQueue's actors and the placement slot go wherever CPUs are left.
    """
    cpus, gpus = demand.bundles_per_node, demand.gpus_per_node
    groups = sum(min(int(n.cpus // cpus), int(n.gpus // gpus)) for n in nodes)
    if groups < demand.nnodes:
        return (
            f"veRL places {cpus} CPUs and {gpus} GPU(s) together {demand.nnodes} time(s), and "
            f"the {len(nodes)} node(s) ({_listed(nodes)}) have room for {groups}"
        )
    offered = sum(n.cpus for n in nodes)
    if offered < demand.total:
        return f"the stage holds {demand.total} logical CPUs and Ray offers {offered:g}"
    return None


def _listed(nodes: list[RayNode]) -> str:
    return ", ".join(f"{n.cpus:g} CPUs/{n.gpus:g} GPUs" for n in nodes)


CLUSTER_PROBE = """
import json, sys
import ray
ray.init(address=sys.argv[1], logging_level="ERROR", log_to_driver=False)
alive = [n["Resources"] for n in ray.nodes() if n["Alive"]]
print(json.dumps([[r.get("CPU", 0), r.get("GPU", 0)] for r in alive]))
"""
"""Run in a child process: the trainer holds no connection to the cluster it hands veRL."""
CLUSTER_PROBE_TIMEOUT_S = 120
CONNECT_TIMEOUT_S = 10.0


def _head_listens(address: str) -> None:
    """A head's GCS port that accepts no connection fails here in seconds (``ray.init`` would
    retry for minutes); ``auto`` and other forms are left to Ray."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not (sep and host and port.isdigit()):
        return
    try:
        with socket.create_connection((host.strip("[]"), int(port)), timeout=CONNECT_TIMEOUT_S):
            return
    except OSError as exc:
        raise RuntimeError(f"{host}:{port} accepts no connection: {exc}") from None


def cluster_nodes(address: str) -> list[RayNode]:
    """The alive nodes of the Ray cluster at ``address`` (Ray's public ``ray.nodes()``);
    RuntimeError, naming why, when it cannot be reached."""
    _head_listens(address)
    try:
        proc = subprocess.run(
            [sys.executable, "-c", CLUSTER_PROBE, address],
            capture_output=True,
            text=True,
            timeout=CLUSTER_PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise RuntimeError(f"no answer in {CLUSTER_PROBE_TIMEOUT_S} s") from None
    if proc.returncode != 0:
        lines = proc.stderr.strip().splitlines()
        raise RuntimeError(lines[-1] if lines else f"exit code {proc.returncode}")
    rows = json.loads(proc.stdout.strip().splitlines()[-1])
    return [RayNode(float(cpus), float(gpus)) for cpus, gpus in rows]
