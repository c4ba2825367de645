"""Preflight: every error a stage would hit minutes later on the GPUs, as one line, up front."""

from __future__ import annotations

import json
import math
import shutil
import struct
from pathlib import Path

import pyarrow.parquet as pq

from cl_trainer.checkpoints import architecture, is_value_model
from cl_trainer.config import TrainerConfig, looks_like_hub_id
from cl_trainer.errors import TrainerError, UsageError
from cl_trainer.presets import APPROX_PARAMS, DATA_COMMANDS, TINY_MODEL_SENTINEL
from countdown_data.dataset import split_path

ATTN_OVERRIDE = "actor_rollout_ref.model.override_config.attn_implementation"

NO_GPU = (
    "no GPU found: pass --device cpu (veRL's trainer on the CPU, slow: to check a configuration) "
    "or --backend local, or see `cl-trainer plan`"
)
NO_FLASH_ATTN = (
    "FlashAttention-2 is not installed (veRL loads the actor, reference and PPO critic with it): "
    "`uv sync --locked --extra gpu --no-install-package flash-attn && uv sync --locked --extra "
    "gpu` builds it against the installed torch (needs the CUDA toolkit's nvcc), or use the "
    "trainer image (deploy/docker/Dockerfile)"
)
SLOW_ON_CPU = (
    "note: --device cpu runs veRL's own trainer on the CPU: right for checking a configuration "
    "on a laptop, hours to days for a real model's stage"
)

CHECKPOINT_BYTES_PER_PARAM = 4 + 4 + 8
"""One checkpoint of one trained model: its HF export (fp32: veRL saves the fp32 training copy),
its fp32 FSDP shards and Adam's two fp32 moments."""
EXPORT_BYTES_PER_PARAM = 4
"""A stage's final HF export, kept (as hard links) when its checkpoints are pruned away."""


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_data(cfg: TrainerConfig) -> None:
    hint = "uv run " + DATA_COMMANDS.get(cfg.size, "countdown-data gen")
    for group in cfg.groups:
        for split in ("train", "test"):
            path = split_path(Path(cfg.data_dir), group, split)
            if not path.is_file():
                raise UsageError(f"data missing: {path} not found; run `{hint}` or pass --data-dir")
            try:
                pq.read_metadata(path)  # the footer: cheap, and what every reader opens first
            except Exception as exc:
                reason = str(exc).splitlines()[0] if str(exc) else type(exc).__name__
                raise UsageError(
                    f"data damaged: {path} is not a readable parquet file ({reason}); run "
                    f"`uv run countdown-data validate {cfg.data_dir}`, or regenerate it"
                ) from None


def check_model(cfg: TrainerConfig) -> None:
    if cfg.model == TINY_MODEL_SENTINEL or looks_like_hub_id(cfg.model):
        return
    path = Path(cfg.model)
    if not path.exists():
        raise UsageError(
            f"model not found: {path} does not exist and is not a Hugging Face hub ID "
            "(owner/name); fix --model or BASE_MODEL"
        )
    if not (path / "config.json").is_file():
        raise UsageError(
            f"model {path} has no config.json: pass a Hugging Face model directory as --model"
        )
    if is_value_model(path):
        raise UsageError(
            f"model {path} is a PPO critic's export (a value head, {architecture(path)}), not a "
            "language model; pass an actor export such as metrics/final_<round>_<group>"
        )


def check_gpus(cfg: TrainerConfig, available: int | None = None) -> None:
    """``--device cuda`` needs GPUs; a Ray cluster's other nodes cannot be counted here."""
    if cfg.device != "cuda":
        return
    found = gpu_count() if available is None else available
    if found == 0:
        raise TrainerError(NO_GPU if cfg.backend == "verl" else "no GPU found: pass --device cpu")
    if found < cfg.n_gpus_per_node:
        raise UsageError(
            f"asked for --n-gpus-per-node {cfg.n_gpus_per_node} but this machine has "
            f"{found} GPU(s); "
            f"pass --n-gpus-per-node {found} (and a tensor-parallel size that divides it)"
        )


def check_parallelism(cfg: TrainerConfig) -> None:
    if cfg.n_gpus_per_node < 1 or cfg.nnodes < 1 or cfg.tp < 1:
        raise UsageError("--n-gpus-per-node, --nnodes and --tp must be at least 1")
    if cfg.n_gpus % cfg.tp:
        raise UsageError(
            f"tensor-parallel size {cfg.tp} does not divide the {cfg.n_gpus} GPU(s); "
            f"pass --tp with a divisor of {cfg.n_gpus}"
        )


def check_batches(cfg: TrainerConfig) -> None:
    """The divisibility rules veRL 0.9.1 asserts (utils/config.py, engine_workers, engine/utils)."""
    n, dp = cfg.rollout_n, cfg.n_gpus
    batch, mini, micro = (
        cfg.train_batch_size,
        cfg.ppo_mini_batch_size,
        cfg.ppo_micro_batch_size_per_gpu,
    )
    if min(batch, mini, micro) < 1:
        raise UsageError("batch sizes must be at least 1")
    if mini > batch:
        raise UsageError(
            f"PPO mini-batch {mini} is larger than the train batch {batch}; "
            "lower --ppo-mini-batch-size"
        )
    if batch % mini:
        raise UsageError(
            f"PPO mini-batch {mini} does not divide the train batch {batch}; "
            f"pick a divisor of {batch}"
        )
    if (batch * n) % dp:
        raise UsageError(
            f"train batch {batch} x rollout.n {n} is not divisible by the {dp} GPU(s); "
            "change --train-batch-size or the GPU count"
        )
    if (mini * n) % dp:
        raise UsageError(
            f"PPO mini-batch {mini} x rollout.n {n} does not split evenly over {dp} GPU(s); "
            "change --ppo-mini-batch-size or the GPU count"
        )
    per_gpu = mini * n // dp
    if per_gpu % micro:
        raise UsageError(
            f"micro-batch {micro}/GPU does not divide the per-GPU mini-batch {per_gpu} "
            f"(= {mini} x {n} / {dp} GPUs); pass --micro-batch-per-gpu with a divisor of {per_gpu}"
        )


def model_params(model: str, fallback: int) -> int:
    """Parameters of a local model, counted from its safetensors headers (so fp32 and bf16 files
    count alike); the preset's figure for a hub ID not yet on disk."""
    files = sorted(Path(model).glob("*.safetensors")) if Path(model).is_dir() else []
    if not files:
        return fallback
    total = 0
    try:
        for file in files:
            with open(file, "rb") as f:
                (n,) = struct.unpack("<Q", f.read(8))
                if n > file.stat().st_size:
                    raise ValueError("not a safetensors header")
                header = json.loads(f.read(n))
            total += sum(math.prod(t["shape"]) for k, t in header.items() if k != "__metadata__")
    except (OSError, ValueError, KeyError, TypeError, struct.error):
        return fallback  # not readable here; loading it will say what is wrong
    return total


def checkpoint_bytes(cfg: TrainerConfig, model: str) -> int:
    """One full checkpoint of the stage's trained models (actor, plus critic for PPO)."""
    roles = 2 if cfg.uses_critic else 1
    return model_params(model, APPROX_PARAMS[cfg.size]) * CHECKPOINT_BYTES_PER_PARAM * roles


def disk_needed(cfg: TrainerConfig, model: str, stages_after: int) -> int:
    """Disk the rest of the curriculum needs from the start of a stage.

    During the stage veRL writes a checkpoint before rotating out the oldest, so it holds
    ``keep + 1`` at its peak; every finished stage then keeps ``keep`` full checkpoints (with
    none kept, its final HF exports).
    """
    ckpt = checkpoint_bytes(cfg, model)
    keep = cfg.keep_checkpoints
    kept = keep * ckpt if keep else ckpt * EXPORT_BYTES_PER_PARAM // CHECKPOINT_BYTES_PER_PARAM
    return (max(1, keep) + 1) * ckpt + stages_after * kept


def human_bytes(n: float) -> str:
    """``1.2 GB``, ``340 MB``, ``12 kB`` (decimal units, as disk sizes are sold and shown)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def check_disk(cfg: TrainerConfig, model: str, stages_after: int = 0) -> None:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    need = disk_needed(cfg, model, stages_after)
    free = shutil.disk_usage(cfg.run_dir).free
    if free < need:
        raise TrainerError(
            f"not enough disk for this stage and the {stages_after} after it: about "
            f"{human_bytes(need)} needed, {human_bytes(free)} free under {cfg.run_dir}; free "
            "space, pass --keep-checkpoints 0, or pass --out elsewhere"
        )


def needs_flash_attn(cfg: TrainerConfig) -> bool:
    """veRL on GPUs loads actor and reference with ``override_config.attn_implementation``
    (default flash_attention_2, ``verl/workers/config/model.py``) and the PPO critic with
    flash_attention_2 hard-coded (``verl/utils/model.py``, ``load_valuehead_model``)."""
    if cfg.backend != "verl" or cfg.device != "cuda":
        return False
    if cfg.uses_critic:
        return True
    attn = [o for o in cfg.overrides if o.lstrip("+").startswith(ATTN_OVERRIDE + "=")]
    return not attn or attn[-1].split("=", 1)[1] == "flash_attention_2"


def flash_attn_available() -> bool:
    from transformers.utils import is_flash_attn_2_available

    return is_flash_attn_2_available()


def check_flash_attn(cfg: TrainerConfig, available: bool | None = None) -> None:
    if needs_flash_attn(cfg) and not (flash_attn_available() if available is None else available):
        raise TrainerError(NO_FLASH_ATTN)


def preflight(
    cfg: TrainerConfig, *, gpus: int | None = None, flash_attn: bool | None = None
) -> list[str]:
    """Cheap checks first, GPUs last: every failure is one line naming the fix. Returns notes
    worth a line on the console."""
    check_parallelism(cfg)
    check_batches(cfg)
    check_data(cfg)
    check_model(cfg)
    check_gpus(cfg, gpus)
    check_flash_attn(cfg, flash_attn)
    notes = []
    if cfg.backend == "verl" and cfg.device == "cpu" and cfg.size != "tiny":
        notes.append(SLOW_ON_CPU)
    return notes
