"""Preflight: every error a stage would hit minutes later on the GPUs, as one line, up front."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq

from cl_rundir.layout import Stage
from cl_trainer.config import TrainerConfig, looks_like_hub_id
from cl_trainer.errors import TrainerError, UsageError
from cl_trainer.presets import APPROX_PARAMS, DATA_COMMANDS, TINY_MODEL_SENTINEL
from cl_trainer.sizing import disk_needed, model_params, run_size
from countdown_data.dataset import split_path

ATTN_OVERRIDE = "actor_rollout_ref.model.override_config.attn_implementation"

NO_GPU = (
    "no GPU found: pass --device cpu (veRL's trainer on the CPU, slow: to check a configuration) "
    "or --backend local, or see `cl-trainer plan`"
)
NO_FLASH_ATTN = (
    "FlashAttention-2 does not work here ({problem}), and veRL loads the actor, reference and PPO "
    "critic with it: `uv sync --locked --extra gpu --no-install-package flash-attn && uv sync "
    "--locked --extra gpu` builds it against the installed torch (needs the CUDA toolkit's nvcc; "
    "FLASH_ATTN_CUDA_ARCHS lists the GPU architectures, 90 for H100/H200), or use the trainer "
    "image (deploy/docker/Dockerfile, build argument FLASH_ATTN_CUDA_ARCHS)"
)
FLASH_ATTN_PROBE = """
import sys
import torch
try:
    import flash_attn_2_cuda  # the compiled kernels: the package's metadata proves nothing
except Exception as exc:
    sys.exit(f"{type(exc).__name__}: {str(exc).splitlines()[0] if str(exc) else ''}")
if torch.cuda.is_available():
    from flash_attn import flash_attn_func
    arch = "sm_%d%d" % torch.cuda.get_device_capability(0)
    q = torch.zeros(1, 1, 1, 64, dtype=torch.bfloat16, device="cuda")
    try:
        flash_attn_func(q, q, q)
        torch.cuda.synchronize()
    except Exception as exc:
        sys.exit(f"on this GPU, {arch}: {type(exc).__name__}: {str(exc).splitlines()[0]}")
"""
"""Run in a child process, so that no CUDA context of the trainer's own holds GPU memory."""
FLASH_ATTN_PROBE_TIMEOUT_S = 300
SLOW_ON_CPU = (
    "note: --device cpu runs veRL's own trainer on the CPU: right for checking a configuration "
    "on a laptop, hours to days for a real model's stage"
)


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


def check_device(cfg: TrainerConfig) -> None:
    if cfg.backend == "verl" and cfg.device == "cpu" and cfg.ray_address:
        raise UsageError(
            "--device cpu runs veRL's trainer in one local Ray instance; drop --ray-address "
            "(or --device cpu)"
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


def human_bytes(n: float) -> str:
    """``1.2 GB``, ``340 MB``, ``12 kB`` (decimal units, as disk sizes are sold and shown)."""
    for unit, scale in (("GB", 1e9), ("MB", 1e6), ("kB", 1e3)):
        if n >= scale:
            return f"{n / scale:.1f} {unit}"
    return f"{int(n)} B"


def check_disk(cfg: TrainerConfig, stages: list[Stage], model: str, first: int = 0) -> None:
    """Enough free disk for stage ``first`` and every one after it, at the run's peak.

    ``model``: the stage's starting model (its parameters are counted). What the stage already
    holds (the checkpoint a resumed stage starts from) is on disk and not asked for again.
    """
    cfg.run_dir.mkdir(parents=True, exist_ok=True)
    params = model_params(model, APPROX_PARAMS[cfg.size])
    sizes = run_size(cfg, stages, params)
    held = tree_bytes(cfg.run_dir / stages[first].checkpoint_dir)
    need = max(0, disk_needed(sizes, first) - held)
    free = shutil.disk_usage(cfg.run_dir).free
    if free < need:
        later = len(stages) - first - 1
        fixes = "free space" + (", pass --keep-checkpoints 0" if cfg.keep_checkpoints else "")
        raise TrainerError(
            f"not enough disk for stage {stages[first].name} and the {later} after it: about "
            f"{human_bytes(need)} needed, {human_bytes(free)} free under {cfg.run_dir} "
            f"(`cl-trainer plan` itemises it); {fixes}, or pass --out elsewhere"
        )


def tree_bytes(root: Path) -> int:
    """Bytes of the files under ``root``, each inode once (exports are hard links)."""
    seen, total = set(), 0
    for path in Path(root).rglob("*") if Path(root).is_dir() else []:
        st = path.lstat()
        if path.is_file() and not path.is_symlink() and (st.st_dev, st.st_ino) not in seen:
            seen.add((st.st_dev, st.st_ino))
            total += st.st_size
    return total


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


def flash_attn_problem() -> str | None:
    """Why FlashAttention-2 cannot run in the stages' Python, or None when it can: its compiled
    extension imports (a build against another torch fails here) and, on a GPU, one kernel runs
    (a build without this GPU's architecture fails here)."""
    try:
        proc = subprocess.run(
            [sys.executable, "-c", FLASH_ATTN_PROBE],
            capture_output=True,
            text=True,
            timeout=FLASH_ATTN_PROBE_TIMEOUT_S,
            check=False,
        )
    except subprocess.TimeoutExpired:
        return f"its check did not finish in {FLASH_ATTN_PROBE_TIMEOUT_S} s"
    if proc.returncode == 0:
        return None
    lines = proc.stderr.strip().splitlines()
    return lines[-1] if lines else f"its check exited with code {proc.returncode}"


def check_flash_attn(cfg: TrainerConfig, works: bool | None = None) -> None:
    """``works``: already known (tests); None: probe it, only where a stage needs it."""
    if not needs_flash_attn(cfg):
        return
    problem = flash_attn_problem() if works is None else (None if works else "not installed")
    if problem:
        raise TrainerError(NO_FLASH_ATTN.format(problem=problem))


def preflight(
    cfg: TrainerConfig, *, gpus: int | None = None, flash_attn: bool | None = None
) -> list[str]:
    """Cheap checks first, GPUs last: every failure is one line naming the fix. Returns notes
    worth a line on the console."""
    check_device(cfg)
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
