"""The stage engine against a stand-in for veRL 0.9.1 (tests/fake_verl.py): only the GPU process
is replaced; plan, chaining, run.json, links, resume, refusal, failure and pruning are real."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cl_trainer import checkpoints
from cl_trainer.checkpoints import latest_export
from cl_trainer.checks import check_model
from cl_trainer.config import TrainerConfig, resolve_config
from cl_trainer.engine import Engine, RunLock, link_model_dir
from cl_trainer.errors import TrainerError, UsageError

from .conftest import Recorder

GROUPS2 = ["plus", "plus_minus"]


def make_cfg(data_dir: Path, model: Path, out: Path, **kw: object) -> TrainerConfig:
    """2 groups x 2 rounds; 40 rows / batch 8 = 5 steps per stage, checkpoints at 2, 4, 5."""
    opts: dict[str, object] = dict(
        algo="ppo",
        rounds=2,
        epochs=1,
        groups=GROUPS2,
        data_dir=data_dir,
        out=out,
        model=str(model),
        train_batch_size=8,
        ppo_mini_batch_size=4,
        save_freq=2,
        test_freq=100,
    )
    opts.update(kw)
    return resolve_config("tiny", **opts)


def run_engine(
    cfg: TrainerConfig,
    backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
    calls: Path,
    fail: str = "",
    force: bool = False,
) -> int:
    monkeypatch.setenv("FAKE_VERL_CALLS", str(calls))
    monkeypatch.setenv("FAKE_VERL_FAIL", fail)
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return Engine(cfg, Recorder(), force=force, backend_cmd=backend).run()


def read_calls(path: Path) -> list[dict]:
    return [json.loads(line) for line in path.read_text().splitlines()] if path.exists() else []


def manifest(run: Path) -> dict:
    return json.loads((run / "run.json").read_text())


def test_full_run_chains_models_and_writes_everything(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    cfg = make_cfg(data_dir, hf_model, run, critic_init="chain")
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0

    m = manifest(run)
    assert m["schema_version"] == 1 and m["name"] == "ContinualCountdown_tiny"
    assert m["backend"] == "local" and m["groups"] == GROUPS2
    assert m["config"]["algo"] == "ppo" and m["base_model"] == str(hf_model)
    assert set(m["versions"]) == {"cl-trainer", "verl", "torch", "transformers"}
    names = [s["name"] for s in m["stages"]]
    assert names == ["R1_plus", "R1_plus_minus", "R2_plus", "R2_plus_minus"]
    for s in m["stages"]:
        assert s["status"] == "done" and s["exit_code"] == 0 and s["global_steps"] == 5
        assert s["duration_s"] >= 0 and s["started_at"] and s["finished_at"]
        assert s["log"] == f"logs/ContinualCountdown_{s['name']}.log"
        log = (run / s["log"]).read_text()
        assert "step:0 - val-core/countdown_plus/acc/mean@1:" in log and "step:5 -" in log

    # Chaining: each stage starts from the previous stage's final model (actor and critic).
    c = read_calls(calls)
    assert [x["experiment"] for x in c] == [f"ContinualCountdown_{n}" for n in names]
    assert c[0]["model"] == c[0]["critic"] == str(hf_model)
    for prev, cur in zip(m["stages"], c[1:], strict=False):
        assert cur["model"] == str(run / prev["final_model"])
        assert cur["critic"] == str(run / "critics" / prev["final_model"].split("/")[1])
    assert all(x["wandb_group"] == "ContinualCountdown_tiny-run" for x in c)
    # Stages run inside the run directory, Hydra's outputs under hydra/<stage> (not in a cwd
    # that may be read-only, as /app is in the trainer image).
    assert all(x["cwd"] == str(run) for x in c)
    for x, name in zip(c, names, strict=True):
        assert f"hydra.run.dir={run / 'hydra' / name}" in x["argv"]
    assert all(x["wandb_mode"] == "offline" for x in c)

    # Final models: veRL's last HF export, hard-linked (same inode), tokenizer included.
    final = run / "metrics" / "final_2_plus"
    assert json.loads((final / "config.json").read_text())["_fake_step"] == 5
    assert json.loads((final / "config.json").read_text())["_fake_started_from"] == str(
        run / "metrics" / "final_1_plus_minus"
    )
    assert (final / "tokenizer.json").is_file() and (final / "tokenizer_config.json").is_file()
    # Initial models are links of the starting model, never a second copy of the weights.
    init = run / "metrics" / "initial_2_plus" / "model.safetensors"
    prev_final = run / "metrics" / "final_1_plus_minus" / "model.safetensors"
    assert os.stat(init).st_ino == os.stat(prev_final).st_ino
    base_init = run / "metrics" / "initial_1_plus" / "model.safetensors"
    assert base_init.read_bytes() == (hf_model / "model.safetensors").read_bytes()

    # Pruning: only the last checkpoint (keep-checkpoints 1) survives; it stays resumable.
    ckpt = run / "checkpoints" / "R1_plus"
    assert sorted(p.name for p in ckpt.glob("global_step_*")) == ["global_step_5"]
    assert latest_export(ckpt) == 5
    assert (final / "model.safetensors").is_file()

    # Training samples: each stage's per-step dumps compacted into one file, the dumps gone.
    for s in m["stages"]:
        table = pq.read_table(run / "rollouts" / f"{s['name']}.parquet")
        assert table["step"].to_pylist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        assert table["correct"].to_pylist() == [True, False] * 5
    assert sorted(p.name for p in (run / "rollouts").iterdir()) == [
        f"{n}.parquet" for n in sorted(names)
    ]

    # Running the same command again is a no-op.
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0
    assert len(read_calls(calls)) == 4


def test_failure_then_resume_mid_stage(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    cfg = make_cfg(data_dir, hf_model, run, algo="grpo", rounds=1, keep_checkpoints=2)
    code = run_engine(
        cfg, fake_backend, monkeypatch, calls, fail="ContinualCountdown_R1_plus_minus:3"
    )
    assert code == 1
    m = manifest(run)
    done, failed = m["stages"]
    assert done["status"] == "done"
    assert failed["status"] == "failed" and failed["exit_code"] == 1
    assert "CUDA out of memory" in failed["error_tail"]
    assert failed["error_tail"].count("\n") <= 41
    assert not (run / "metrics" / "final_1_plus_minus").exists()
    done_before = (run / "metrics" / "final_1_plus" / "config.json").read_text()

    # Resume: the done stage is skipped, the failed one continues from its step-2 checkpoint.
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0
    c = read_calls(calls)
    assert [x["experiment"] for x in c] == [
        "ContinualCountdown_R1_plus",
        "ContinualCountdown_R1_plus_minus",
        "ContinualCountdown_R1_plus_minus",
    ]
    log = (run / "logs" / "ContinualCountdown_R1_plus_minus.log").read_text()
    assert "CUDA out of memory" in log and "setting global step to 2" in log  # appended
    stage = manifest(run)["stages"][1]
    assert stage["status"] == "done" and stage["error_tail"] is None and stage["global_steps"] == 5
    assert (run / "metrics" / "final_1_plus" / "config.json").read_text() == done_before
    ckpt = run / "checkpoints" / "R1_plus_minus"
    assert sorted(p.name for p in ckpt.glob("global_step_*")) == ["global_step_4", "global_step_5"]


def test_resume_after_interruption_before_and_after_a_stage(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    cfg = make_cfg(data_dir, hf_model, run, algo="grpo", rounds=1)
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0
    m = manifest(run)
    # "After a stage": the process finished but the engine died before recording it.
    m["stages"][1].update(status="running", finished_at=None)
    # ... and a stage killed with the engine (status running, no checkpoint yet) is "before".
    (run / "run.json").write_text(json.dumps(m))
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0
    c = read_calls(calls)
    assert [x["experiment"] for x in c][2:] == ["ContinualCountdown_R1_plus_minus"]
    assert all(s["status"] == "done" for s in manifest(run)["stages"])
    # veRL (resume_mode=auto) found the finished checkpoint: it validates again, trains no step.
    log = (run / "logs" / "ContinualCountdown_R1_plus_minus.log").read_text()
    trained = [ln for ln in log.splitlines() if "step:5 -" in ln and "pg_loss" in ln]
    assert len(trained) == 1 and "setting global step to 5" in log


def test_interruption_before_any_stage_ran(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    cfg = make_cfg(data_dir, hf_model, run, algo="grpo", rounds=1, groups=["plus"])
    assert (
        run_engine(cfg, [*fake_backend[:1], "-c", "import sys; sys.exit(137)"], monkeypatch, calls)
        == 137
    )
    assert manifest(run)["stages"][0]["status"] == "failed"
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0
    assert manifest(run)["stages"][0]["status"] == "done"


def test_config_change_is_refused_unless_forced(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    cfg = make_cfg(data_dir, hf_model, run, algo="grpo", rounds=1, groups=["plus"])
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0
    before = (run / "run.json").read_text()
    changed = make_cfg(data_dir, hf_model, run, algo="grpo", rounds=1, groups=["plus"], epochs=2)
    with pytest.raises(TrainerError, match=r"epochs: 1 -> 2.*--force"):
        run_engine(changed, fake_backend, monkeypatch, calls)
    assert (run / "run.json").read_text() == before
    # Keys that do not change the training (keep-checkpoints, W&B) are not a config change.
    same = make_cfg(
        data_dir,
        hf_model,
        run,
        algo="grpo",
        rounds=1,
        groups=["plus"],
        keep_checkpoints=3,
        wandb=False,
    )
    assert run_engine(same, fake_backend, monkeypatch, calls) == 0
    # --force continues with the new config; finished stages stay finished.
    assert run_engine(changed, fake_backend, monkeypatch, calls, force=True) == 0
    assert manifest(run)["config"]["epochs"] == 2
    assert len(read_calls(calls)) == 1


def test_missing_checkpoint_marks_stage_failed(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    cfg = make_cfg(
        data_dir,
        hf_model,
        run,
        algo="grpo",
        rounds=1,
        groups=["plus"],
        overrides=["trainer.save_freq=-1"],
    )
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 1
    stage = manifest(run)["stages"][0]
    assert stage["status"] == "failed" and "save_freq" in stage["error_tail"]


def test_link_model_dir_falls_back_when_hard_links_fail(
    hf_model: Path, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    def no_link(*_a: object) -> None:
        raise OSError(18, "Invalid cross-device link")

    monkeypatch.setattr(os, "link", no_link)
    assert link_model_dir(hf_model, tmp_path / "initial", fallback="symlink") == "symlink"
    assert (tmp_path / "initial").resolve() == hf_model.resolve()
    assert link_model_dir(hf_model, tmp_path / "final", fallback="copy") == "copy"
    assert not (tmp_path / "final").is_symlink()
    assert (tmp_path / "final" / "config.json").read_text() == (
        hf_model / "config.json"
    ).read_text()


def test_a_second_engine_on_a_held_run_dir_is_refused_and_a_stale_lock_is_not(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    cfg = make_cfg(data_dir, hf_model, run, algo="grpo", rounds=1, groups=["plus"])
    with RunLock(run), pytest.raises(TrainerError, match=rf"pid {os.getpid()} on \S+ since"):
        run_engine(cfg, fake_backend, monkeypatch, calls)
    assert read_calls(calls) == [] and not (run / "run.json").exists()
    # The lock file of a dead holder stays behind; it must not block.
    (run / ".cl-trainer.lock").write_text('{"pid": 999999, "host": "gone", "since": "then"}\n')
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0


def test_run_json_and_the_tracker_follow_the_umask(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """Readable by the other users of a shared filesystem, as any open() would make them."""
    from cl_trainer.local.checkpoint import save

    old = os.umask(0o022)
    try:
        run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
        cfg = make_cfg(data_dir, hf_model, run, algo="grpo", rounds=1, groups=["plus"])
        assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0
        assert stat.S_IMODE((run / "run.json").stat().st_mode) == 0o644

        import torch
        from transformers import AutoTokenizer, Qwen2Config, Qwen2ForCausalLM

        model = Qwen2ForCausalLM(
            Qwen2Config(
                vocab_size=32,
                hidden_size=8,
                intermediate_size=8,
                num_hidden_layers=1,
                num_attention_heads=2,
                num_key_value_heads=1,
            )
        )
        optim = torch.optim.AdamW(model.parameters())
        root = tmp_path / "ckpt"
        save(
            root,
            1,
            model,
            AutoTokenizer.from_pretrained(hf_model),
            optim={"optimizer": optim.state_dict()},
            extra={},
            data={},
        )
        tracker = root / "latest_checkpointed_iteration.txt"
        assert stat.S_IMODE(tracker.stat().st_mode) == 0o644
        assert stat.S_IMODE((root / "global_step_1").stat().st_mode) == 0o755
    finally:
        os.umask(old)


def test_stale_temps_of_a_killed_engine_are_removed(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    cfg = make_cfg(data_dir, hf_model, run, algo="grpo", rounds=1, groups=["plus"])
    ckpt = run / "checkpoints" / "R1_plus"
    stale = [run / ".run.json.x1.tmp", ckpt / ".global_step_3.ab.tmp" / "actor"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0
    assert not (run / ".run.json.x1.tmp").exists()
    assert not (ckpt / ".global_step_3.ab.tmp").exists()


def test_ppo_critic_starts_from_each_stage_actor_by_default(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """As the original experiments: a fresh value head on the stage's starting policy."""
    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    cfg = make_cfg(data_dir, hf_model, run, rounds=1)
    assert cfg.critic_init == "actor"
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0
    c = read_calls(calls)
    assert [x["critic"] for x in c] == [x["model"] for x in c]
    assert c[1]["model"] == str(run / "metrics" / "final_1_plus")


def test_the_critic_export_is_labelled_a_value_model(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """veRL saves the critic under the actor's ``*ForCausalLM`` config; the export says what it
    holds (a value head), the actor's export is untouched, and preflight refuses it as a model."""
    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    cfg = make_cfg(data_dir, hf_model, run, rounds=1, groups=["plus"])
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0
    critic, actor = run / "critics" / "final_1_plus", run / "metrics" / "final_1_plus"
    kept = run / "checkpoints" / "R1_plus" / "global_step_5" / "critic" / "huggingface"
    for path in (critic, kept):
        config = json.loads((path / "config.json").read_text())
        assert config["architectures"] == ["Qwen2ForTokenClassification"], path
        assert config["id2label"] == {"0": "LABEL_0"} and config["_fake_role"] == "critic"
        assert checkpoints.is_value_model(path)
    assert checkpoints.architecture(actor) == "Qwen2ForCausalLM"
    assert not checkpoints.is_value_model(actor)
    with pytest.raises(UsageError, match="critic"):
        check_model(make_cfg(data_dir, critic, tmp_path / "other", rounds=1))


def test_an_export_without_weights_is_not_a_final_model(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """veRL writes config.json before the weights: only the weights file makes it complete."""
    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    cfg = make_cfg(data_dir, hf_model, run, algo="grpo", rounds=1, groups=["plus"])
    monkeypatch.setenv("FAKE_VERL_NO_WEIGHTS", "1")
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 1
    stage = manifest(run)["stages"][0]
    assert (
        stage["status"] == "failed" and "no global_step_N/actor/huggingface" in stage["error_tail"]
    )
    assert not (run / "metrics" / "final_1_plus").exists()
