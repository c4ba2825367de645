"""Stand-in for ``python -m verl.trainer.main_ppo``: writes what veRL 0.9.1 writes, without a GPU.

For the engine's fast tests only: it reproduces veRL's outputs, not its start-up (Hydra, Ray,
model loading); ``tests/test_verl_cpu.py`` runs the real trainer. Reproduced from veRL 0.9.1's
verl/trainer/ppo/v1/trainer_base.py, utils/checkpoint/checkpoint_manager.py and
utils/logger/aggregate_logger.py:
- console metric lines ``(TaskRunner pid=N) step:N - key:value - ...`` with ``pprint`` values
  (``np.float64(0.5)``), ``val-core/<data_source>/acc/mean@1`` on the first step line (step 0 when
  fresh and ``trainer.val_before_train``) and on the last step line, interleaved with noise;
- ``<default_local_dir>/global_step_N/{actor,critic}/huggingface/`` HF exports (config.json,
  fp32 model.safetensors, tokenizer files), one FSDP shard set per GPU, ``data.pt``, and
  ``latest_checkpointed_iteration.txt``; checkpoints every ``save_freq`` steps and at the last
  step; rotation by ``max_{actor,critic}_ckpt_to_keep`` of the role dirs this process saved
  (veRL's ``previous_saved_paths``: checkpoints of an earlier attempt are not rotated out), with
  room made before a save when more than one is kept and the oldest removed after it;
- ``resume_mode=auto``: restarts from the latest checkpointed step;
- steps = train rows // train_batch_size (the dataloader drops the last partial batch) x epochs,
  or ``trainer.total_training_steps``.

Test hooks (environment): FAKE_VERL_CALLS=<file> appends one JSON line per invocation;
FAKE_VERL_FAIL=<experiment_name>:<step> exits 1 with a traceback after finishing that step;
FAKE_VERL_NO_WEIGHTS=1 exports config.json without the weights; FAKE_VERL_HELD=<file> appends,
at every save, how many actor checkpoints are on disk once it is written (the stage's peak).
"""

from __future__ import annotations

import json
import os
import pprint
import shutil
import sys
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq
from safetensors.numpy import save_file

PREFIX = f"(TaskRunner pid={os.getpid()}) "
SAVED: dict[str, list[Path]] = {"actor": [], "critic": []}


def parse(argv: list[str]) -> dict[str, object]:
    cfg: dict[str, object] = {}
    for arg in argv:
        key, _, value = arg.partition("=")
        key = key.lstrip("+")
        if value.startswith("[") and value.endswith("]"):
            cfg[key] = [v.strip("'") for v in value[1:-1].split(",") if v]
        else:
            cfg[key] = value.strip("'")
    return cfg


def write_hf(dst: Path, source_model: str, step: int, role: str) -> None:
    dst.mkdir(parents=True, exist_ok=True)
    src_cfg = Path(source_model) / "config.json"
    config = json.loads(src_cfg.read_text()) if src_cfg.is_file() else {}
    config.update(_fake_step=step, _fake_started_from=source_model, _fake_role=role)
    (dst / "config.json").write_text(json.dumps(config))
    if not os.environ.get("FAKE_VERL_NO_WEIGHTS"):
        weights = np.full((4, 4), step, dtype=np.float32)  # veRL exports the fp32 training copy
        save_file({f"model.{role}.weight": weights}, str(dst / "model.safetensors"))
    (dst / "generation_config.json").write_text("{}")
    for name in ("tokenizer.json", "tokenizer_config.json"):
        src = Path(source_model) / name
        if src.is_file():
            shutil.copy(src, dst / name)


def save_checkpoint(
    ckpt: Path, step: int, cfg: dict[str, object], model: str, critic: str | None
) -> None:
    folder = ckpt / f"global_step_{step}"
    world = int(str(cfg["trainer.n_gpus_per_node"])) * int(str(cfg["trainer.nnodes"]))
    for role, source, keep_key in (
        ("actor", model, "trainer.max_actor_ckpt_to_keep"),
        ("critic", critic, "trainer.max_critic_ckpt_to_keep"),
    ):
        if source is None:
            continue
        keep = int(str(cfg.get(keep_key, "0")) or 0)
        if keep > 1 and len(SAVED[role]) >= keep:  # ensure_checkpoint_capacity: room first
            for old in SAVED[role][: len(SAVED[role]) - keep + 1]:
                shutil.rmtree(old, ignore_errors=True)
            SAVED[role] = SAVED[role][len(SAVED[role]) - keep + 1 :]
        role_dir = folder / role
        role_dir.mkdir(parents=True, exist_ok=True)
        for rank in range(world):
            for shard in ("model", "optim", "extra_state"):
                (role_dir / f"{shard}_world_size_{world}_rank_{rank}.pt").write_bytes(b"shard")
        (role_dir / "fsdp_config.json").write_text(
            json.dumps({"FSDP_version": 2, "world_size": world})
        )
        write_hf(role_dir / "huggingface", source, step, role)
        held = os.environ.get("FAKE_VERL_HELD")
        if held and role == "actor":
            with open(held, "a") as f:
                f.write(f"{len(list(ckpt.glob('global_step_*/actor')))}\n")
        SAVED[role].append(role_dir)  # register_checkpoint: rotate after the save
        if keep > 0:
            for old in SAVED[role][:-keep]:
                shutil.rmtree(old, ignore_errors=True)
            SAVED[role] = SAVED[role][-keep:]
    (folder / "data.pt").write_bytes(b"dataloader state")
    (ckpt / "latest_checkpointed_iteration.txt").write_text(str(step))


def val_metrics(cfg: dict[str, object], step: int) -> dict[str, float]:
    out = {}
    for path in cfg["data.val_files"]:
        group = Path(path).parent.name
        out[f"val-core/countdown_{group}/acc/mean@1"] = round(0.1 + 0.01 * step, 4)
        out[f"val-aux/countdown_{group}/reward/mean@1"] = round(0.2 + 0.01 * step, 4)
    return out


def line(step: int, metrics: dict[str, float]) -> str:
    """``concat_dict_to_str``'s format, under Ray's actor prefix; values are numpy scalars."""
    fields = [f"{k}:{pprint.pformat(np.float64(v))}" for k, v in metrics.items()]
    return PREFIX + " - ".join([f"step:{step}", *fields])


def main() -> int:
    cfg = parse(sys.argv[1:])
    calls = os.environ.get("FAKE_VERL_CALLS")
    exp = str(cfg["trainer.experiment_name"])
    model = str(cfg["actor_rollout_ref.model.path"])
    critic = str(cfg["critic.model.path"]) if cfg.get("algorithm.adv_estimator") == "gae" else None
    if calls:
        with open(calls, "a") as f:
            record = {
                "experiment": exp,
                "model": model,
                "critic": critic,
                "argv": sys.argv[1:],
                "wandb_group": os.environ.get("WANDB_RUN_GROUP"),
                "cwd": os.getcwd(),
                "wandb_mode": os.environ.get("WANDB_MODE"),
                "ray_job_config": os.environ.get("RAY_JOB_CONFIG_JSON_ENV_VAR"),
            }
            f.write(json.dumps(record) + "\n")
    ckpt = Path(str(cfg["trainer.default_local_dir"]))
    rows = pq.read_metadata(str(cfg["data.train_files"])).num_rows
    max_samples = int(str(cfg.get("data.train_max_samples", -1)))
    if max_samples > 0:
        rows = min(rows, max_samples)
    total = rows // int(str(cfg["data.train_batch_size"])) * int(str(cfg["trainer.total_epochs"]))
    if cfg.get("trainer.total_training_steps") not in (None, "null"):
        total = int(str(cfg["trainer.total_training_steps"]))
    save_freq, test_freq = int(str(cfg["trainer.save_freq"])), int(str(cfg["trainer.test_freq"]))
    start = 0
    tracker = ckpt / "latest_checkpointed_iteration.txt"
    if cfg.get("trainer.resume_mode") == "auto" and tracker.is_file():
        start = int(tracker.read_text())
        print(f"Resuming from {ckpt / f'global_step_{start}'}, setting global step to {start}")
    fail_exp, _, fail_step = os.environ.get("FAKE_VERL_FAIL", "").partition(":")

    print(PREFIX + "INFO worker noise: vLLM engine started", flush=True)
    if cfg.get("trainer.val_before_train", "True") == "True":
        print(line(start, val_metrics(cfg, start)), flush=True)
    for step in range(start + 1, total + 1):
        metrics = {"critic/score/mean": 0.5, "actor/pg_loss": -0.01, "timing_s/step": 1.5}
        if save_freq > 0 and (step == total or step % save_freq == 0):
            save_checkpoint(ckpt, step, cfg, model, critic)
        if test_freq > 0 and (step == total or step % test_freq == 0):
            metrics.update(val_metrics(cfg, step))
        print(line(step, metrics), flush=True)
        if fail_exp == exp and fail_step and step == int(fail_step):
            print(
                "Traceback (most recent call last):\nRuntimeError: CUDA out of memory", flush=True
            )
            return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
