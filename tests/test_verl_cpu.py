"""veRL's own, unmodified trainer runs one tiny stage on CPU: ``cl-trainer --backend verl
--device cpu``, the very stage command ``plan`` prints plus ``cl_trainer.verl_cpu``'s overlay.

The slow, real-veRL integration test (minutes, not seconds), on freshly generated data and a tiny
model with a few SFT steps; two GRPO steps and a small validation set covering every group. What
the stand-in (``packages/cl-trainer/tests/fake_verl.py``) cannot catch is caught here: Hydra,
Ray, model loading, the rollout, weight sync, checkpointing, the log contract with cl-eval.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from omegaconf import OmegaConf
from transformers import AutoModelForCausalLM

from cl_eval.analysis import analyse
from cl_eval.logs import parse_log
from cl_trainer.local.tiny import ensure_tiny_model
from countdown_data.dataset import split_path
from countdown_data.groups import GROUPS, data_source

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
STEPS = 2
TIMEOUT_S = 1200
"""Hard limit for the whole stage; it takes about 3-4 minutes on 2 cores."""


@pytest.fixture(scope="module")
def run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("verl_cpu")
    data = work / "data"
    gen = ["gen", "--train-size", "32", "--test-size", "2", "--template", "compact"]
    subprocess.run(
        [str(BIN / "countdown-data"), *gen, "--out", str(data)],
        cwd=work,
        check=True,
        capture_output=True,
        timeout=300,
    )
    run = work / "runs" / "tiny"
    # Built here with few SFT steps; the trainer finds it complete and starts from it.
    ensure_tiny_model(run / "base_model", data, seed=0, sft_steps=10, eval_samples=4)
    val_files = ",".join(str(split_path(data, g, "test")) for g in GROUPS)
    cmd = [
        str(BIN / "cl-trainer"), "--size", "tiny", "--backend", "verl", "--device", "cpu",
        "--groups", "plus", "--data-dir", str(data), "--out", str(run), "--no-wandb",
        "--max-steps", str(STEPS), "--", f"data.val_files=[{val_files}]",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd,
        cwd=work,
        env={**os.environ, "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    assert proc.returncode == 0, (
        f"cl-trainer exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
        f"\n--- stderr\n{proc.stderr[-4000:]}\n--- log\n"
        + (run / "logs" / "ContinualCountdown_R1_plus.log").read_text()[-6000:]
    )
    return run


def test_the_stage_is_done_and_its_overlay_recorded(run: Path) -> None:
    manifest = json.loads((run / "run.json").read_text())
    stage = manifest["stages"][0]
    assert stage["status"] == "done" and stage["global_steps"] == STEPS
    assert manifest["config"]["backend"] == "verl" and manifest["config"]["device"] == "cpu"
    overlay = manifest["cpu_overlay"]
    assert "actor_rollout_ref.rollout.name=hf_cpu" in overlay["overrides"]
    assert overlay["env"]["VERL_PLATFORM"] == "cpu"


def test_the_final_model_is_a_loadable_fp32_hf_export(run: Path) -> None:
    final = run / "metrics" / "final_1_plus"
    assert (final / "model.safetensors").is_file()
    # veRL saves the fp32 training copy but writes "dtype": "bfloat16" into config.json.
    model = AutoModelForCausalLM.from_pretrained(final, dtype=torch.float32)
    assert sum(p.numel() for p in model.parameters()) > 0


def test_cl_eval_reads_the_log_of_every_group(run: Path) -> None:
    log = parse_log(run / "logs" / "ContinualCountdown_R1_plus.log")
    assert log.val_steps() == [0, STEPS]
    assert log.train_steps() == list(range(1, STEPS + 1))
    for step in (0, STEPS):
        keys = log.records[step]
        for g in GROUPS:
            assert 0.0 <= keys[f"val-core/{data_source(g)}/acc/mean@1"] <= 1.0, (step, g)
    a = analyse(run)
    assert a.R.shape == (2, 1) and a.stages_used == 1


def test_the_rollout_follows_the_trained_weights(run: Path) -> None:
    # The transformers rollout's log-probs match the actor's recomputation, also after the first
    # weight sync: a stale rollout model would show up at step 2.
    log = parse_log(run / "logs" / "ContinualCountdown_R1_plus.log")
    for step in range(1, STEPS + 1):
        assert log.records[step]["training/rollout_probs_diff_max"] < 1e-3, step


def test_hydra_writes_inside_the_run_directory(run: Path) -> None:
    hydra = run / "hydra" / "R1_plus" / ".hydra"
    assert (hydra / "overrides.yaml").is_file()
    assert [p for p in run.parent.parent.rglob(".hydra")] == [hydra]


def test_a_done_stage_keeps_its_exports_not_its_checkpoints(run: Path) -> None:
    assert not list((run / "checkpoints" / "R1_plus").glob("global_step_*"))
    assert (run / "metrics" / "final_1_plus" / "model.safetensors").is_file()


def test_verl_ran_with_the_step_cap_and_the_rollout_context(run: Path) -> None:
    conf = OmegaConf.load(run / "hydra" / "R1_plus" / ".hydra" / "config.yaml")
    assert conf.trainer.total_training_steps == STEPS
    assert conf.actor_rollout_ref.rollout.max_model_len == 96 + 48  # the tiny preset's lengths
