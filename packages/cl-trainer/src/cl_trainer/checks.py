"""Preflight: every error a stage would hit minutes later on the GPUs, as one line, up front."""

from __future__ import annotations

import shutil
from pathlib import Path

import pyarrow.parquet as pq

from cl_trainer.config import TrainerConfig, looks_like_hub_id
from cl_trainer.errors import TrainerError, UsageError
from cl_trainer.presets import APPROX_PARAMS, TINY_MODEL_SENTINEL
from countdown_data.dataset import split_path

NO_GPU = "no GPU found: veRL needs CUDA GPUs; see `cl-trainer plan` or use `--backend local`"

CHECKPOINT_BYTES_PER_PARAM = 2 + 4 + 8 + 2
"""bf16 HF export + fp32 FSDP shards + Adam's two fp32 moments + the stage's final HF copy."""


def gpu_count() -> int:
    import torch

    return torch.cuda.device_count() if torch.cuda.is_available() else 0


def check_data(cfg: TrainerConfig) -> None:
    hint = (
        "uv run countdown-data gen --quick" if cfg.size == "tiny" else "uv run countdown-data gen"
    )
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


def check_gpus(cfg: TrainerConfig, available: int | None = None) -> None:
    """Only the verl backend needs GPUs; a Ray cluster's other nodes cannot be counted here."""
    if cfg.backend != "verl":
        return
    found = gpu_count() if available is None else available
    if found == 0:
        raise TrainerError(NO_GPU)
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


def model_bytes(model: str, fallback_params: int) -> int:
    """Size of the model's weights in bf16: from its safetensors files, else the preset's count."""
    path = Path(model)
    if path.is_dir():
        files = list(path.glob("*.safetensors")) or list(path.glob("*.bin"))
        if files:
            return sum(f.stat().st_size for f in files)
    return 2 * fallback_params


def checkpoint_bytes(cfg: TrainerConfig, model: str) -> int:
    """Estimated disk for one stage's checkpoint (actor, plus critic for PPO)."""
    params = model_bytes(model, APPROX_PARAMS[cfg.size]) // 2
    roles = 2 if cfg.uses_critic else 1
    return params * CHECKPOINT_BYTES_PER_PARAM * roles


def human_bytes(n: float) -> str:
    """``1.2 GB``, ``340 MB``, ``12 kB`` (decimal units, as disk sizes are sold and shown)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def check_disk(cfg: TrainerConfig, model: str) -> None:
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    need = checkpoint_bytes(cfg, model)
    free = shutil.disk_usage(cfg.run_dir).free
    if free < need:
        raise TrainerError(
            f"not enough disk for the next checkpoint: about {human_bytes(need)} needed, "
            f"{human_bytes(free)} free under {cfg.run_dir}; free space or pass --out elsewhere"
        )


def preflight(cfg: TrainerConfig, *, gpus: int | None = None) -> None:
    """Cheap checks first, GPUs last: every failure is one line naming the fix."""
    check_parallelism(cfg)
    check_batches(cfg)
    check_data(cfg)
    check_model(cfg)
    check_gpus(cfg, gpus)
