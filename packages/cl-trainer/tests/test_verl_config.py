"""The overrides compose against veRL's INSTALLED Hydra config and pass veRL's own validation.

This is what catches a renamed or removed veRL key on the next veRL upgrade.
"""

from __future__ import annotations

import dataclasses
import importlib
import inspect
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import ray
import verl
from hydra import compose, initialize_config_dir
from omegaconf import DictConfig, OmegaConf
from transformers import PretrainedConfig
from verl.trainer.ppo.utils import need_critic, need_reference_policy
from verl.utils.config import validate_config
from verl.workers.config import HFModelConfig

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


def test_validation_samples_n_answers_at_the_rollout_temperature(
    data_dir: Path, hf_model: Path, tmp_path: Path
) -> None:
    """Greedy pass@1 stays the default; ``val_samples`` n samples n answers per puzzle at the
    rollout's temperature (an override of it included)."""

    def val_kwargs(**given: object) -> DictConfig:
        cfg = resolve_config("0.5b", data_dir=data_dir, out=tmp_path, algo="grpo", **given)
        conf = compose_stage(
            stage_overrides(cfg, Stage(0, 1, "plus"), actor_path=str(hf_model), critic_path=None)
        )
        validate_config(conf, use_reference_policy=need_reference_policy(conf), use_critic=False)
        return conf.actor_rollout_ref.rollout.val_kwargs

    greedy = val_kwargs()
    assert (greedy.n, greedy.do_sample, greedy.temperature) == (1, False, 0)
    sampled = val_kwargs(val_samples=8)
    assert (sampled.n, sampled.do_sample, sampled.temperature) == (8, True, 1.0)
    warm = val_kwargs(val_samples=4, overrides=["actor_rollout_ref.rollout.temperature=0.7"])
    assert (warm.n, warm.temperature) == (4, 0.7)


@pytest.mark.parametrize(
    ("backend", "device", "modules"),
    [
        ("verl", "cuda", "cl_trainer.verl_reference"),
        ("verl", "cpu", "cl_trainer.verl_cpu.plugin,cl_trainer.verl_reference"),
        ("local", "cpu", None),
    ],
)
def test_reference_base_names_the_base_model_to_every_stage(
    backend: str, device: str, modules: str | None, data_dir: Path, hf_model: Path, tmp_path: Path
) -> None:
    """Every stage's environment names the base model as the KL reference, and veRL's processes
    import the plugin that reads it; ``--reference stage`` (the default) adds nothing."""
    given = dict(data_dir=data_dir, out=tmp_path, model=str(hf_model), rounds=2)
    given |= dict(backend=backend, device=device, ray_address="10.0.0.1:6379")
    plans = stage_plan(resolve_config("0.5b", reference="base", **given), env={})
    assert len(plans) == 8 and plans[3].actor != str(hf_model)  # later stages start elsewhere
    for p in plans:
        assert p.env["CL_TRAINER_REFERENCE_MODEL"] == str(hf_model)
        assert p.env.get("VERL_USE_EXTERNAL_MODULES") == modules
        # A cluster started with `ray start` gets them through the job's runtime environment.
        # (quoted: Ray takes only strings, and Hydra would make a number of an unquoted digit)
        assert (
            f"+ray_kwargs.ray_init.runtime_env.env_vars.CL_TRAINER_REFERENCE_MODEL='{hf_model}'"
            in p.argv
        )
    for p in stage_plan(resolve_config("0.5b", **given), env={}):
        assert "CL_TRAINER_REFERENCE_MODEL" not in p.env
        assert "cl_trainer.verl_reference" not in p.env.get("VERL_USE_EXTERNAL_MODULES", "")


PLUGIN_PROBE = """
import verl
from types import SimpleNamespace
from verl.workers import engine_workers as ew

worker_cls = ew.ActorRolloutRefWorker.ref_worker_cls
built = {}
ew.TrainingWorker.__init__ = lambda self, config: built.update(path=config.model_config.local_path)
worker_cls(config=SimpleNamespace(model_config=SimpleNamespace(local_path="/the/stage/start")))
print(worker_cls.__name__, built["path"])
"""


def test_verl_builds_its_reference_from_the_named_model(hf_model: Path, tmp_path: Path) -> None:
    """With the stage environment of ``--reference base``, veRL's own hybrid worker constructs
    its reference through the plugin's class, which loads the base model's weights; without it,
    veRL's TrainingWorker loads the stage's start."""
    env = {**os.environ, "CL_TRAINER_REFERENCE_MODEL": str(hf_model)}
    env["VERL_USE_EXTERNAL_MODULES"] = "cl_trainer.verl_reference"
    out = subprocess.run(
        [sys.executable, "-c", PLUGIN_PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.returncode == 0, out.stderr[-2000:]
    assert out.stdout.splitlines()[-1] == f"ReferenceFromModel {hf_model}"
    assert f"reference policy from {hf_model}" in out.stdout
    del env["VERL_USE_EXTERNAL_MODULES"], env["CL_TRAINER_REFERENCE_MODEL"]
    out = subprocess.run(
        [sys.executable, "-c", PLUGIN_PROBE], env=env, capture_output=True, text=True, timeout=300
    )
    assert out.stdout.splitlines()[-1] == "TrainingWorker /the/stage/start", out.stderr[-2000:]


def test_a_joint_stage_trains_on_its_mixture(
    data_dir: Path, hf_model: Path, tmp_path: Path
) -> None:
    cfg = resolve_config("0.5b", data_dir=data_dir, out=tmp_path, curriculum="joint")
    conf = compose_stage(
        stage_overrides(cfg, Stage(5, 2, "plus_minus"), actor_path=str(hf_model), critic_path=None)
    )
    assert conf.data.train_files == str(tmp_path / "joint" / "R2_plus_minus" / "train.parquet")
    assert conf.trainer.experiment_name == "ContinualCountdown_R2_plus_minus"


ADDED_KEYS = {
    "ray_kwargs.ray_init.": "a keyword of ray.init: main_ppo calls ray.init(**ray_init)",
    ".override_config.": "an HF config attribute (HFModelConfig applies override_config to it) or "
    "a key HFModelConfig reads itself (attn_implementation, passed to AutoConfig)",
}
"""Where a ``+``/``++`` key that veRL's YAML lacks is deliberately new, and what it must be."""


def emitted_overrides(data_dir: Path, hf_model: Path, tmp_path: Path) -> list[str]:
    """Every override the trainer emits, over presets, algorithms, devices and a cluster."""
    out = []
    for size in PRESETS:
        for algo in ("ppo", "grpo"):
            for device, backend in (("cuda", "verl"), ("cpu", "verl"), ("cpu", "local")):
                for ray_address in (None, "10.0.0.1:6379"):
                    cfg = resolve_config(
                        size,
                        algo=algo,
                        device=device,
                        backend=backend,
                        ray_address=ray_address,
                        data_dir=data_dir,
                        out=tmp_path / "run",
                        model=str(hf_model),
                        between_stages=["replay:fraction=0.25"],
                    )
                    for plan in stage_plan(cfg, env={"WANDB_RUN_GROUP": "g"})[:2]:
                        out += plan.argv[3:]
    return sorted(set(out))


def typed_fields(node: DictConfig) -> set[str] | None:
    """The fields of the dataclass veRL builds a config node into (its ``_target_``)."""
    target = node.get("_target_") if isinstance(node, DictConfig) else None
    if not target:
        return None
    module, _, name = str(target).rpartition(".")
    cls = getattr(importlib.import_module(module), name)
    return {f.name for f in dataclasses.fields(cls)}


def test_every_emitted_key_exists_in_veRLs_configuration(
    data_dir: Path, hf_model: Path, tmp_path: Path
) -> None:
    """A renamed key fails here: a plain key would stop Hydra, but a ``++`` key would silently add
    a dead one (a lost ``mixed_precision`` falls back to bf16)."""
    base = compose_stage([])
    ray_init = set(inspect.signature(ray.init).parameters)
    hf_model_config = inspect.getsource(HFModelConfig.__post_init__)
    checked = {"yaml": 0, "dataclass": 0, "added": 0}
    for override in emitted_overrides(data_dir, hf_model, tmp_path):
        key = override.split("=", 1)[0]
        plus, key = key.startswith("+"), key.lstrip("+")
        if key.startswith("hydra."):
            continue
        parent, _, leaf = key.rpartition(".")
        node = OmegaConf.select(base, parent) if parent else base
        if isinstance(node, DictConfig) and leaf in list(node):  # "???" values count too
            checked["yaml"] += 1
            continue
        assert plus, f"{key} is not in veRL's configuration (Hydra would refuse it)"
        fields = typed_fields(node)
        if fields is not None:
            assert leaf in fields, f"{key}: {leaf} is not a field of {parent}'s dataclass"
            checked["dataclass"] += 1
            continue
        reason = next((r for pattern, r in ADDED_KEYS.items() if pattern in f".{key}"), None)
        assert reason, f"{key} is new to veRL's configuration and not listed as deliberate"
        if reason.startswith("a keyword of ray.init"):
            assert key.split(".")[2] in ray_init, key
        else:
            read = f'override_config.get("{leaf}"' in hf_model_config
            assert read or hasattr(PretrainedConfig(), leaf), key
        checked["added"] += 1
    assert min(checked.values()) > 0, checked


def test_a_cpu_stage_on_a_cluster_carries_the_overlay_env_as_strings(
    data_dir: Path, hf_model: Path, tmp_path: Path
) -> None:
    """Nodes started with ``ray start`` do not inherit the trainer's environment: the overlay's
    variables travel in the job's runtime env, which Ray accepts only as strings (``'1'``)."""
    cfg = resolve_config(
        "tiny",
        algo="ppo",
        backend="verl",
        device="cpu",
        nnodes=2,
        ray_address="127.0.0.2:6379",
        data_dir=data_dir,
        out=tmp_path,
        model=str(hf_model),
    )
    plan = stage_plan(cfg)[0]
    conf = compose_stage(plan.argv[3:])
    env_vars = OmegaConf.to_container(conf.ray_kwargs.ray_init.runtime_env.env_vars)
    assert env_vars == plan.env and all(isinstance(v, str) for v in env_vars.values())
    assert conf.trainer.nnodes == 2 and conf.trainer.n_gpus_per_node == 1
    assert conf.ray_kwargs.ray_init.num_cpus is None  # the nodes declare their own CPUs
