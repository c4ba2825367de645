"""What a stage's veRL configuration asks Ray for, computed instead of guessed.

Ray waits forever, without an error, for CPUs it does not have: veRL's placement groups and the
TransferQueue's actors hold logical CPUs for the whole run, and every other actor needs one free
to be placed. The figures per holder are read off veRL's source (``cl_trainer.private_api``,
checked by its tests); this module only counts them for a configuration.
"""

from __future__ import annotations

import math
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
