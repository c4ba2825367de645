"""``python -m cl_trainer.local``: veRL's config, algorithms, log lines and checkpoint layout."""

from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from transformers import AutoModelForCausalLM

from cl_rundir.metric_lines import parse_value
from cl_trainer.local import checkpoint, tiny
from cl_trainer.local.__main__ import main
from cl_trainer.overrides import REWARD_FUNCTION, reward_module
from countdown_data import GenConfig, write_dataset
from countdown_reward.scoring import FORMAT_SCORE

GROUPS = ("plus", "plus_minus")
STEP_LINE = re.compile(r"^step:(\d+) - (.*)$")


def write_data(root: Path, n_train: int = 16, n_test: int = 4) -> Path:
    """Two groups from countdown-data's own writer, short ``compact`` prompts."""
    cfg = GenConfig(
        train_size=n_train,
        test_size=n_test,
        groups=GROUPS,
        numbers_per_puzzle=(3, 3),
        number_range=(10, 60),
        template="compact",
    )
    write_dataset(cfg, root)
    return root


@pytest.fixture(scope="module")
def setup(tmp_path_factory) -> tuple[Path, Path]:
    root = tmp_path_factory.mktemp("local")
    data = write_data(root / "data")
    model = tiny.ensure_tiny_model(root / "model", data, sft_steps=2, eval_samples=2)
    return data, model


def overrides(data: Path, model: Path, ckpt: Path, **extra: object) -> list[str]:
    args = {
        "data.train_files": str(data / "plus" / "train.parquet"),
        "data.val_files": f"[{data}/plus/test.parquet,{data}/plus_minus/test.parquet]",
        "data.max_prompt_length": 48,
        "data.max_response_length": 12,
        "data.train_batch_size": 4,
        "actor_rollout_ref.model.path": str(model),
        "actor_rollout_ref.actor.optim.lr": 1e-4,
        "actor_rollout_ref.rollout.n": 2,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 2,
        "algorithm.adv_estimator": "grpo",
        "reward.custom_reward_function.path": reward_module(),
        "reward.custom_reward_function.name": REWARD_FUNCTION,
        "trainer.total_epochs": 1,
        "trainer.total_training_steps": 2,
        "trainer.val_before_train": True,
        "trainer.test_freq": 100,
        "trainer.save_freq": 1,
        "trainer.default_local_dir": str(ckpt),
        "trainer.resume_mode": "auto",
        "trainer.project_name": "test",
        "trainer.experiment_name": "local",
        "trainer.logger": "[console]",
        "trainer.device": "cpu",
    }
    args.update(extra)
    return [f"{k}={v}" for k, v in args.items()]


def step_lines(out: str) -> dict[int, dict[str, str]]:
    steps: dict[int, dict[str, str]] = {}
    for line in out.splitlines():
        if m := STEP_LINE.match(line):
            kv = dict(part.split(":", 1) for part in m.group(2).split(" - "))
            steps.setdefault(int(m.group(1)), {}).update(kv)
    return steps


def test_cli_runs_logs_and_checkpoints_like_verl(setup, tmp_path: Path) -> None:
    data, model = setup
    ckpt = tmp_path / "ckpt"
    proc = subprocess.run(
        [
            sys.executable,
            "-m",
            "cl_trainer.local",
            *overrides(
                data,
                model,
                ckpt,
                **{"trainer.save_freq": 2, "trainer.rollout_data_dir": tmp_path / "rollouts"},
            ),
        ],
        capture_output=True,
        text=True,
        timeout=300,
    )
    assert proc.returncode == 0, proc.stderr[-3000:]
    steps = step_lines(proc.stdout)
    assert sorted(steps) == [0, 1, 2]
    for step in (0, 2):  # validation before the first step and after the last, per group
        for group in GROUPS:
            assert f"val-core/countdown_{group}/acc/mean@1" in steps[step]
            assert f"val-aux/countdown_{group}/reward/mean@1" in steps[step]
    for key in (
        "actor/pg_loss",
        "actor/grad_norm",
        "actor/entropy",
        "critic/score/mean",
        "critic/advantages/mean",
        "response_length/mean",
        "timing_s/step",
    ):
        assert key in steps[1] and key in steps[2]
    assert "val-core/countdown_plus/acc/mean@1" not in steps[1]

    # Every training sample of every step, in veRL's rollout dump (PPOTrainer._log_rollout_data).
    dumped = sorted((tmp_path / "rollouts").iterdir())
    assert [p.name for p in dumped] == ["1.jsonl", "2.jsonl"]
    for step, path in enumerate(dumped, start=1):
        rows = [json.loads(line) for line in path.read_text().splitlines()]
        assert len(rows) == 4 * 2  # train_batch_size x rollout.n
        for row in rows:
            assert set(row) == {"input", "output", "gts", "score", "step", "uid"}
            assert row["step"] == step and row["score"] in (0.0, FORMAT_SCORE, 1.0)
            assert set(row["gts"]) == {"target", "numbers"} and row["input"]

    assert (ckpt / checkpoint.TRACKER).read_text() == "2"
    assert [p.name for p in ckpt.iterdir() if p.is_dir()] == ["global_step_2"]
    hf = ckpt / "global_step_2" / "actor" / "huggingface"
    assert AutoModelForCausalLM.from_pretrained(hf).config.model_type == "qwen2"
    assert (hf / "tokenizer.json").is_file()
    assert (ckpt / "global_step_2" / "actor" / "optim.pt").is_file()
    assert (ckpt / "global_step_2" / "data.pt").is_file()


def test_resume_continues_at_the_next_step(setup, tmp_path: Path, capsys) -> None:
    data, model = setup
    ckpt = tmp_path / "ckpt"
    assert main(overrides(data, model, ckpt)) == 0
    first = step_lines(capsys.readouterr().out)
    assert sorted(first) == [0, 1, 2]
    saved = AutoModelForCausalLM.from_pretrained(ckpt / "global_step_2" / "actor" / "huggingface")

    assert main(overrides(data, model, ckpt, **{"trainer.total_training_steps": 3})) == 0
    second = step_lines(capsys.readouterr().out)
    assert sorted(second) == [2, 3], (
        "resumed: validates at the restored step, then trains step 3 only"
    )
    assert "val-core/countdown_plus/acc/mean@1" in second[2]
    assert (ckpt / checkpoint.TRACKER).read_text() == "3"
    assert checkpoint.load(ckpt / "global_step_3").extra["global_step"] == 3
    assert checkpoint.load(ckpt / "global_step_3").data["batch"] == 3, "sampler kept its position"
    resumed = AutoModelForCausalLM.from_pretrained(ckpt / "global_step_3" / "actor" / "huggingface")
    base = AutoModelForCausalLM.from_pretrained(model)
    w = "model.embed_tokens.weight"
    assert not torch.equal(saved.state_dict()[w], resumed.state_dict()[w]), "step 3 trained"
    assert not torch.equal(base.state_dict()[w], saved.state_dict()[w]), "steps 1-2 trained"


def test_uses_verl_core_algos(setup, tmp_path: Path, monkeypatch, capsys) -> None:
    from verl.trainer.ppo import core_algos

    data, model = setup
    calls: list[tuple[torch.Tensor, object]] = []
    real = core_algos.compute_grpo_outcome_advantage

    def spy(**kwargs):
        adv, ret = real(**kwargs)
        calls.append((kwargs["token_level_rewards"].clone(), kwargs["index"]))
        return adv, ret

    losses: list[float] = []
    real_loss = core_algos.get_policy_loss_fn("vanilla")

    def loss_spy(**kwargs):
        loss, metrics = real_loss(**kwargs)
        losses.append(loss.item())
        return loss, metrics

    monkeypatch.setattr(core_algos, "compute_grpo_outcome_advantage", spy)
    monkeypatch.setitem(core_algos.POLICY_LOSS_REGISTRY, "vanilla", loss_spy)
    assert (
        main(overrides(data, model, tmp_path / "ckpt", **{"trainer.val_before_train": False})) == 0
    )
    steps = step_lines(capsys.readouterr().out)
    assert len(calls) == 2, "one GRPO advantage computation per step"
    rewards, index = calls[0]
    assert rewards.shape == (8, 12)  # 4 prompts x n=2, response length 12
    assert len(set(index)) == 4 and all(list(index).count(u) == 2 for u in set(index))
    assert len(losses) == 4, "two mini-batches per step, each through veRL's registered loss"
    assert float(steps[1]["critic/score/mean"]) == pytest.approx(
        rewards.sum(-1).mean().item(), abs=1e-6
    )


def test_critic_estimator_is_refused_in_one_line(setup, tmp_path: Path, capsys) -> None:
    data, model = setup
    assert (
        main(overrides(data, model, tmp_path / "ckpt", **{"algorithm.adv_estimator": "gae"})) == 2
    )
    err = capsys.readouterr().err.strip()
    assert err.startswith("error: ") and "grpo" in err and "\n" not in err
    assert not (tmp_path / "ckpt").exists()


def test_unknown_override_is_refused(setup, tmp_path: Path, capsys) -> None:
    data, model = setup
    assert main([*overrides(data, model, tmp_path / "ckpt"), "trainer.no_such_key=1"]) == 2
    assert "no_such_key" in capsys.readouterr().err


def test_the_kl_reference_is_the_base_model_when_named(
    setup, tmp_path: Path, monkeypatch, capsys
) -> None:
    """A later stage starts from a trained model; with ``--reference base`` its KL reference is
    the base model (KL > 0 at the first update), else the stage's start (KL 0 there)."""
    from cl_trainer.local.config import compose
    from cl_trainer.local.loop import LocalTrainer
    from cl_trainer.reference import REFERENCE_MODEL_ENV

    data, base = setup
    start = tmp_path / "final_1_plus"  # the base moved, as a first stage leaves it
    moved = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32)
    torch.manual_seed(0)
    with torch.no_grad():
        for p in moved.parameters():
            p.add_(0.05 * torch.randn_like(p))
    moved.save_pretrained(start)
    tiny.build_tokenizer().save_pretrained(start)
    one_update = {
        "actor_rollout_ref.actor.use_kl_loss": True,
        "actor_rollout_ref.actor.ppo_mini_batch_size": 4,
        "trainer.total_training_steps": 1,
        "trainer.val_before_train": False,
    }
    kl = {}
    for reference in ("stage", "base"):
        if reference == "base":
            monkeypatch.setenv(REFERENCE_MODEL_ENV, str(base))
        argv = overrides(data, start, tmp_path / reference, **one_update)
        assert main(argv) == 0
        kl[reference] = parse_value(step_lines(capsys.readouterr().out)[1]["actor/kl_loss"])
    assert kl["stage"] < 1e-7 < 1e-3 < kl["base"], kl
    ref = LocalTrainer(compose(overrides(data, start, tmp_path / "x", **one_update))).ref
    assert ref is not None
    want = AutoModelForCausalLM.from_pretrained(base, dtype=torch.float32).state_dict()
    for name, w in ref.state_dict().items():
        assert torch.equal(w, want[name]), name


def test_pass_at_k_validation_writes_n_sampled_answers_per_puzzle(
    setup, tmp_path: Path, capsys
) -> None:
    """cl-trainer's ``val_samples`` overrides: n answers per puzzle at the rollout temperature,
    each a line of the validation dump in veRL's format (``uid``: ``<puzzle>_<sample>_0``)."""
    import json

    from cl_rundir.layout import Stage
    from cl_trainer.config import resolve_config
    from cl_trainer.overrides import stage_overrides

    data, model = setup
    cfg = resolve_config("tiny", data_dir=data, out=tmp_path, val_samples=3)
    val = [
        o
        for o in stage_overrides(cfg, Stage(0, 1, "plus"), actor_path=str(model), critic_path=None)
        if ".val_kwargs." in o
    ]
    dump = tmp_path / "validation"
    extra = {"trainer.total_training_steps": 1, "trainer.validation_data_dir": str(dump)}
    assert main([*overrides(data, model, tmp_path / "ckpt", **extra), *val]) == 0
    steps = step_lines(capsys.readouterr().out)
    assert "val-core/countdown_plus/acc/mean@3" in steps[0]  # veRL's naming for n = 3
    lines = [json.loads(x) for x in (dump / "0.jsonl").read_text().splitlines()]
    by_uid: dict[str, list[dict]] = {}
    for line in lines:
        prompt, sample, output = line["uid"].rsplit("_", 2)
        assert output == "0"
        by_uid.setdefault(prompt, []).append({**line, "sample": int(sample)})
    assert len(by_uid) == 8  # 2 groups x 4 puzzles
    assert all(sorted(x["sample"] for x in v) == [0, 1, 2] for v in by_uid.values())
    assert all(len({(x["input"], str(x["gts"])) for x in v}) == 1 for v in by_uid.values())
    assert sum(len({x["output"] for x in v}) > 1 for v in by_uid.values()) >= 4  # sampled


def _answers(path: Path) -> list[tuple]:
    rows = [json.loads(x) for x in path.read_text().splitlines()]
    return [(r["input"], r["output"], r["score"], r["acc"]) for r in rows]


def test_a_boundary_generates_its_greedy_answers_once(setup, tmp_path: Path, capsys) -> None:
    """The next stage's first validation, on the weights the last stage ended with, reuses that
    stage's greedy answers, and they are the answers generating again gives."""
    from cl_rundir.layout import GREEDY_GENERATIONS

    data, model = setup
    validation = tmp_path / "validation"

    def stage(name: str, start: Path, steps: int, **extra: object) -> str:
        argv = overrides(
            data,
            start,
            tmp_path / name / "ckpt",
            **{
                "trainer.total_training_steps": steps,
                "trainer.validation_data_dir": validation / name,
                **extra,
            },
        )
        assert main(argv) == 0
        return capsys.readouterr().out

    assert "reused" not in stage("a", model, 2)
    kept = validation / GREEDY_GENERATIONS
    assert kept.is_file()
    end_of_a = tmp_path / "a" / "ckpt" / "global_step_2" / "actor" / "huggingface"
    assert "Validation answers reused" in stage("b", end_of_a, 1)
    assert _answers(validation / "b" / "0.jsonl") == _answers(validation / "a" / "2.jsonl")

    kept.unlink()  # generated again: the same answers
    assert "reused" not in stage("c", end_of_a, 1)
    assert _answers(validation / "c" / "0.jsonl") == _answers(validation / "b" / "0.jsonl")
    # Other weights (stage c's step 1 moved them): generated, not reused.
    assert "reused" not in stage("d", model, 1)


def test_sampled_validation_is_never_reused(setup, tmp_path: Path) -> None:
    """Two sampled validations are two draws (the noise floor cl-eval reads), so no key."""
    from cl_trainer.local import val_cache
    from cl_trainer.local.config import compose
    from cl_trainer.local.loop import LocalTrainer

    data, model = setup
    greedy = LocalTrainer(compose(overrides(data, model, tmp_path / "g")))
    digest = val_cache.key(greedy.model, greedy.val, greedy.cfg)
    assert digest is not None
    sampled = compose(
        overrides(
            data, model, tmp_path / "s", **{"actor_rollout_ref.rollout.val_kwargs.temperature": 1.0}
        )
    )
    assert val_cache.key(greedy.model, greedy.val, sampled) is None
    with torch.no_grad():
        next(greedy.model.parameters()).view(-1)[0] += 1e-6
    assert val_cache.key(greedy.model, greedy.val, greedy.cfg) != digest
    torch.set_num_threads(torch.get_num_threads() + 1)
    try:
        moved = val_cache.key(greedy.model, greedy.val, greedy.cfg)
    finally:
        torch.set_num_threads(torch.get_num_threads() - 1)
    assert moved != val_cache.key(greedy.model, greedy.val, greedy.cfg)


def test_damaged_kept_answers_are_generated_again(tmp_path: Path) -> None:
    """A kept file that does not read back whole is no answer: the stage generates (no raise)."""
    from cl_trainer.local import val_cache

    kept = tmp_path / "kept.pt"
    batch = {"responses": torch.ones(2, 3, dtype=torch.long), "response_mask": torch.ones(2, 3)}
    val_cache.save(kept, "k", batch)
    assert torch.equal(val_cache.load(kept, "k")["responses"], batch["responses"])
    assert val_cache.load(kept, "other") is None
    whole = kept.read_bytes()
    for damaged in (b"", b"garbage" * 10, whole[: len(whole) // 2]):
        kept.write_bytes(damaged)
        assert val_cache.load(kept, "k") is None
    torch.save({"key": "k", "responses": batch["responses"]}, kept)  # a tensor missing
    assert val_cache.load(kept, "k") is None


def test_threads_default_to_two_with_a_core_left_free(monkeypatch) -> None:
    import os

    from cl_trainer.local.config import THREADS_ENV, cpu_threads

    monkeypatch.delenv(THREADS_ENV, raising=False)
    assert cpu_threads() == max(1, min(2, len(os.sched_getaffinity(0)) - 1))
    monkeypatch.setenv(THREADS_ENV, "3")
    assert cpu_threads() == 3


@pytest.mark.parametrize("value", ["0", "two", "-1"])
def test_bad_thread_count_is_refused_in_one_line(
    setup, tmp_path: Path, monkeypatch, capsys, value: str
) -> None:
    from cl_trainer.local.config import THREADS_ENV

    data, model = setup
    monkeypatch.setenv(THREADS_ENV, value)
    assert main(overrides(data, model, tmp_path / "ckpt")) == 2
    err = capsys.readouterr().err.strip()
    assert err.startswith(f"error: {THREADS_ENV}={value}") and "\n" not in err
    assert not (tmp_path / "ckpt").exists()
