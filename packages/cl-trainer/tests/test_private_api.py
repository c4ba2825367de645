"""Each entry of ``cl_trainer.private_api`` checked against the INSTALLED veRL, Ray and torch.

What they do not promise may change in any patch release; these tests turn such a change into a
failure that names the symbol, instead of a hang (a Ray CPU budget), an ignored setting (a
renamed variable) or a silent fallback.
"""

from __future__ import annotations

import ast
import dataclasses
import inspect
import json
import re
from pathlib import Path

import pytest
import torch
import verl

from cl_trainer import private_api
from cl_trainer.local.config import verl_config_dir
from cl_trainer.local.tiny import build_model, build_tokenizer

VERL_DIR = Path(verl.__file__).parent


def verl_source(relative: str) -> str:
    return (VERL_DIR / relative).read_text()


# ------------------------------------------------------------------------- Ray's CPU demand


def test_each_gpu_bundle_holds_the_default_colocate_count() -> None:
    from verl.single_controller.ray.base import RayResourcePool, ResourcePoolManager
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    default = {f.name: f.default for f in dataclasses.fields(ResourcePoolManager)}
    assert default["max_colocate_count"] == private_api.BUNDLE_CPUS
    assert '{"CPU": self.max_colocate_count}' in inspect.getsource(
        RayResourcePool.get_placement_groups
    )
    build = inspect.getsource(PPOTrainer._init_resource_pool_mgr)
    assert "ResourcePoolManager(" in build and "max_colocate_count" not in build


def test_transfer_queue_actors_hold_one_cpu_each() -> None:
    from transfer_queue.controller import TransferQueueController
    from transfer_queue.storage.simple_storage import SimpleStorageUnit

    for actor in (TransferQueueController, SimpleStorageUnit):
        assert actor._default_options.get("num_cpus") == private_api.TQ_ACTOR_CPUS, actor


def test_other_actors_need_a_cpu_only_to_be_placed() -> None:
    from ray._private import ray_constants
    from verl.trainer.main_ppo import TaskRunnerV1

    assert "num_cpus" not in TaskRunnerV1._default_options
    assert ray_constants.DEFAULT_ACTOR_METHOD_CPU_SIMPLE == private_api.PLACEMENT_CPUS
    assert ray_constants.DEFAULT_ACTOR_CREATION_CPU_SIMPLE == 0


def test_the_storage_unit_key_is_veRLs() -> None:
    from hydra import compose, initialize_config_dir
    from omegaconf import OmegaConf

    with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
        conf = compose(config_name="ppo_trainer")
    assert OmegaConf.select(conf, private_api.TQ_STORAGE_UNITS_KEY) == 8


@pytest.mark.parametrize("name", private_api.VERL_ENV_VARS)
def test_veRL_reads_every_variable_we_set(name: str) -> None:
    read = re.compile(rf"""os\.(getenv|environ\.get)\(\s*["']{name}["']|os\.environ\[["']{name}""")
    readers = [p for p in VERL_DIR.rglob("*.py") if read.search(p.read_text(errors="replace"))]
    assert readers, f"veRL no longer reads {name}: a renamed variable would be ignored"


# ----------------------------------------------------------------------------- veRL's trainer


def test_val_metrics_names_the_per_source_accuracy() -> None:
    metrics = private_api.val_metrics(
        ["countdown_plus"] * 2, ["a", "b"], {"reward": [1.0, 0.1], "acc": [1.0, 0.0]}
    )
    assert metrics["val-core/countdown_plus/acc/mean@1"] == 0.5
    assert metrics["val-aux/countdown_plus/reward/mean@1"] == pytest.approx(0.55)


def test_write_generations_is_veRLs_jsonl_writer(tmp_path: Path) -> None:
    private_api.write_generations(
        inputs=["p"],
        outputs=["o"],
        gts=[{"target": 1}],
        scores=[0.5],
        reward_extra_infos_dict={"uid": ["u"], "acc": [0.0]},
        dump_path=str(tmp_path),
        global_steps=7,
    )
    row = json.loads((tmp_path / "7.jsonl").read_text())
    fields = {"input": "p", "output": "o", "gts": {"target": 1}, "score": 0.5, "step": 7}
    assert row == fields | {"uid": "u", "acc": 0.0}


def test_the_v1_training_dump_has_uid_as_its_only_extra_field() -> None:
    """What ``cl_trainer.rollouts`` reads: the v1 trainer dumps no ``acc``, so correctness is
    recomputed by the verifier."""
    from verl.trainer.ppo.v1.trainer_base import PPOTrainer

    source = inspect.getsource(PPOTrainer._log_rollout_data)
    assert 'reward_extra_infos_dict = {"uid":' in source
    assert "self._dump_generations(" in source


# --------------------------------------------------------------------------------- the rollout


def test_a_registered_rollout_resolves_in_both_registries() -> None:
    from verl.workers.rollout.base import _ROLLOUT_REGISTRY, get_rollout_class
    from verl.workers.rollout.replica import RolloutReplicaRegistry, get_rollout_replica_class

    from cl_trainer.verl_cpu.rollout import HFReplica, HFServerAdapter

    assert ("vllm", "async") in _ROLLOUT_REGISTRY  # the key shape we write
    private_api.register_rollout(
        "cl_test", "cl_trainer.verl_cpu.rollout.HFServerAdapter", lambda: HFReplica
    )
    try:
        assert get_rollout_class("cl_test") is HFServerAdapter
        assert get_rollout_replica_class("cl_test") is HFReplica
    finally:
        del _ROLLOUT_REGISTRY[("cl_test", "async")]
        del RolloutReplicaRegistry._registry["cl_test"]


def test_a_replica_server_reaches_veRLs_accessors() -> None:
    from cl_trainer.verl_cpu.rollout import HFReplica

    replica = object.__new__(HFReplica)
    private_api.set_replica_server(replica, "handle", "address")
    assert replica.server_handle == "handle" and replica.server_address == "address"
    assert replica.servers == ["handle"]


def test_update_weights_takes_exactly_what_the_worker_passes() -> None:
    from cl_trainer.verl_cpu.rollout import HFServerAdapter

    tree = ast.parse(verl_source("workers/engine_workers.py"))
    passed = {
        kw.arg
        for node in ast.walk(tree)
        if isinstance(node, ast.Call)
        and isinstance(node.func, ast.Attribute)
        and node.func.attr == "update_weights"
        and ast.unparse(node.func.value) == "self.rollout"
        for kw in node.keywords
    }
    assert passed == private_api.update_weights_keywords()
    params = inspect.signature(HFServerAdapter.update_weights).parameters
    assert {n for n, p in params.items() if p.kind is p.KEYWORD_ONLY} == passed
    assert not any(p.kind is p.VAR_KEYWORD for p in params.values())


# ------------------------------------------------------------------------------ model loading


def test_the_engine_imports_veRLs_value_loader_at_call_time() -> None:
    from verl.utils.model import load_valuehead_model
    from verl.workers.engine.fsdp.transformer_impl import FSDPEngine

    assert list(inspect.signature(load_valuehead_model).parameters) == list(
        inspect.signature(private_api.load_value_model).parameters
    )
    build = inspect.getsource(FSDPEngine._build_module)
    assert "from verl.utils.model import load_valuehead_model" in build
    assert 'attn_implementation="flash_attention_2"' in inspect.getsource(load_valuehead_model)


def test_the_value_model_loads_with_the_configured_attention(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    import verl.utils.model
    from transformers import AutoConfig

    tokenizer = build_tokenizer()
    build_model(tokenizer, seed=0).save_pretrained(tmp_path)
    monkeypatch.setattr(
        verl.utils.model, "load_valuehead_model", verl.utils.model.load_valuehead_model
    )
    private_api.use_configured_attention_for_value_models()
    assert verl.utils.model.load_valuehead_model is private_api.load_value_model
    config = AutoConfig.from_pretrained(tmp_path, attn_implementation="sdpa")
    config.num_labels = 1  # as FSDPEngine._build_module sets it
    model = verl.utils.model.load_valuehead_model(str(tmp_path), torch.float32, config, False)
    assert type(model).__name__ == "Qwen2ForTokenClassification"
    assert model.config._attn_implementation == "sdpa" and model.score.out_features == 1


# -------------------------------------------------------------------------- torch without CUDA


def test_veRL_still_builds_a_repeated_cpu_backend() -> None:
    import torch.distributed as dist

    assert 'f"cpu:gloo,{' in verl_source("utils/distributed.py")
    assert next(iter(inspect.signature(dist.init_process_group).parameters)) == "backend"
    assert private_api.dedupe_backend("cpu:gloo,cpu:gloo") == "cpu:gloo"
    assert private_api.dedupe_backend("cpu:gloo,cuda:nccl") == "cpu:gloo,cuda:nccl"


def test_offload_policies_are_built_unpinned(monkeypatch: pytest.MonkeyPatch) -> None:
    from torch.distributed.fsdp import CPUOffloadPolicy

    assert [f.name for f in dataclasses.fields(CPUOffloadPolicy)] == ["pin_memory"]
    assert "CPUOffloadPolicy(pin_memory=True)" in verl_source(
        "workers/engine/fsdp/transformer_impl.py"
    )
    monkeypatch.setattr(CPUOffloadPolicy, "__init__", CPUOffloadPolicy.__init__)
    private_api.unpin_offload_policies()
    private_api.unpin_offload_policies()  # idempotent: one wrapper
    assert CPUOffloadPolicy(pin_memory=True).pin_memory is False
    assert not getattr(CPUOffloadPolicy.__init__.__wrapped__, "_cl_trainer_wrapped", False)


def test_a_broken_accelerator_probe_is_an_error_not_a_cpu(monkeypatch: pytest.MonkeyPatch) -> None:
    from verl.plugin.platform import PlatformRegistry

    from cl_trainer.verl_cpu.platform import accelerator_present

    assert accelerator_present() is (torch.cuda.is_available())

    class Broken:
        def is_platform_available(self, use_smi_check: bool = False) -> bool:
            raise RuntimeError("driver/library version mismatch")

    monkeypatch.setattr(PlatformRegistry, "registered_names", classmethod(lambda _c: ("x",)))
    monkeypatch.setattr(PlatformRegistry, "get", classmethod(lambda _c, _n: Broken))
    with pytest.raises(RuntimeError, match="version mismatch"):
        accelerator_present()


# ------------------------------------------------------------------------------------------ Ray


def test_ray_counts_a_new_nodes_cpus_with_get_num_cpus() -> None:
    from ray._private import resource_and_label_spec

    source = inspect.getsource(resource_and_label_spec)
    assert "self.num_cpus = ray._private.utils.get_num_cpus()" in source
    assert private_api.ray_node_cpus() >= 1
