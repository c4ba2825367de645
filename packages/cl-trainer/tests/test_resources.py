"""The Ray CPUs a stage's configuration holds, computed from the composed configuration, and the
preflight that compares them with what Ray has (else Ray waits forever without an error)."""

from __future__ import annotations

import socket
from pathlib import Path

import pytest

from cl_trainer.checks import check_ray_cpus, emitted_config, preflight
from cl_trainer.config import resolve_config
from cl_trainer.errors import TrainerError, UsageError
from cl_trainer.resources import RayCpuDemand, RayNode, ray_cpu_demand
from cl_trainer.verl_cpu import ray_demand

composed = emitted_config


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


def refusal(cfg, nodes: list[RayNode] | None) -> str:
    with pytest.raises(TrainerError) as err:
        check_ray_cpus(cfg, nodes)
    text = str(err.value)
    assert "\n" not in text
    return text


def test_a_node_with_too_few_cpus_is_refused_naming_the_settings(
    data_dir: Path, hf_model: Path, tmp_path: Path
) -> None:
    """1.5b on 4 GPUs holds 22 logical CPUs; a 16-CPU node would hang. The fixes: declare the
    slots, or run 2 storage units instead of 8 (16 - 14 held by everything else)."""
    cfg = resolve_config("1.5b", data_dir=data_dir, out=tmp_path, model=str(hf_model))
    text = refusal(cfg, [RayNode(16, 4)])
    assert "holds 22 logical CPUs and Ray offers 16" in text
    assert "`-- ++ray_kwargs.ray_init.num_cpus=22`" in text
    assert "`-- transfer_queue.backend.SimpleStorage.num_data_storage_units=2`" in text
    check_ray_cpus(cfg, [RayNode(22, 4)])
    # Either fix, as the user would pass it, fits the same node.
    fewer = resolve_config(
        "1.5b", data_dir=data_dir, out=tmp_path, model=str(hf_model),
        overrides=["transfer_queue.backend.SimpleStorage.num_data_storage_units=2"],
    )  # fmt: skip
    check_ray_cpus(fewer, [RayNode(16, 4)])
    declared = resolve_config(
        "1.5b", data_dir=data_dir, out=tmp_path, model=str(hf_model),
        overrides=["++ray_kwargs.ray_init.num_cpus=22"],
    )  # fmt: skip
    check_ray_cpus(declared)  # what main_ppo's ray.init gives the node it starts


def test_too_few_cpus_for_the_bundles_alone_names_only_the_declaration(
    data_dir: Path, tmp_path: Path
) -> None:
    cfg = resolve_config("1.5b", data_dir=data_dir, out=tmp_path)
    text = refusal(cfg, [RayNode(8, 4)])
    assert "places 12 CPUs and 4 GPU(s) together 1 time(s)" in text and "room for 0" in text
    assert "num_cpus=22" in text and "num_data_storage_units" not in text


def test_a_cluster_is_checked_node_by_node(data_dir: Path, tmp_path: Path) -> None:
    """0.5b on two nodes of 2 GPUs: each node's bundles (6 CPUs) on one node, 22 in all."""
    cfg = resolve_config(
        "0.5b", data_dir=data_dir, out=tmp_path, nnodes=2, ray_address="10.0.0.1:6379"
    )
    check_ray_cpus(cfg, [RayNode(6, 2), RayNode(16, 2)])
    text = refusal(cfg, [RayNode(8, 2), RayNode(8, 2)])
    assert "holds 22 logical CPUs and Ray offers 16" in text
    assert "`ray start --num-cpus 12 --num-gpus 2`" in text
    text = refusal(cfg, [RayNode(32, 2), RayNode(32, 0)])  # one node without GPUs
    assert "room for 1" in text and "32 CPUs/0 GPUs" in text


def test_an_unreachable_cluster_is_named_in_seconds(data_dir: Path, tmp_path: Path) -> None:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]  # nothing listens once closed
    cfg = resolve_config("0.5b", data_dir=data_dir, out=tmp_path, ray_address=f"127.0.0.1:{port}")
    text = refusal(cfg, None)
    assert f"cannot reach the Ray cluster at 127.0.0.1:{port}" in text
    assert "--ray-address" in text


def test_the_cpu_overlay_fits_by_construction_and_preflight_runs_the_check(
    data_dir: Path, tmp_path: Path
) -> None:
    cfg = resolve_config("tiny", backend="verl", device="cpu", data_dir=data_dir, out=tmp_path)
    check_ray_cpus(cfg)  # ray_init.num_cpus is the demand, whatever this machine has
    gpu = resolve_config("0.5b", data_dir=data_dir, out=tmp_path)
    with pytest.raises(TrainerError, match="Ray would wait forever"):
        preflight(gpu, gpus=2, flash_attn=True, ray_nodes=[RayNode(4, 2)])
    assert preflight(gpu, gpus=2, flash_attn=True, ray_nodes=[RayNode(16, 2)]) == []


def test_an_override_veRL_does_not_have_is_named_before_any_stage(
    data_dir: Path, tmp_path: Path
) -> None:
    cfg = resolve_config("0.5b", data_dir=data_dir, out=tmp_path, overrides=["trainer.no_such=1"])
    with pytest.raises(UsageError, match=r"does not take this stage's overrides .*no_such"):
        check_ray_cpus(cfg, [RayNode(64, 8)])
