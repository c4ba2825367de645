"""The Ray CPUs a stage's configuration holds, computed from the composed configuration."""

from __future__ import annotations

from pathlib import Path

import pytest
import verl
from hydra import compose, initialize_config_dir

from cl_trainer.config import resolve_config
from cl_trainer.resources import RayCpuDemand, ray_cpu_demand
from cl_trainer.stages import stage_plan
from cl_trainer.verl_cpu import ray_demand

CONFIG_DIR = str(Path(verl.__file__).parent / "trainer" / "config")


def composed(cfg):
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=stage_plan(cfg)[0].argv[3:])


@pytest.mark.parametrize(("size", "cpus"), [("0.5b", 16), ("1.5b", 22)])
def test_gpu_presets_hold_a_bundle_per_gpu_and_the_transfer_queue(
    size: str, cpus: int, data_dir: Path, tmp_path: Path
) -> None:
    """3 per GPU bundle, the TransferQueue controller and its 8 storage units, a placement slot."""
    demand = ray_cpu_demand(composed(resolve_config(size, data_dir=data_dir, out=tmp_path)))
    assert demand.total == cpus


def test_the_cpu_overlay_gives_ray_exactly_what_its_configuration_holds(
    data_dir: Path, tmp_path: Path
) -> None:
    cfg = resolve_config(
        "tiny", algo="ppo", backend="verl", device="cpu", data_dir=data_dir, out=tmp_path
    )
    conf = composed(cfg)
    assert ray_cpu_demand(conf) == ray_demand(cfg) == RayCpuDemand(1, 1, 1)
    assert conf.ray_kwargs.ray_init.num_cpus == ray_demand(cfg).total == 6
    assert conf.ray_kwargs.ray_init.num_gpus == 1


def test_a_cluster_node_needs_its_bundles_and_a_share_of_the_queue() -> None:
    two = RayCpuDemand(gpus_per_node=1, nnodes=2, storage_units=1)
    assert (two.per_node, two.total) == (6, 9)
    eight = RayCpuDemand(gpus_per_node=8, nnodes=2, storage_units=8)
    assert eight.per_node == 24 + 1 + 4 + 1 and eight.total == 48 + 9 + 1
