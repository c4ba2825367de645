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
from countdown_data.generate import GenConfig

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


def test_plan_shows_how_long_and_how_large_the_run_is(data_dir: Path, tmp_path: Path) -> None:
    """Without data: countdown-data gen's defaults, 100,000 puzzles a group; with: its rows."""
    args = ["plan", "--size", "1.5b", "--out", str(tmp_path / "run")]
    res = invoke(*args, "--data-dir", str(tmp_path / "none"))
    assert res.exit_code == 0, res.output
    out = res.output
    per_stage = GenConfig().train_size // 128 * 15
    assert "ContinualCountdown_1.5b: 12 stages" in out and "countdown-data gen's defaults" in out
    rows = [ln.split() for ln in out.splitlines() if ln.startswith("#   R")]
    assert len(rows) == 12 and all(r[2] == f"{per_stage:,}" for r in rows)
    total = next(ln.split() for ln in out.splitlines() if ln.startswith("#   total"))
    assert total[2] == f"{12 * per_stage:,}"
    data = json.loads(invoke(*args, "--data-dir", str(tmp_path / "none"), "--json").output)
    size, stages = data["size"], data["stages"]
    assert size["steps"] == sum(s["steps"] for s in stages) == 12 * per_stage
    assert size["disk_needed_bytes"] == max(s["disk_peak_bytes"] for s in stages)
    assert f"disk: about {checks.human_bytes(size['disk_needed_bytes'])} free needed" in out
    assert not (tmp_path / "run").exists()  # plan writes nothing
    # From the data that is there: 40 rows per group at batch 8, 2 epochs, capped at 7 steps.
    small = ["--train-batch-size", "8", "--ppo-mini-batch-size", "8", "--epochs", "2"]
    data = json.loads(invoke(*args, "--data-dir", str(data_dir), *small, "--json").output)
    assert data["size"]["data_found"] and data["stages"][0]["steps"] == 10
    capped = json.loads(
        invoke(*args, "--data-dir", str(data_dir), *small, "--max-steps", "7", "--json").output
    )
    assert capped["stages"][0]["steps"] == 7
    assert "trainer.total_training_steps=7" in capped["stages"][0]["argv"]


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
