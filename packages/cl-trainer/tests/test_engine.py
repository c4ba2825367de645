"""The stage engine against a stand-in for veRL 0.9.1 (tests/fake_verl.py): only the GPU process
is replaced; plan, chaining, run.json, links, resume, refusal, failure and pruning are real."""

from __future__ import annotations

import contextlib
import json
import os
import signal
import stat
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import pyarrow.parquet as pq
import pytest

from cl_trainer import checkpoints
from cl_trainer.checkpoints import has_weights
from cl_trainer.checks import check_model
from cl_trainer.config import TrainerConfig, resolve_config
from cl_trainer.engine import STOP_GRACE_S, Engine, RunLock, link_model_dir, run_teed
from cl_trainer.errors import TrainerError, UsageError
from cl_trainer.sizing import peak_checkpoints, run_size
from cl_trainer.stages import plan_stages

from .conftest import Recorder

GROUPS2 = ["plus", "plus_minus"]


@dataclass
class EngineCase:
    """One engine test's world: the shared data set and model, a run directory, the fake veRL's
    record of every stage it ran (one JSON line per call), and every engine's reporter."""

    data_dir: Path
    model: Path
    run: Path
    calls: Path
    backend: list[str]
    monkeypatch: pytest.MonkeyPatch
    reporters: list[Recorder] = field(default_factory=list)
    """The reporter of every engine run, newest last."""

    def cfg(self, **kw: object) -> TrainerConfig:
        """2 groups x 2 rounds; 40 rows / batch 8 = 5 steps per stage, checkpoints at 2, 4, 5."""
        opts: dict[str, object] = dict(
            algo="ppo",
            rounds=2,
            epochs=1,
            groups=GROUPS2,
            data_dir=self.data_dir,
            out=self.run,
            model=str(self.model),
            train_batch_size=8,
            ppo_mini_batch_size=4,
            save_freq=2,
            test_freq=100,
        )
        return resolve_config("tiny", **(opts | kw))

    def engine(
        self,
        cfg: TrainerConfig,
        fail: str = "",
        force: bool = False,
        backend: list[str] | None = None,
    ) -> int:
        """Run the engine; ``fail`` (``experiment:step``) makes the fake veRL crash there."""
        self.monkeypatch.setenv("FAKE_VERL_FAIL", fail)
        self.reporters.append(Recorder())
        backend_cmd = backend or self.backend
        return Engine(cfg, self.reporters[-1], force=force, backend_cmd=backend_cmd).run()

    def calls_made(self) -> list[dict]:
        lines = self.calls.read_text().splitlines() if self.calls.exists() else []
        return [json.loads(line) for line in lines]

    def notes(self) -> str:
        """What the newest engine told its user besides the stages' output, as one string."""
        return " ".join(self.reporters[-1].notes)

    def record(self) -> dict:
        """run.json as the file says (not as the typed reader would fill it in)."""
        return json.loads((self.run / "run.json").read_text())


@pytest.fixture
def case(
    data_dir: Path,
    hf_model: Path,
    tmp_path: Path,
    fake_backend: list[str],
    monkeypatch: pytest.MonkeyPatch,
) -> EngineCase:
    calls = tmp_path / "calls.jsonl"
    monkeypatch.setenv("FAKE_VERL_CALLS", str(calls))
    monkeypatch.delenv("WANDB_API_KEY", raising=False)
    monkeypatch.delenv("WANDB_MODE", raising=False)
    return EngineCase(data_dir, hf_model, tmp_path / "run", calls, fake_backend, monkeypatch)


def test_full_run_chains_models_and_writes_everything(case: EngineCase) -> None:
    run = case.run
    cfg = case.cfg(critic_init="chain")
    assert case.engine(cfg) == 0

    m = case.record()
    assert m["schema_version"] == 1 and m["name"] == "ContinualCountdown_tiny"
    assert m["backend"] == "local" and m["groups"] == GROUPS2
    assert m["config"]["algo"] == "ppo" and m["base_model"] == str(case.model)
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
    c = case.calls_made()
    assert [x["experiment"] for x in c] == [f"ContinualCountdown_{n}" for n in names]
    assert c[0]["model"] == c[0]["critic"] == str(case.model)
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
    assert base_init.read_bytes() == (case.model / "model.safetensors").read_bytes()

    # Pruning: a done stage keeps its exports only (keep-checkpoints 0), actor and critic.
    for s in m["stages"]:
        assert list((run / "checkpoints" / s["name"]).iterdir()) == []
        assert has_weights(run / s["final_model"])
        assert has_weights(run / "critics" / s["final_model"].split("/")[1])

    # Training samples: each stage's per-step dumps compacted into one file, the dumps gone.
    for s in m["stages"]:
        table = pq.read_table(run / "rollouts" / f"{s['name']}.parquet")
        assert table["step"].to_pylist() == [1, 1, 2, 2, 3, 3, 4, 4, 5, 5]
        assert table["correct"].to_pylist() == [True, False] * 5
    assert sorted(p.name for p in (run / "rollouts").iterdir()) == [
        f"{n}.parquet" for n in sorted(names)
    ]

    # Running the same command again is a no-op.
    assert case.engine(cfg) == 0
    assert len(case.calls_made()) == 4


def test_failure_then_resume_mid_stage(case: EngineCase) -> None:
    run = case.run
    cfg = case.cfg(algo="grpo", rounds=1, keep_checkpoints=2)
    assert case.engine(cfg, fail="ContinualCountdown_R1_plus_minus:3") == 1
    m = case.record()
    done, failed = m["stages"]
    assert done["status"] == "done"
    assert failed["status"] == "failed" and failed["exit_code"] == 1
    assert "CUDA out of memory" in failed["error_tail"]
    assert failed["error_tail"].count("\n") <= 41
    assert not (run / "metrics" / "final_1_plus_minus").exists()
    done_before = (run / "metrics" / "final_1_plus" / "config.json").read_text()

    # Resume: the done stage is skipped, the failed one continues from its step-2 checkpoint.
    assert case.engine(cfg) == 0
    c = case.calls_made()
    assert [x["experiment"] for x in c] == [
        "ContinualCountdown_R1_plus",
        "ContinualCountdown_R1_plus_minus",
        "ContinualCountdown_R1_plus_minus",
    ]
    log = (run / "logs" / "ContinualCountdown_R1_plus_minus.log").read_text()
    assert "CUDA out of memory" in log and "setting global step to 2" in log  # appended
    stage = case.record()["stages"][1]
    assert stage["status"] == "done" and stage["error_tail"] is None and stage["global_steps"] == 5
    assert (run / "metrics" / "final_1_plus" / "config.json").read_text() == done_before
    ckpt = run / "checkpoints" / "R1_plus_minus"
    assert sorted(p.name for p in ckpt.glob("global_step_*")) == ["global_step_4", "global_step_5"]


def test_resume_after_interruption_before_and_after_a_stage(case: EngineCase) -> None:
    run = case.run
    kept = case.cfg(algo="grpo", rounds=1, keep_checkpoints=1)
    assert case.engine(kept) == 0
    m = case.record()
    # "After a stage": the process finished but the engine died before recording it (and so
    # before pruning: a stage is recorded done first).
    m["stages"][1].update(status="running", finished_at=None)
    cfg = case.cfg(algo="grpo", rounds=1)
    # ... and a stage killed with the engine (status running, no checkpoint yet) is "before".
    (run / "run.json").write_text(json.dumps(m))
    assert case.engine(cfg) == 0
    c = case.calls_made()
    assert [x["experiment"] for x in c][2:] == ["ContinualCountdown_R1_plus_minus"]
    assert all(s["status"] == "done" for s in case.record()["stages"])
    # veRL (resume_mode=auto) found the finished checkpoint: it validates again, trains no step.
    log = (run / "logs" / "ContinualCountdown_R1_plus_minus.log").read_text()
    trained = [ln for ln in log.splitlines() if "step:5 -" in ln and "pg_loss" in ln]
    assert len(trained) == 1 and "setting global step to 5" in log
    # Now kept to 0: the done stage's checkpoints go at the start, the resumed one's at its end.
    assert not list((run / "checkpoints").glob("*/global_step_*"))
    assert has_weights(run / "metrics" / "final_1_plus")


def test_interruption_before_any_stage_ran(case: EngineCase) -> None:
    cfg = case.cfg(algo="grpo", rounds=1, groups=["plus"])
    killed = [sys.executable, "-c", "import sys; sys.exit(137)"]
    assert case.engine(cfg, backend=killed) == 137
    assert case.record()["stages"][0]["status"] == "failed"
    assert case.engine(cfg) == 0
    assert case.record()["stages"][0]["status"] == "done"


def test_config_change_is_refused_unless_forced(case: EngineCase) -> None:
    run = case.run
    cfg = case.cfg(algo="grpo", rounds=1, groups=["plus"])
    assert case.engine(cfg) == 0
    before = (run / "run.json").read_text()
    changed = case.cfg(algo="grpo", rounds=1, groups=["plus"], epochs=2)
    with pytest.raises(TrainerError, match=r"epochs: 1 -> 2.*--force"):
        case.engine(changed)
    assert (run / "run.json").read_text() == before
    # Keys that do not change the training (keep-checkpoints, W&B) are not a config change.
    same = case.cfg(
        algo="grpo",
        rounds=1,
        groups=["plus"],
        keep_checkpoints=3,
        wandb=False,
    )
    assert case.engine(same) == 0
    # --force continues with the new config; finished stages stay finished.
    assert case.engine(changed, force=True) == 0
    assert case.record()["config"]["epochs"] == 2
    assert len(case.calls_made()) == 1


def test_missing_checkpoint_marks_stage_failed(case: EngineCase) -> None:
    cfg = case.cfg(
        algo="grpo",
        rounds=1,
        groups=["plus"],
        overrides=["trainer.save_freq=-1"],
    )
    assert case.engine(cfg) == 1
    stage = case.record()["stages"][0]
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
    case: EngineCase,
) -> None:
    run = case.run
    cfg = case.cfg(algo="grpo", rounds=1, groups=["plus"])
    with RunLock(run), pytest.raises(TrainerError, match=rf"pid {os.getpid()} on \S+ since"):
        case.engine(cfg)
    assert case.calls_made() == [] and not (run / "run.json").exists()
    # The lock file of a dead holder stays behind; it must not block.
    (run / ".cl-trainer.lock").write_text('{"pid": 999999, "host": "gone", "since": "then"}\n')
    assert case.engine(cfg) == 0


def test_run_json_and_the_tracker_follow_the_umask(case: EngineCase) -> None:
    """Readable by the other users of a shared filesystem, as any open() would make them."""
    from cl_trainer.local.checkpoint import save

    old = os.umask(0o022)
    try:
        run = case.run
        cfg = case.cfg(algo="grpo", rounds=1, groups=["plus"])
        assert case.engine(cfg) == 0
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
        root = case.run.parent / "ckpt"
        save(
            root,
            1,
            model,
            AutoTokenizer.from_pretrained(case.model),
            optim={"optimizer": optim.state_dict()},
            extra={},
            data={},
        )
        tracker = root / "latest_checkpointed_iteration.txt"
        assert stat.S_IMODE(tracker.stat().st_mode) == 0o644
        assert stat.S_IMODE((root / "global_step_1").stat().st_mode) == 0o755
    finally:
        os.umask(old)


def test_stale_temps_of_a_killed_engine_are_removed(case: EngineCase) -> None:
    run = case.run
    cfg = case.cfg(algo="grpo", rounds=1, groups=["plus"])
    ckpt = run / "checkpoints" / "R1_plus"
    stale = [run / ".run.json.x1.tmp", ckpt / ".global_step_3.ab.tmp" / "actor"]
    for path in stale:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text("half")
    assert case.engine(cfg) == 0
    assert not (run / ".run.json.x1.tmp").exists()
    assert not (ckpt / ".global_step_3.ab.tmp").exists()


def test_ppo_critic_starts_from_each_stage_actor_by_default(case: EngineCase) -> None:
    """As the original experiments: a fresh value head on the stage's starting policy."""
    run = case.run
    cfg = case.cfg(rounds=1)
    assert cfg.critic_init == "actor"
    assert case.engine(cfg) == 0
    c = case.calls_made()
    assert [x["critic"] for x in c] == [x["model"] for x in c]
    assert c[1]["model"] == str(run / "metrics" / "final_1_plus")


def test_the_critic_export_is_labelled_a_value_model(case: EngineCase) -> None:
    """veRL saves the critic under the actor's ``*ForCausalLM`` config; the export says what it
    holds (a value head), the actor's export is untouched, and preflight refuses it as a model."""
    run = case.run
    assert case.engine(case.cfg(rounds=1, groups=["plus"], keep_checkpoints=1)) == 0
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
        check_model(case.cfg(model=str(critic), out=case.run.parent / "other"))


def test_an_export_without_weights_is_not_a_final_model(case: EngineCase) -> None:
    """veRL writes config.json before the weights: only the weights file makes it complete."""
    run = case.run
    cfg = case.cfg(algo="grpo", rounds=1, groups=["plus"])
    case.monkeypatch.setenv("FAKE_VERL_NO_WEIGHTS", "1")
    assert case.engine(cfg) == 1
    stage = case.record()["stages"][0]
    assert (
        stage["status"] == "failed" and "no global_step_N/actor/huggingface" in stage["error_tail"]
    )
    assert not (run / "metrics" / "final_1_plus").exists()


def test_a_remedy_on_data_rewrites_each_later_stage_training_file(case: EngineCase) -> None:
    """Replay through the engine: the first stage trains on its own file, every later one on a
    mix of its own and the earlier groups' puzzles, recorded with what it drew from."""
    import pyarrow.parquet as pq

    cfg = case.cfg(algo="grpo", between_stages=["replay:fraction=0.5"])
    assert case.engine(cfg) == 0
    trained = [
        next(a.split("=", 1)[1] for a in c["argv"] if a.startswith("data.train_files="))
        for c in case.calls_made()
    ]
    assert trained[0] == str(case.data_dir / "plus" / "train.parquet")
    stages = case.record()["stages"]
    assert stages[0]["remedies"] == []
    for stage, path in zip(stages[1:], trained[1:], strict=True):
        assert path == str(case.run / "replay" / stage["name"] / "train.parquet")
        (rec,) = stage["remedies"]
        assert rec["name"] == "replay" and rec["params"] == {"fraction": 0.5}
        assert rec["changed"]["rows"] == 40 and rec["changed"]["replayed"] == 20
        groups = [r["group"] for r in pq.read_table(path).column("extra_info").to_pylist()]
        assert groups.count(stage["group"]) == 20 and set(groups) == set(GROUPS2)
    assert stages[1]["remedies"][0]["changed"]["from"] == ["plus"]
    assert stages[2]["remedies"][0]["changed"]["from"] == ["plus_minus"]  # not its own group


def test_a_newly_declared_remedy_on_data_needs_no_engine_change(case: EngineCase) -> None:
    from cl_trainer.remedies import REMEDIES, Param, register_remedy, replay

    @register_remedy("replay-all", acts_on="data", params={"share": Param(0.75, low=0, high=1)})
    def replay_all(params, inputs):
        return replay({"fraction": params["share"]}, inputs)

    try:
        cfg = case.cfg(algo="grpo", rounds=1, between_stages=["replay-all"])
        assert case.engine(cfg) == 0
    finally:
        del REMEDIES["replay-all"]
    (rec,) = case.record()["stages"][1]["remedies"]
    assert rec["name"] == "replay-all" and rec["params"] == {"share": 0.75}
    assert rec["changed"] == {"rows": 40, "replayed": 30, "from": ["plus"]}
    assert case.record()["config"]["between_stages"] == ["replay-all:share=0.75"]


def test_a_joint_curriculum_mixes_every_group_into_every_stage(case: EngineCase) -> None:
    """The joint baseline: the sequential stages, names and steps, each stage on an equal mixture
    of both groups; over a round every group's puzzles are each trained on once, as sequentially."""
    import pyarrow.parquet as pq

    sequential = case.cfg(algo="grpo")
    joint = case.cfg(algo="grpo", curriculum="joint", out=case.run.parent / "joint")
    for cfg in (sequential, joint):
        assert case.engine(cfg) == 0
    calls = case.calls_made()
    seq, mixed = calls[:4], calls[4:]
    rec = json.loads((case.run.parent / "joint" / "run.json").read_text())
    assert rec["curriculum"] == "joint" and case.record()["curriculum"] == "sequential"
    assert [s["name"] for s in rec["stages"]] == [s["name"] for s in case.record()["stages"]]
    seen: dict[int, list[tuple]] = {1: [], 2: []}
    for stage, call in zip(rec["stages"], mixed, strict=True):
        path = next(a.split("=", 1)[1] for a in call["argv"] if a.startswith("data.train_files="))
        assert path == str(case.run.parent / "joint" / "joint" / stage["name"] / "train.parquet")
        rows = pq.read_table(path).to_pylist()
        groups = [r["extra_info"]["group"] for r in rows]
        assert len(rows) == 40 and groups.count("plus") == groups.count("plus_minus") == 20
        seen[stage["round"]] += [(r["target"], tuple(r["nums"])) for r in rows]
        assert stage["status"] == "done" and stage["global_steps"] == 5  # as sequentially
    for puzzles in seen.values():  # a round: each training puzzle of each group once
        assert len(set(puzzles)) == len(puzzles) == 80
    assert [c["experiment"] for c in seq] == [c["experiment"] for c in mixed]


def test_reference_base_reaches_every_stage_process(case: EngineCase) -> None:
    assert case.engine(case.cfg(algo="grpo", reference="base")) == 0
    calls = case.calls_made()
    assert len(calls) == 4 and calls[2]["model"] != str(case.model)
    assert {c["reference_model"] for c in calls} == {str(case.model)}
    assert {c["verl_modules"] for c in calls} == {None}  # the local backend reads it itself
    assert case.record()["config"]["reference"] == "base"


def test_a_run_json_from_an_older_or_hand_edited_file_resumes(case: EngineCase) -> None:
    """Keys the reader does not know are ignored; keys it knows with the wrong type stop the
    trainer with the fix, before anything runs."""
    cfg = case.cfg(algo="grpo", rounds=1, groups=["plus"])
    assert case.engine(cfg) == 0
    m = case.record()
    m["stages"][0]["future_key"] = 1
    m["stages"][0]["status"] = "running"
    del m["cpu_overlay"], m["stages"][0]["error_tail"]
    (case.run / "run.json").write_text(json.dumps(m))
    assert case.engine(cfg) == 0 and case.record()["stages"][0]["status"] == "done"
    m["stages"][0]["global_steps"] = "five"
    (case.run / "run.json").write_text(json.dumps(m))
    with pytest.raises(TrainerError, match=r"stages\[0\]\.global_steps is a string.*--out"):
        case.engine(cfg)
    assert len(case.calls_made()) == 2


def test_a_setting_added_since_the_run_began_is_no_change_at_its_default(
    case: EngineCase,
) -> None:
    """run.json from a trainer without ``val_max_samples`` and ``max_steps``: resuming it with
    their defaults is the same training; asking for another value is a change like any other."""
    added = ("val_max_samples", "max_steps", "val_samples")
    cfg = case.cfg(algo="grpo", rounds=1, groups=["plus"])
    assert case.engine(cfg) == 0
    m = case.record()
    for key in added:
        del m["config"][key]
    m["stages"][0]["status"] = "interrupted"
    (case.run / "run.json").write_text(json.dumps(m))
    assert case.engine(cfg) == 0
    m = case.record()
    for key in added:
        del m["config"][key]
    (case.run / "run.json").write_text(json.dumps(m))
    for key, value in zip(added, (4, 3, 2), strict=True):
        changed = case.cfg(algo="grpo", rounds=1, groups=["plus"], **{key: value})
        with pytest.raises(TrainerError, match=rf"{key}: None -> {value}"):
            case.engine(changed)


def test_a_resumed_stage_holds_what_the_disk_check_counts(case: EngineCase) -> None:
    """veRL rotates out only checkpoints written by the same process: before a resume the engine
    keeps just the tracker's step, so the stage holds one more checkpoint than a fresh one, as
    ``peak_checkpoints`` counts, however often it is resumed."""
    held = case.run.parent / "held"
    case.monkeypatch.setenv("FAKE_VERL_HELD", str(held))
    cfg = case.cfg(algo="grpo", rounds=1, groups=["plus"], epochs=3, save_freq=2)
    # 15 steps, checkpoints at 2, 4, ..., 14 and 15
    assert case.engine(cfg, fail="ContinualCountdown_R1_plus:5") == 1
    ckpt = case.run / "checkpoints" / "R1_plus"
    assert sorted(p.name for p in ckpt.glob("global_step_*")) == ["global_step_2", "global_step_4"]
    half = ckpt / "global_step_6" / "actor"  # a save cut short: written before the tracker
    half.mkdir(parents=True)
    assert case.engine(cfg, fail="ContinualCountdown_R1_plus:9") == 1
    assert "removed the checkpoints of step 2, 6" in case.notes()
    assert case.engine(cfg) == 0
    assert len(case.calls_made()) == 3
    (size,) = run_size(cfg, plan_stages(cfg))
    held_at_saves = [int(n) for n in held.read_text().split()]
    assert max(held_at_saves) == peak_checkpoints(cfg, size.checkpoints) == 3
    assert list(ckpt.iterdir()) == []  # done: the exports are all that is left


def test_done_stages_are_pruned_only_with_complete_exports(case: EngineCase) -> None:
    run = case.run
    kept = case.cfg(rounds=1, keep_checkpoints=2)
    assert case.engine(kept) == 0

    def steps(name: str) -> list[str]:
        return sorted(p.name for p in (run / "checkpoints" / name).glob("global_step_*"))

    assert steps("R1_plus") == ["global_step_4", "global_step_5"]
    (run / "critics" / "final_1_plus_minus" / "model.safetensors").unlink()
    # The same run with the default: done stages lose their checkpoints when nothing is lost.
    assert case.engine(case.cfg(rounds=1)) == 0
    assert steps("R1_plus") == [] and steps("R1_plus_minus") == ["global_step_4", "global_step_5"]
    notes = case.notes()
    assert "[R1_plus] removed the checkpoints of step 4, 5" in notes
    assert (
        "[R1_plus_minus] keeping its checkpoints" in notes and "critics/final_1_plus_minus" in notes
    )


def test_the_wandb_key_travels_in_no_ray_job_config(case: EngineCase) -> None:
    """On a Ray cluster every actor inherits its node's ``ray start`` environment, which carries
    the key; a job's runtime environment would show it in Ray's dashboard and state API."""
    from cl_trainer import tracking

    cfg = case.cfg(algo="grpo", rounds=1, groups=["plus"], ray_address="10.0.0.1:6379")
    case.monkeypatch.setattr(tracking, "_reachable", lambda: True)
    case.monkeypatch.setenv("WANDB_API_KEY", "key-123-secret")
    case.monkeypatch.setenv("WANDB_MODE", "online")
    assert case.engine(cfg) == 0
    (call,) = case.calls_made()
    assert call["wandb_mode"] == "online"
    assert "key-123-secret" not in json.dumps([call["argv"], call["ray_job_config"]])


def test_a_resume_on_other_data_is_refused_naming_what_changed(
    case: EngineCase, tmp_path: Path
) -> None:
    """The run records the checksums of the data it started on; regenerating the data set
    with another seed under it is refused, not trained and validated on silently."""
    import shutil

    from countdown_data import GenConfig, write_dataset

    data = tmp_path / "data"
    shutil.copytree(case.data_dir, data)
    cfg = case.cfg(algo="grpo", rounds=1, data_dir=data)
    assert case.engine(cfg, fail="ContinualCountdown_R1_plus:3") == 1
    started = case.record()["data"]
    assert sorted(started) == [f"{g}/{s}.parquet" for g in GROUPS2 for s in ("test", "train")]
    write_dataset(GenConfig(train_size=40, test_size=8, seed=1), data)
    with pytest.raises(TrainerError, match=r"plus/test.parquet changed.*new --out") as err:
        case.engine(cfg)
    assert "\n" not in str(err.value)
    assert len(case.calls_made()) == 1 and case.record()["data"] == started
    assert case.engine(cfg, force=True) == 0  # continuing on it anyway is the user's call
    assert case.record()["data"] != started


class CtrlC(Recorder):
    """A user at the keyboard: Ctrl-C once the stage has printed ``after`` lines, and, with
    ``again``, once more while the engine says it is stopping the stage."""

    def __init__(self, after: int = 1, again: bool = False) -> None:
        super().__init__()
        self.after, self.again = after, again
        self.at = 0.0
        """When the first Ctrl-C was sent (time.monotonic)."""

    def output(self, line: str) -> None:
        super().output(line)
        if len(self.lines) == self.after:
            self.at = time.monotonic()
            os.kill(os.getpid(), signal.SIGINT)

    def note(self, text: str) -> None:
        super().note(text)
        if self.again and text.startswith("stopping the stage"):
            os.kill(os.getpid(), signal.SIGINT)


def _running(pid: int) -> bool:
    """Not gone and not a zombie (a zombie holds no descriptor, nor the run's lock)."""
    try:
        state = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()[0]
    except FileNotFoundError:
        return False
    return state not in ("Z", "X")


def _interrupted_stage(tmp_path: Path, reporter: CtrlC, code: str) -> list[int]:
    """Run ``code`` as a stage until ``reporter`` interrupts it; the pids it printed (one a
    line), checked the moment the engine is back (and then killed, whatever the outcome)."""
    stage = [sys.executable, "-c", "import os, signal, sys, time\n" + code]
    try:
        with pytest.raises(KeyboardInterrupt):
            run_teed(stage, {}, tmp_path / "stage.log", reporter, cwd=tmp_path)
        pids = [int(line) for line in reporter.lines]
        return [pid for pid in pids if _running(pid)]
    finally:
        for pid in map(int, reporter.lines):
            with contextlib.suppress(ProcessLookupError):
                os.kill(pid, signal.SIGKILL)


def test_a_second_ctrl_c_hastens_the_stop_and_never_abandons_it(tmp_path: Path) -> None:
    """Ray and vLLM take a while to exit on SIGINT: a second Ctrl-C, even one that lands while
    the engine prints that it is stopping the stage, goes straight to SIGKILL, and the engine
    returns only once the stage is gone (the stage holds the run's lock)."""
    stubborn = "signal.signal(signal.SIGINT, signal.SIG_IGN)\nprint(os.getpid())\ntime.sleep(60)"
    user = CtrlC(again=True)
    assert not _interrupted_stage(tmp_path, user, stubborn), "the engine left its stage running"
    assert time.monotonic() - user.at < STOP_GRACE_S[signal.SIGINT] / 2


def test_a_stop_waits_for_every_process_of_the_stage(tmp_path: Path) -> None:
    """The stage's leader exits on Ctrl-C, a worker it started ignores it (and takes a while to
    die: it holds memory): the engine returns only once the worker is gone too."""
    leader = (
        "worker = 'import signal, time\\nsignal.signal(signal.SIGINT, signal.SIG_IGN)\\n"
        "b = bytearray(100 << 20)\\nprint(flush=True)\\ntime.sleep(60)'\n"
        "import subprocess\n"
        "w = subprocess.Popen([sys.executable, '-c', worker], stdout=subprocess.PIPE)\n"
        "w.stdout.readline()\n"
        "print(w.pid, flush=True)\nprint(os.getpid(), flush=True)\ntime.sleep(60)"
    )
    user = CtrlC(after=2)
    assert not _interrupted_stage(tmp_path, user, leader), "a worker of the stage outlived it"
    assert len(user.lines) == 2


def test_a_refusal_names_the_stage_that_outlived_its_engine(tmp_path: Path) -> None:
    """kill -9 of the engine leaves its stage holding the lock: the refusal names that process,
    not the dead engine."""
    with RunLock(tmp_path) as held:
        held.stage_started("R1_plus", os.getpid())
        held.info["pid"] = 2**22 + 12345  # the engine, gone (beyond any pid_max in use)
        held._write_info()
        with pytest.raises(TrainerError) as err:
            RunLock(tmp_path).__enter__()
    message = str(err.value)
    assert f"stage R1_plus (pid {os.getpid()}" in message
    assert f"kill -- -{os.getpid()}" in message and "\n" not in message


@pytest.mark.parametrize("hopeless", [False, True])
def test_a_full_disk_records_the_stage_failed_or_keeps_run_json_whole(
    case: EngineCase, hopeless: bool
) -> None:
    """The disk fills during a stage: run.json's last write gets the reserve's room (the stage
    recorded failed with its reason), or, with no room at all, run.json keeps its last state;
    either way one line names the cause and run.json stays readable."""
    import errno

    import cl_rundir.record

    real = cl_rundir.record.write_atomic
    reserve = case.run / ".cl-trainer.reserve"

    def full_disk(target: Path, data: str | bytes) -> None:
        if '"status": "failed"' in str(data) and (hopeless or reserve.exists()):
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        real(target, data)

    case.monkeypatch.setattr(cl_rundir.record, "write_atomic", full_disk)
    cfg = case.cfg(algo="grpo", rounds=1, groups=["plus"])
    with pytest.raises(TrainerError, match="no space left on device") as err:
        case.engine(cfg, fail="ContinualCountdown_R1_plus:3")
    assert "\n" not in str(err.value)
    stage = case.record()["stages"][0]
    assert stage["status"] == ("running" if hopeless else "failed")
    assert not list(case.run.glob(".run.json.*"))
    case.monkeypatch.setattr(cl_rundir.record, "write_atomic", real)
    assert case.engine(cfg) == 0  # space freed: the rerun resumes
    assert case.record()["stages"][0]["status"] == "done"


def test_a_compaction_that_fails_fails_the_stage_and_a_rerun_finishes_it(case: EngineCase) -> None:
    """The disk fills while the training samples are compacted: the stage is recorded failed with
    the reason in one line, its raw dumps stay, and the rerun compacts them and finishes."""
    import errno

    from cl_trainer import rollouts

    real = rollouts.compact

    def full_disk(*args: object, **kwargs: object) -> int:
        raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))

    case.monkeypatch.setattr(rollouts, "compact", full_disk)
    cfg = case.cfg(algo="grpo", rounds=1, groups=["plus"])
    with pytest.raises(TrainerError) as err:
        case.engine(cfg)
    text = str(err.value)
    assert "no space left on device (compacting the training samples into rollouts/R1_plus" in text
    assert "\n" not in text
    stage = case.record()["stages"][0]
    assert stage["status"] == "failed" and "compacting" in stage["error_tail"]
    assert len(list((case.run / "rollouts" / "R1_plus").glob("*.jsonl"))) == 5
    case.monkeypatch.setattr(rollouts, "compact", real)
    assert case.engine(cfg) == 0
    assert case.record()["stages"][0]["status"] == "done"
    assert pq.read_metadata(case.run / "rollouts" / "R1_plus.parquet").num_rows == 10
    assert not (case.run / "rollouts" / "R1_plus").exists()
