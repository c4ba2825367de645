"""How long and how large a run is (``cl_trainer.sizing``), and the disk check built on it."""

from __future__ import annotations

import shutil
from pathlib import Path

import pytest

from cl_trainer import checks
from cl_trainer.config import resolve_config
from cl_trainer.errors import TrainerError
from cl_trainer.presets import APPROX_PARAMS
from cl_trainer.sizing import (
    CHECKPOINT_BYTES_PER_PARAM,
    EXPORT_BYTES_PER_PARAM,
    VALIDATION_BYTES_PER_TOKEN,
    disk_needed,
    model_params,
    run_size,
)
from cl_trainer.stages import plan_stages
from countdown_data.generate import GenConfig

GROUPS2 = ["plus", "plus_minus"]


def sizes_of(cfg, params: int | None = None):
    return run_size(cfg, plan_stages(cfg), params)


def test_steps_validations_and_checkpoints_count_as_verl_does(data_dir: Path) -> None:
    """40 rows per group at batch 8: 5 steps an epoch (veRL drops a last partial batch)."""
    cfg = resolve_config(
        "tiny", data_dir=data_dir, groups=["plus"], epochs=3, train_batch_size=8,
        ppo_mini_batch_size=8, save_freq=4, test_freq=10, preset_overrides=[],
    )  # fmt: skip
    (s,) = sizes_of(cfg)
    # 15 steps; checkpoints at 4, 8, 12 and the last; validations before, at 10 and the last.
    assert (s.rows, s.steps, s.checkpoints, s.validations) == (40, 15, 4, 3)
    assert s.val_prompts == 8  # the test split of every group the run trains
    capped = resolve_config(
        "tiny", data_dir=data_dir, groups=["plus"], epochs=3, train_batch_size=8,
        ppo_mini_batch_size=8, save_freq=4, test_freq=10, max_steps=7,
    )  # fmt: skip
    # data.train_max_samples=96 (the preset's) does not cut 40 rows; max_steps cuts the steps.
    (c,) = sizes_of(capped)
    assert (c.steps, c.checkpoints, c.validations) == (7, 2, 2)
    over = resolve_config(
        "tiny", data_dir=data_dir, groups=["plus"], epochs=3, train_batch_size=8,
        ppo_mini_batch_size=8, max_steps=99,
    )  # fmt: skip
    assert sizes_of(over)[0].steps == 15  # never more than the epochs hold
    few = resolve_config(
        "tiny", data_dir=data_dir, groups=["plus"], train_batch_size=8, ppo_mini_batch_size=8,
        overrides=["data.train_max_samples=20", "data.val_max_samples=5"],
    )  # fmt: skip
    (f,) = sizes_of(few)
    assert (f.rows, f.steps, f.val_prompts) == (20, 2, 5)
    # The setting val_max_samples is veRL's data.val_max_samples; an override after `--` wins.
    setting = resolve_config("tiny", data_dir=data_dir, groups=GROUPS2, val_max_samples=6)
    assert sizes_of(setting)[0].val_prompts == 6
    both = resolve_config(
        "tiny", data_dir=data_dir, groups=GROUPS2, val_max_samples=6,
        overrides=["data.val_max_samples=3"],
    )  # fmt: skip
    assert sizes_of(both)[0].val_prompts == 3


def test_without_data_the_generators_defaults_give_the_runs_length(tmp_path: Path) -> None:
    gen = GenConfig()
    cfg = resolve_config("0.5b", data_dir=tmp_path / "none")
    sizes = sizes_of(cfg)
    per_stage = gen.train_size // cfg.train_batch_size * cfg.epochs  # 390 an epoch at 256
    assert [s.steps for s in sizes] == [per_stage] * 12
    assert sizes[0].validations == 1 + -(-per_stage // cfg.test_freq)
    assert sizes[0].val_prompts == 4 * gen.test_size
    big = sizes_of(resolve_config("1.5b", data_dir=tmp_path / "none"))
    assert big[0].steps == gen.train_size // 128 * cfg.epochs


def test_a_finished_stage_keeps_its_exports_and_the_running_one_its_checkpoints(
    tmp_path: Path,
) -> None:
    """Disk from the start of a stage: the running stage's checkpoints at their peak (veRL writes
    the next before deleting the last; a resumed stage still holds the one it resumed from), plus
    every finished stage's exports, plus validation records at their longest."""
    n = 1_000_000
    grpo = resolve_config("0.5b", algo="grpo", data_dir=tmp_path / "none")
    sizes = sizes_of(grpo, n)
    ckpt, export = n * CHECKPOINT_BYTES_PER_PARAM, n * EXPORT_BYTES_PER_PARAM
    records = sizes[0].validations * 4 * GenConfig().test_size * (256 + 1024)
    records *= VALIDATION_BYTES_PER_TOKEN
    assert sizes[0].at_peak == 3 * ckpt + records
    assert sizes[0].kept == export + records
    assert disk_needed(sizes) == 11 * (export + records) + 3 * ckpt + records
    assert disk_needed(sizes, first=11) == 3 * ckpt + records
    ppo = sizes_of(resolve_config("0.5b", data_dir=tmp_path / "none"), n)
    assert ppo[0].at_peak == 2 * 3 * ckpt + records  # actor and critic
    kept = sizes_of(resolve_config("0.5b", algo="grpo", keep_checkpoints=1,
                                   data_dir=tmp_path / "none"), n)  # fmt: skip
    assert kept[0].kept == ckpt + records  # its newest checkpoint holds the exports
    three = sizes_of(resolve_config("0.5b", algo="grpo", keep_checkpoints=3,
                                    data_dir=tmp_path / "none"), n)  # fmt: skip
    assert three[0].at_peak == 4 * ckpt + records  # 3 kept, made room for, + the resumed one
    remedy = sizes_of(resolve_config("0.5b", algo="grpo", between_stages=["redo"],
                                     data_dir=tmp_path / "none"), n)  # fmt: skip
    assert remedy[1].kept - remedy[0].kept == export  # the transformed metrics/initial_*


def test_the_default_runs_pass_the_disk_check_on_a_disk_that_fits(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """1.5b PPO asked for 641 GB before (every finished stage kept a full checkpoint)."""
    cfg = resolve_config("1.5b", data_dir=tmp_path / "none", out=tmp_path / "run")
    stages = plan_stages(cfg)
    need = disk_needed(sizes_of(cfg))
    assert need < 400e9
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda _p: type("U", (), {"free": 400e9}))
    checks.check_disk(cfg, stages, cfg.model, 0)
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda _p: type("U", (), {"free": 100e9}))
    with pytest.raises(TrainerError) as err:
        checks.check_disk(cfg, stages, cfg.model, 0)
    text = str(err.value)
    assert "not enough disk for stage R1_plus and the 11 after it" in text
    assert "--keep-checkpoints 0" not in text and "\n" not in text
    kept = resolve_config("1.5b", keep_checkpoints=1, data_dir=tmp_path / "none", out=tmp_path)
    with pytest.raises(TrainerError, match="pass --keep-checkpoints 0"):
        checks.check_disk(kept, stages, cfg.model, 0)


def test_a_resumed_stage_is_not_asked_for_what_it_holds(
    hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    cfg = resolve_config("tiny", out=tmp_path / "run", model=str(hf_model), groups=["plus"])
    stages = plan_stages(cfg)
    need = disk_needed(sizes_of(cfg, model_params(str(hf_model), APPROX_PARAMS["tiny"])))
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda _p: type("U", (), {"free": need}))
    checks.check_disk(cfg, stages, str(hf_model), 0)
    monkeypatch.setattr(checks.shutil, "disk_usage", lambda _p: type("U", (), {"free": need - 1}))
    with pytest.raises(TrainerError):
        checks.check_disk(cfg, stages, str(hf_model), 0)
    held = cfg.run_dir / stages[0].checkpoint_dir / "global_step_12" / "actor"
    shutil.copytree(hf_model, held)
    checks.check_disk(cfg, stages, str(hf_model), 0)  # the resume point is on disk already


def test_disk_sizes_read_in_human_units() -> None:
    assert checks.human_bytes(2_500_000) == "2.5 MB"
    assert checks.human_bytes(30e9) == "30.0 GB"
    assert checks.human_bytes(12_345) == "12.3 kB"
    assert checks.human_bytes(10) == "10 B"


def test_the_model_is_counted_by_parameters_not_bytes(tmp_path: Path) -> None:
    """A stage-2 start model is an fp32 export: counted by its parameters, it is not twice the
    base model."""
    import torch
    from safetensors.torch import save_file

    weights = {"a": torch.zeros(1000, 10), "b": torch.zeros(500)}
    for name, dtype in (("bf16", torch.bfloat16), ("fp32", torch.float32)):
        (tmp_path / name).mkdir()
        save_file(
            {k: v.to(dtype) for k, v in weights.items()}, tmp_path / name / "model.safetensors"
        )
        assert model_params(str(tmp_path / name), 0) == 10_500
    assert model_params(str(tmp_path / "none"), 7) == 7
