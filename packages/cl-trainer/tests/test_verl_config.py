"""The overrides compose against veRL's INSTALLED Hydra config and pass veRL's own validation.

This is what catches a renamed or removed veRL key on the next veRL upgrade.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import verl
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config

from cl_rundir.layout import Stage
from cl_trainer.config import preset_value, resolve_config
from cl_trainer.overrides import stage_overrides
from cl_trainer.presets import PRESETS
from cl_trainer.stages import stage_plan
from cl_trainer.tracking import wandb_env

CONFIG_DIR = str(Path(verl.__file__).parent / "trainer" / "config")


def compose_stage(overrides: list[str]) -> DictConfig:
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


@pytest.mark.parametrize("algo", ["ppo", "grpo"])
@pytest.mark.parametrize("size", list(PRESETS))
def test_overrides_compose_and_validate(
    size: str, algo: str, data_dir: Path, hf_model: Path, tmp_path: Path
) -> None:
    def preset(name: str) -> object:
        return preset_value(size, name)

    cfg = resolve_config(size, algo=algo, data_dir=data_dir, out=tmp_path / "run")
    overrides = stage_overrides(
        cfg, Stage(5, 2, "plus_minus"), actor_path=str(hf_model), critic_path=str(hf_model)
    )
    conf = compose_stage(overrides)
    validate_config(
        conf, use_reference_policy=need_reference_policy(conf), use_critic=need_critic(conf)
    )

    arr = conf.actor_rollout_ref
    assert conf.data.train_files == str(data_dir / "plus_minus" / "train.parquet")
    assert list(conf.data.val_files) == [str(data_dir / g / "test.parquet") for g in cfg.groups]
    assert conf.data.train_batch_size == preset("train_batch_size")
    assert conf.data.max_prompt_length == preset("max_prompt_length")
    assert arr.model.path == str(hf_model)
    assert arr.rollout.name == "vllm"
    # vLLM's context: a prompt and its answer, not the model's 32k positions.
    assert arr.rollout.max_model_len == preset("max_prompt_length") + preset("max_response_length")
    assert arr.rollout.max_model_len == arr.rollout.prompt_length + arr.rollout.response_length
    assert conf.trainer.total_training_steps is None  # every epoch unless capped
    local = preset("backend") == "local"
    assert arr.rollout.tensor_model_parallel_size == (1 if local else preset("tp"))
    assert arr.actor.ppo_mini_batch_size == preset("ppo_mini_batch_size")
    assert arr.actor.ppo_micro_batch_size_per_gpu <= preset("ppo_micro_batch_size_per_gpu")
    assert "hf_model" in arr.actor.checkpoint.save_contents
    assert "hf_model" not in arr.actor.checkpoint.load_contents
    assert conf.reward.custom_reward_function.path == "pkg://countdown_reward"
    assert conf.reward.custom_reward_function.name == "compute_score_with_acc"
    assert conf.trainer.experiment_name == "ContinualCountdown_R2_plus_minus"
    assert conf.trainer.default_local_dir == str(tmp_path / "run" / "checkpoints" / "R2_plus_minus")
    assert conf.trainer.total_epochs == preset("epochs")
    assert conf.trainer.val_before_train is True
    assert conf.trainer.test_freq > 0 and conf.trainer.save_freq > 0
    assert conf.trainer.resume_mode == "auto"
    assert arr.actor.entropy_coeff == 0.001  # the original fork's ppo_trainer.yaml
    assert list(conf.trainer.logger) == ["console", "wandb"]
    if algo == "ppo":
        assert conf.algorithm.adv_estimator == "gae" and need_critic(conf)
        assert conf.critic.model.path == str(hf_model)
        assert "hf_model" in conf.critic.checkpoint.save_contents
        assert arr.rollout.n == 1
    else:
        assert conf.algorithm.adv_estimator == "grpo" and not need_critic(conf)
        assert arr.rollout.n == preset("rollout_n") and arr.actor.use_kl_loss


def test_the_original_batch_sizes_survive(data_dir: Path) -> None:
    """0.5b: batch 256, mini 16, micro 8/GPU; 1.5b: 128, 8, micro capped at 4 (2 fits 8/4 GPUs)."""
    small = resolve_config("0.5b", data_dir=data_dir)
    assert (
        small.tp,
        small.train_batch_size,
        small.ppo_mini_batch_size,
        small.ppo_micro_batch_size_per_gpu,
        small.model,
    ) == (2, 256, 16, 8, "Qwen/Qwen2.5-0.5B")
    big = resolve_config("1.5b", data_dir=data_dir)
    assert (
        big.tp,
        big.train_batch_size,
        big.ppo_mini_batch_size,
        big.ppo_micro_batch_size_per_gpu,
        big.model,
    ) == (4, 128, 8, 2, "Qwen/Qwen2.5-1.5B")
    assert resolve_config("1.5b", algo="grpo", rollout_n=8).ppo_micro_batch_size_per_gpu == 4


def test_scale_options_and_user_overrides_reach_verl(
    data_dir: Path, hf_model: Path, tmp_path: Path
) -> None:
    cfg = resolve_config(
        "1.5b",
        data_dir=data_dir,
        out=tmp_path,
        n_gpus_per_node=8,
        nnodes=2,
        ray_address="10.0.0.1:6379",
        wandb=False,
        overrides=["actor_rollout_ref.actor.optim.lr=5e-7"],
    )
    conf = compose_stage(
        stage_overrides(
            cfg,
            Stage(0, 1, "plus"),
            actor_path=str(hf_model),
            critic_path=str(hf_model),
            wandb_env={"WANDB_RUN_GROUP": "g"},
        )
    )
    assert conf.trainer.n_gpus_per_node == 8 and conf.trainer.nnodes == 2
    assert conf.ray_kwargs.ray_init.address == "10.0.0.1:6379"
    assert conf.ray_kwargs.ray_init.runtime_env.env_vars.WANDB_RUN_GROUP == "g"
    assert conf.actor_rollout_ref.actor.optim.lr == 5e-7
    assert list(conf.trainer.logger) == ["console"]


def test_a_step_cap_reaches_verl_and_never_exceeds_the_epochs(
    data_dir: Path, hf_model: Path, tmp_path: Path
) -> None:
    """``--max-steps`` is veRL's ``trainer.total_training_steps``, which replaces the epochs'
    count; above it, veRL's loop would end on the epochs before its last step (no final save)."""
    for cap, steps in ((3, 3), (50, 10)):  # 40 rows / batch 8 x 2 epochs = 10 steps
        cfg = resolve_config(
            "0.5b", data_dir=data_dir, out=tmp_path, max_steps=cap, epochs=2,
            train_batch_size=8, ppo_mini_batch_size=8,
        )  # fmt: skip
        conf = compose_stage(
            stage_overrides(cfg, Stage(0, 1, "plus"), actor_path=str(hf_model), critic_path=None)
        )
        validate_config(
            conf, use_reference_policy=need_reference_policy(conf), use_critic=need_critic(conf)
        )
        assert conf.trainer.total_training_steps == steps


RAY_SCRIPT = """
import json, os, sys
import ray
from omegaconf import OmegaConf
from verl.trainer.constants_ppo import get_ppo_ray_runtime_env
from hydra import compose, initialize_config_dir

with initialize_config_dir(config_dir=sys.argv[1], version_base=None):
    conf = compose(config_name="ppo_trainer", overrides=json.loads(sys.argv[2]))
# verl.trainer.main_ppo.run_ppo's ray.init, on a local node started with the key in its
# environment as `ray start` on a cluster node is (deploy/compose.cluster.yaml)
ray_init = conf.ray_kwargs.get("ray_init", {})
runtime_env = OmegaConf.merge(get_ppo_ray_runtime_env(conf), ray_init.get("runtime_env", {}))
kwargs = OmegaConf.to_container(OmegaConf.create({**ray_init, "runtime_env": runtime_env}))
print("printed by veRL:", kwargs)
kwargs.pop("address")
os.environ["WANDB_API_KEY"] = sys.argv[3]
ray.init(**{**kwargs, "num_cpus": 1, "include_dashboard": False})
del os.environ["WANDB_API_KEY"]  # from here on, only the node's processes hold it

@ray.remote
def seen():
    env = ray.get_runtime_context().runtime_env
    return [os.environ.get(k) for k in ("WANDB_API_KEY", "WANDB_RUN_GROUP")], env

values, actor_env = ray.get(seen.remote())
print("actor sees:", json.dumps(values))
print("runtime envs:", json.dumps([ray.get_runtime_context().runtime_env, actor_env]))
ray.shutdown()
"""


def test_the_wandb_key_reaches_cluster_actors_from_the_nodes_environment_only(
    data_dir: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Ray's dashboard and state API show every job's and actor's runtime environment; the key
    must reach wandb.init in veRL's actors without being in one."""
    monkeypatch.setenv("WANDB_API_KEY", "key-123-secret")
    monkeypatch.delenv("WANDB_MODE", raising=False)
    cfg = resolve_config("1.5b", data_dir=data_dir, out=tmp_path, ray_address="10.0.0.1:6379")
    env = wandb_env(cfg)
    plan = stage_plan(cfg, env=env)[0]
    assert env["WANDB_MODE"] == "online"
    assert "key-123-secret" not in json.dumps([plan.argv, plan.env])
    child_env = {k: v for k, v in os.environ.items() if k != "WANDB_API_KEY"}
    proc = subprocess.run(
        [sys.executable, "-c", RAY_SCRIPT, CONFIG_DIR, json.dumps(plan.argv[3:]), "key-123-secret"],
        env=child_env,
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    printed = next(line for line in proc.stdout.splitlines() if line.startswith("printed by"))
    assert "key-123-secret" not in printed
    seen = json.loads(proc.stdout.split("actor sees:")[1].splitlines()[0])
    assert seen == ["key-123-secret", env["WANDB_RUN_GROUP"]]
    runtime_envs = proc.stdout.split("runtime envs:")[1].splitlines()[0]
    assert env["WANDB_RUN_GROUP"] in runtime_envs and "key-123-secret" not in runtime_envs
