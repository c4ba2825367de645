"""Run veRL's own, unmodified ``python -m verl.trainer.main_ppo`` on a machine without GPUs.

``cpu_overlay()`` returns the Hydra overrides (appended after a stage's own) and the environment
that turn a stage command into a CPU run; ``cl_trainer.verl_cpu.plugin`` is what the environment
makes every veRL process import (a CPU platform, a transformers rollout, two torch workarounds).
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

PLUGIN_MODULE = "cl_trainer.verl_cpu.plugin"
PLATFORM_NAME = "cpu"
ROLLOUT_NAME = "hf_cpu"

RAY_LOGICAL_CPUS = 8
"""Ray scheduling slots, not cores. Held for the whole run: 3 by veRL's actor placement-group
bundle (``{"CPU": max_colocate_count=3, "GPU": 1}``, ``single_controller/ray/base.py``), 1 by the
TransferQueue controller and 1 per TransferQueue storage unit (both ``@ray.remote(num_cpus=1)``);
actors that request no resources need a free slot to be placed and hold none afterwards. Too few
and a placement group or actor waits forever without an error."""

ROLLOUT_THREADS_ENV = "CL_VERL_CPU_ROLLOUT_THREADS"
ROLLOUT_THREADS = 1
"""Torch threads of the generation server; on 2 shared cores one thread was fastest (64 sequences:
1.0 s vs 7.5 s with two, whose OpenMP threads spin while the other Ray processes compute)."""


def cpu_overlay() -> tuple[list[str], dict[str, str]]:
    """Hydra overrides and environment variables for one stage of veRL's trainer on CPU.

    One training process (a logical GPU slot for Ray), FSDP2 in fp32 with gloo, SDPA attention on
    padded batches, the ``hf_cpu`` rollout, and one worker/storage unit wherever veRL would start
    eight, so that a 2-core machine runs it in a few GB.
    """
    overrides = [
        # One training process; Ray sees one logical GPU slot for it (veRL's placement groups
        # and resource check count GPU/NPU slots only), and enough logical CPUs for its holders.
        # "++" adds a key or overrides it, whatever the stage's own overrides did.
        "trainer.n_gpus_per_node=1",
        "trainer.nnodes=1",
        "trainer.device=cpu",
        f"++ray_kwargs.ray_init.num_cpus={RAY_LOGICAL_CPUS}",
        "++ray_kwargs.ray_init.num_gpus=1",
        "++ray_kwargs.ray_init.include_dashboard=False",
        # FSDP1 insists on sync_module_states with a device id (transformer_impl.py,
        # _build_fsdp_module), which torch refuses on CPU; FSDP2 runs over gloo. The actor's
        # strategy is copied into its and the reference's engine config (FSDPActorConfig).
        "actor_rollout_ref.actor.strategy=fsdp2",
        # fp32 compute: without AVX512-BF16 bf16 autocast is emulated (slower), and the rollout
        # computes its log-probs in fp32 too, so rollout and actor probabilities agree.
        "++actor_rollout_ref.actor.fsdp_config.mixed_precision="
        "{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
        "++actor_rollout_ref.ref.fsdp_config.mixed_precision="
        "{param_dtype:fp32,reduce_dtype:fp32,buffer_dtype:fp32}",
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
        "transfer_queue.backend.SimpleStorage.num_data_storage_units=1",
        "data.dataloader_num_workers=0",
    ]
    env = {
        "VERL_USE_EXTERNAL_MODULES": PLUGIN_MODULE,
        "VERL_PLATFORM": PLATFORM_NAME,
        # FSDP engines are registered for cuda/npu only (transformer_impl.py, EngineRegistry);
        # veRL's own override picks the registered class, which then runs on the cpu platform.
        "VERL_ENGINE_DEVICE": "cuda",
        "VERL_ENGINE_VENDOR": "nvidia",
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
