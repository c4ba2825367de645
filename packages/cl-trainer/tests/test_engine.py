"""The stage engine against a stand-in for veRL 0.9.1 (tests/fake_verl.py): only the GPU process
is replaced; plan, chaining, run.json, links, resume, refusal, failure and pruning are real."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from cl_trainer.checkpoints import has_weights
from cl_trainer.config import TrainerConfig, resolve_config
from cl_trainer.engine import Engine, RunLock, link_model_dir
from cl_trainer.errors import TrainerError
from cl_trainer.sizing import peak_checkpoints, run_size
from cl_trainer.stages import plan_stages

from .conftest import Recorder

GROUPS2 = ["plus", "plus_minus"]
RECORDED: list[Recorder] = []
"""The reporter of every engine run_engine started, newest last."""


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
    reporter = Recorder()
    RECORDED.append(reporter)
    return Engine(cfg, reporter, force=force, backend_cmd=backend).run()


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

    # Pruning: a done stage keeps its exports only (keep-checkpoints 0), actor and critic.
    for s in m["stages"]:
        assert list((run / "checkpoints" / s["name"]).iterdir()) == []
        assert has_weights(run / s["final_model"])
        assert has_weights(run / "critics" / s["final_model"].split("/")[1])

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
    kept = make_cfg(data_dir, hf_model, run, algo="grpo", rounds=1, keep_checkpoints=1)
    assert run_engine(kept, fake_backend, monkeypatch, calls) == 0
    m = manifest(run)
    # "After a stage": the process finished but the engine died before recording it (and so
    # before pruning: a stage is recorded done first).
    m["stages"][1].update(status="running", finished_at=None)
    cfg = make_cfg(data_dir, hf_model, run, algo="grpo", rounds=1)
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
    # Now kept to 0: the done stage's checkpoints go at the start, the resumed one's at its end.
    assert not list((run / "checkpoints").glob("*/global_step_*"))
    assert has_weights(run / "metrics" / "final_1_plus")


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


def test_a_resumed_stage_holds_what_the_disk_check_counts(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """veRL rotates out only checkpoints written by the same process: before a resume the engine
    keeps just the tracker's step, so the stage holds one more checkpoint than a fresh one, as
    ``peak_checkpoints`` counts, however often it is resumed."""
    run, calls, held = tmp_path / "run", tmp_path / "calls.jsonl", tmp_path / "held"
    monkeypatch.setenv("FAKE_VERL_HELD", str(held))
    cfg = make_cfg(
        data_dir, hf_model, run, algo="grpo", rounds=1, groups=["plus"], epochs=3, save_freq=2
    )  # 15 steps, checkpoints at 2, 4, ..., 14 and 15
    assert (
        run_engine(cfg, fake_backend, monkeypatch, calls, fail="ContinualCountdown_R1_plus:5") == 1
    )
    ckpt = run / "checkpoints" / "R1_plus"
    assert sorted(p.name for p in ckpt.glob("global_step_*")) == ["global_step_2", "global_step_4"]
    half = ckpt / "global_step_6" / "actor"  # a save cut short: written before the tracker
    half.mkdir(parents=True)
    assert (
        run_engine(cfg, fake_backend, monkeypatch, calls, fail="ContinualCountdown_R1_plus:9") == 1
    )
    assert "removed the checkpoints of step 2, 6" in " ".join(RECORDED[-1].notes)
    assert run_engine(cfg, fake_backend, monkeypatch, calls) == 0
    assert len(read_calls(calls)) == 3
    (size,) = run_size(cfg, plan_stages(cfg))
    held_at_saves = [int(n) for n in held.read_text().split()]
    assert max(held_at_saves) == peak_checkpoints(cfg, size.checkpoints) == 3
    assert list(ckpt.iterdir()) == []  # done: the exports are all that is left


def test_done_stages_are_pruned_only_with_complete_exports(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    kept = make_cfg(data_dir, hf_model, run, rounds=1, keep_checkpoints=2)
    assert run_engine(kept, fake_backend, monkeypatch, calls) == 0

    def steps(name: str) -> list[str]:
        return sorted(p.name for p in (run / "checkpoints" / name).glob("global_step_*"))

    assert steps("R1_plus") == ["global_step_4", "global_step_5"]
    (run / "critics" / "final_1_plus_minus" / "model.safetensors").unlink()
    # The same run with the default: done stages lose their checkpoints when nothing is lost.
    default = make_cfg(data_dir, hf_model, run, rounds=1)
    assert run_engine(default, fake_backend, monkeypatch, calls) == 0
    assert steps("R1_plus") == [] and steps("R1_plus_minus") == ["global_step_4", "global_step_5"]
    notes = " ".join(RECORDED[-1].notes)
    assert "[R1_plus] removed the checkpoints of step 4, 5" in notes
    assert (
        "[R1_plus_minus] keeping its checkpoints" in notes and "critics/final_1_plus_minus" in notes
    )


def test_the_wandb_key_travels_in_no_ray_job_config(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """On a Ray cluster every actor inherits its node's ``ray start`` environment, which carries
    the key; a job's runtime environment would show it in Ray's dashboard and state API."""
    from cl_trainer import tracking

    run, calls = tmp_path / "run", tmp_path / "calls.jsonl"
    cfg = make_cfg(
        data_dir, hf_model, run, algo="grpo", rounds=1, groups=["plus"], ray_address="10.0.0.1:6379"
    )
    monkeypatch.setattr(tracking, "_reachable", lambda: True)
    monkeypatch.setenv("FAKE_VERL_CALLS", str(calls))
    monkeypatch.setenv("WANDB_API_KEY", "key-123-secret")
    monkeypatch.setenv("WANDB_MODE", "online")
    assert Engine(cfg, Recorder(), backend_cmd=fake_backend).run() == 0
    (call,) = read_calls(calls)
    assert call["wandb_mode"] == "online"
    assert "key-123-secret" not in json.dumps([call["argv"], call["ray_job_config"]])
