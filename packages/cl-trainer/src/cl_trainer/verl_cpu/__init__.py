"""Run veRL's own, unmodified ``python -m verl.trainer.main_ppo`` on a machine without GPUs.

``cpu_overlay(cfg)`` returns the Hydra overrides (appended after a stage's own) and the environment
that turn a stage command into a CPU run; ``cl_trainer.verl_cpu.plugin`` is what the environment
makes every veRL process import (a CPU platform, a transformers rollout, a value-model loader
with the configured attention, two torch workarounds).
Nothing here imports veRL or torch, so the overlay is cheap to build.

Why one agent-loop and one reward worker (veRL starts eight of each): every worker is a new Python
process that imports torch, transformers, datasets and veRL when Ray loads its actor class (20-35 s
of CPU each on a 2-core machine without cached bytecode). veRL only submits the agent-loop workers
(``AgentLoopManager._init_agent_loop_workers``, ``experimental/agent_loop/agent_loop.py``) and first
waits on them in the first validation (``ray.get`` in ``AgentLoopManagerTQ.generate_sequences``,
``trainer/ppo/v1/agent_loop_tq.py``), so eight of them starting together with eight reward workers
looked like a hang there: measured 5.4 min in that ``ray.get`` on 2 cores, then 4 s of validation.
"""

from __future__ import annotations

import tempfile
from pathlib import Path
from typing import TYPE_CHECKING

from cl_trainer import private_api
from cl_trainer.resources import RayCpuDemand

if TYPE_CHECKING:
    from cl_trainer.config import TrainerConfig

PLUGIN_MODULE = "cl_trainer.verl_cpu.plugin"
PLATFORM_NAME = "cpu"
ROLLOUT_NAME = "hf_cpu"

STORAGE_UNITS = 1
"""TransferQueue storage units (veRL starts eight, each a process holding a Ray CPU)."""

FP32 = "{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}"
"""FSDP mixed precision in fp32: without AVX512-BF16, bf16 autocast is emulated (slower), and the
rollout computes its log-probs in fp32 too, so rollout and actor probabilities agree."""

ROLLOUT_THREADS_ENV = "CL_VERL_CPU_ROLLOUT_THREADS"
ROLLOUT_THREADS = 1
"""Torch threads of the generation server; on 2 shared cores one thread was fastest (64 sequences:
1.0 s vs 7.5 s with two, whose OpenMP threads spin while the other Ray processes compute)."""


def ray_demand(cfg: TrainerConfig) -> RayCpuDemand:
    """The overlay's Ray demand: one training process (a logical GPU slot) per node."""
    return RayCpuDemand(gpus_per_node=1, nnodes=cfg.nnodes, storage_units=STORAGE_UNITS)


def cpu_overlay(cfg: TrainerConfig) -> tuple[list[str], dict[str, str]]:
    """Hydra overrides and environment variables for one stage of veRL's trainer on CPU.

    One training process per node (a logical GPU slot for Ray), FSDP2 in fp32 with gloo, SDPA
    attention on padded batches (actor, reference and PPO critic), the ``hf_cpu`` rollout, and one
    worker/storage unit wherever veRL would start eight, so that a 2-core machine runs it in a
    few GB. Without ``--ray-address`` veRL starts its own Ray instance with exactly the logical
    CPUs the configuration holds (``cl_trainer.resources``); a cluster's nodes declare theirs.
    """
    overrides = [
        # One training process per node; Ray sees one logical GPU slot for it (veRL's placement
        # groups and resource check count GPU/NPU slots only).
        "trainer.n_gpus_per_node=1",
        f"trainer.nnodes={cfg.nnodes}",
        "trainer.device=cpu",
    ]
    if not cfg.ray_address:
        # "++" adds a key or overrides it, whatever the stage's own overrides did.
        overrides += [
            f"++ray_kwargs.ray_init.num_cpus={ray_demand(cfg).total}",
            f"++ray_kwargs.ray_init.num_gpus={cfg.nnodes}",
            "++ray_kwargs.ray_init.include_dashboard=False",
        ]
    overrides += [
        # FSDP1 insists on sync_module_states with a device id (transformer_impl.py,
        # _build_fsdp_module), which torch refuses on CPU; FSDP2 runs over gloo. The actor's
        # strategy is copied into its and the reference's engine config (FSDPActorConfig).
        "actor_rollout_ref.actor.strategy=fsdp2",
        f"++actor_rollout_ref.actor.fsdp_config.mixed_precision={FP32}",
        f"++actor_rollout_ref.ref.fsdp_config.mixed_precision={FP32}",
        # torch.compile of the entropy (transformer_impl.py) would build C++ kernels with inductor.
        "actor_rollout_ref.actor.fsdp_config.use_torch_compile=False",
        "actor_rollout_ref.ref.fsdp_config.use_torch_compile=False",
        # No flash-attn on CPU: padded batches with PyTorch's SDPA (veRL's default attention
        # is flash_attention_2, workers/config/model.py).
        "actor_rollout_ref.model.use_remove_padding=False",
        "++actor_rollout_ref.model.override_config.attn_implementation=sdpa",
        f"actor_rollout_ref.rollout.name={ROLLOUT_NAME}",
        # One worker where veRL starts eight (see the module docstring); each costs ~0.6 GB.
        "actor_rollout_ref.rollout.agent.num_workers=1",
        "reward.num_workers=1",
        f"transfer_queue.backend.SimpleStorage.num_data_storage_units={STORAGE_UNITS}",
        "data.dataloader_num_workers=0",
    ]
    if cfg.uses_critic:
        # The critic is veRL's engine-based TrainingWorker (trainer/ppo/v1/trainer_base.py):
        # FSDPCriticConfig copies its strategy into its engine config, the "fsdp" section.
        overrides += [
            "critic.strategy=fsdp2",
            f"++critic.fsdp.mixed_precision={FP32}",
            "critic.fsdp.use_torch_compile=False",
            "critic.model.use_remove_padding=False",
            # Read by the plugin's value-model loader (veRL's hard-codes flash_attention_2).
            "++critic.model.override_config.attn_implementation=sdpa",
        ]
    env = {
        private_api.EXTERNAL_MODULES_ENV: PLUGIN_MODULE,
        private_api.PLATFORM_ENV: PLATFORM_NAME,
        # FSDP engines are registered for cuda/npu only (transformer_impl.py, EngineRegistry);
        # veRL's own override picks the registered class, which then runs on the cpu platform.
        private_api.ENGINE_DEVICE_ENV: "cuda",
        private_api.ENGINE_VENDOR_ENV: "nvidia",
        ROLLOUT_THREADS_ENV: str(ROLLOUT_THREADS),
        # veRL's Ray runtime env turns tokenizer thread pools on unless the variable is set
        # (trainer/constants_ppo.py); on 2 cores they only compete with the real work.
        "TOKENIZERS_PARALLELISM": "false",
        "RAY_USAGE_STATS_ENABLED": "0",
        # The driver's stdout is the stage log: unbuffered, it is complete even after a crash.
        "PYTHONUNBUFFERED": "1",
        # Every Ray worker imports torch and veRL anew: with bytecode caching off (as on some
        # machines and images) each recompiles them, ~22 s instead of ~11 s per process on 2 cores.
        # A cache outside the (possibly read-only) environment, shared by every run.
        "PYTHONDONTWRITEBYTECODE": "",
        "PYTHONPYCACHEPREFIX": str(Path(tempfile.gettempdir()) / "cl-trainer-pycache"),
    }
    return overrides, env
