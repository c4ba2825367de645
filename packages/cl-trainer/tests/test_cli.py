"""CLI: the default command, `plan`, and the one-line preflight errors (no GPU anywhere)."""

from __future__ import annotations

import json
import shlex
from pathlib import Path

import pytest
from click.testing import CliRunner

from cl_trainer import checks
from cl_trainer.cli import main
from cl_trainer.config import resolve_config
from cl_trainer.errors import TrainerError
from cl_trainer.overrides import BACKEND_CMD_ENV

from .conftest import FAKE_VERL


def invoke(*args: str, env: dict[str, str] | None = None):
    return CliRunner().invoke(main, list(args), env=env, catch_exceptions=False)


def test_plan_prints_every_stage_with_its_exact_command(data_dir: Path, tmp_path: Path) -> None:
    res = invoke(
        "plan",
        "--size",
        "1.5b",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path),
        "--",
        "actor_rollout_ref.actor.optim.lr=5e-7",
    )
    assert res.exit_code == 0, res.output
    assert res.output.count("\n# stage ") == 12
    assert "-m verl.trainer.main_ppo" in res.output
    assert (
        "# stage 5/12 R2_plus [pending]: starts from "
        + str(tmp_path / "metrics/final_1_plus_minus_mul_div")
        in res.output
    )
    data = json.loads(
        invoke(
            "plan", "--size", "1.5b", "--data-dir", str(data_dir), "--out", str(tmp_path), "--json"
        ).output
    )
    stages = data["stages"]
    assert [s["name"] for s in stages[:5]] == [
        "R1_plus",
        "R1_plus_minus",
        "R1_plus_minus_mul",
        "R1_plus_minus_mul_div",
        "R2_plus",
    ]
    assert data["config"]["tp"] == 4 and data["config"]["model"] == "Qwen/Qwen2.5-1.5B"
    # The printed command is the argv, shell-quoted: pasting it runs exactly this.
    cmd = stages[1]["command"].replace("\\\n", " ")
    words = shlex.split(cmd)
    assert words[len(stages[1]["env"]) :] == stages[1]["argv"]
    assert f"actor_rollout_ref.model.path={tmp_path}/metrics/final_1_plus" in stages[1]["argv"]


def test_plan_tiny_shows_the_model_it_will_build_without_building_it(tmp_path: Path) -> None:
    res = invoke("plan", "--size", "tiny", "--out", str(tmp_path), "--json")
    data = json.loads(res.output)
    assert data["stages"][0]["model"] == str(tmp_path / "base_model")
    assert "-m cl_trainer.local" in data["stages"][0]["command"]
    assert data["config"]["backend"] == "local" and len(data["stages"]) == 4
    assert not (tmp_path / "base_model").exists()


def test_bare_command_runs_with_the_default_run_command(
    data_dir: Path, hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    env = {BACKEND_CMD_ENV: f"python {FAKE_VERL}", "WANDB_MODE": "disabled"}
    res = invoke(
        "--size",
        "tiny",
        "--groups",
        "plus",
        "--data-dir",
        str(data_dir),
        "--out",
        str(tmp_path),
        "--model",
        str(hf_model),
        "--train-batch-size",
        "8",
        "--ppo-mini-batch-size",
        "8",
        "--no-wandb",
        env=env,
    )
    assert res.exit_code == 0, res.output
    assert (
        "step:0 - val-core/countdown_plus/acc/mean@1"
        in (tmp_path / "logs" / "ContinualCountdown_R1_plus.log").read_text()
    )  # the whole stream goes to the stage log
    assert "validation plus 0.10 → 0.15" in res.output  # the console summarises it
    stage = json.loads((tmp_path / "run.json").read_text())["stages"][0]
    assert stage["status"] == "done"


def test_verl_backend_without_gpu_says_so(
    data_dir: Path, hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(checks, "gpu_count", lambda: 0)
    res = CliRunner().invoke(
        main,
        [
            "run",
            "--size",
            "0.5b",
            "--data-dir",
            str(data_dir),
            "--out",
            str(tmp_path),
            "--model",
            str(hf_model),
        ],
    )
    assert res.exit_code == 1
    assert res.output.strip() == f"Error: {checks.NO_GPU}"
    assert not (tmp_path / "run.json").exists()


@pytest.mark.parametrize(
    ("kwargs", "gpus", "message"),
    [
        (
            {"data_dir": "/nonexistent"},
            8,
            "data missing: /nonexistent/plus/train.parquet not found; "
            "run `uv run countdown-data gen`",
        ),
        ({"model": "/no/such/model"}, 8, "model not found: /no/such/model"),
        ({"n_gpus_per_node": 4}, 2, "asked for --n-gpus-per-node 4 but this machine has 2 GPU(s)"),
        ({"n_gpus_per_node": 6}, 8, "tensor-parallel size 4 does not divide the 6 GPU(s)"),
        ({"ppo_mini_batch_size": 48}, 8, "PPO mini-batch 48 does not divide the train batch 128"),
        ({"ppo_mini_batch_size": 256}, 8, "larger than the train batch 128"),
        (
            {"ppo_micro_batch_size_per_gpu": 3},
            8,
            "micro-batch 3/GPU does not divide the per-GPU mini-batch 2",
        ),
        (
            {"n_gpus_per_node": 8, "ppo_mini_batch_size": 4},
            8,
            "does not split evenly over 8 GPU(s)",
        ),
    ],
)
def test_preflight_errors_are_one_line(
    kwargs: dict, gpus: int, message: str, data_dir: Path, hf_model: Path
) -> None:
    opts = {"data_dir": data_dir, "model": str(hf_model), **kwargs}
    cfg = resolve_config("1.5b", **opts)
    with pytest.raises(TrainerError) as err:
        checks.preflight(cfg, gpus=gpus)
    text = str(err.value)
    assert message in text and "\n" not in text


def test_hub_ids_pass_the_model_check(data_dir: Path) -> None:
    """A hub ID is downloaded later, so preflight must not look for it on disk (a local path
    that is not there is refused)."""
    cfg = resolve_config("0.5b", data_dir=data_dir)
    assert cfg.model == "Qwen/Qwen2.5-0.5B" and not Path(cfg.model).exists()
    checks.preflight(cfg, gpus=2, flash_attn=True)
    with pytest.raises(TrainerError, match="model not found"):
        checks.preflight(resolve_config("0.5b", data_dir=data_dir, model="./Qwen2.5"), gpus=2)


def test_disk_check(
    data_dir: Path, hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = resolve_config("1.5b", data_dir=data_dir, out=tmp_path)
    assert checks.checkpoint_bytes(cfg, "Qwen/Qwen2.5-1.5B") > 40e9  # actor + critic, with Adam
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda _p: type("U", (), {"free": 10**9})())
    with pytest.raises(TrainerError, match="not enough disk for this stage and the 3 after it"):
        checks.check_disk(cfg, "Qwen/Qwen2.5-1.5B", stages_after=3)
    checks.check_disk(resolve_config("tiny", out=tmp_path, model=str(hf_model)), str(hf_model))


def test_a_damaged_parquet_is_named_before_any_work(data_dir: Path, tmp_path: Path) -> None:
    import shutil

    data = tmp_path / "data"
    shutil.copytree(data_dir, data)
    (data / "plus_minus" / "test.parquet").write_bytes(b"PAR1 not really a parquet file")
    cfg = resolve_config("tiny", data_dir=data, out=tmp_path / "run")
    with pytest.raises(TrainerError) as err:
        checks.preflight(cfg)
    text = str(err.value)
    assert "plus_minus/test.parquet" in text and "countdown-data validate" in text
    assert "\n" not in text


def test_disk_sizes_read_in_human_units() -> None:
    assert checks.human_bytes(2_500_000) == "2.5 MB"
    assert checks.human_bytes(30e9) == "30.0 GB"
    assert checks.human_bytes(12_345) == "12.3 kB"
    assert checks.human_bytes(10) == "10 B"


def test_disk_estimate_counts_parameters_not_bytes(tmp_path: Path) -> None:
    """A stage-2 start model is an fp32 export: counted by its parameters, it is not twice the
    base model; a finished stage keeps one full checkpoint (fp32 export + shards + Adam)."""
    import torch
    from safetensors.torch import save_file

    weights = {"a": torch.zeros(1000, 10), "b": torch.zeros(500)}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        (tmp_path / name).mkdir()
        save_file(
            {k: v.to(dtype) for k, v in weights.items()}, tmp_path / name / "model.safetensors"
        )
        assert checks.model_params(str(tmp_path / name), 0) == 10_500
    cfg = resolve_config("tiny", out=tmp_path / "run")
    ckpt = checks.checkpoint_bytes(cfg, str(tmp_path / "fp32"))
    assert ckpt == 10_500 * (4 + 4 + 8)  # GRPO: the actor only
    assert checks.disk_needed(cfg, str(tmp_path / "fp32"), stages_after=3) == 2 * ckpt + 3 * ckpt


def test_seeds_run_one_curriculum_per_seed(data_dir: Path, hf_model: Path, tmp_path: Path) -> None:
    env = {BACKEND_CMD_ENV: f"python {FAKE_VERL}", "WANDB_MODE": "disabled"}
    common = ["--size", "tiny", "--groups", "plus", "--data-dir", str(data_dir), "--model",
              str(hf_model), "--train-batch-size", "8", "--ppo-mini-batch-size", "8",
              "--no-wandb"]  # fmt: skip
    res = invoke(*common, "--out", str(tmp_path / "run"), "--seeds", "0,2", env=env)
    assert res.exit_code == 0, res.output
    for seed in (0, 2):
        manifest = json.loads((tmp_path / f"run-s{seed}" / "run.json").read_text())
        assert manifest["config"]["seed"] == seed
        assert manifest["stages"][0]["status"] == "done"
    assert not (tmp_path / "run").exists()
    res = CliRunner().invoke(main, [*common, "--seeds", "1,1"], env=env)
    assert res.exit_code == 2 and "listed twice" in res.output
    res = CliRunner().invoke(main, [*common, "--seeds", "1", "--seed", "3"], env=env)
    assert res.exit_code == 2 and "not both" in res.output
