"""veRL's own, unmodified trainer runs tiny stages on CPU: ``cl-trainer --backend verl --device
cpu``, the very stage command ``plan`` prints plus ``cl_trainer.verl_cpu``'s overlay.

The slow, real-veRL integration tests (minutes, not seconds), on freshly generated data and a tiny
model with a few SFT steps, validation covering every group: two GRPO steps with two sampled
answers per puzzle (``--val-samples``) and the KL reference from the base model's directory
through ``cl_trainer.verl_reference`` (``--reference base``; in a first stage the base is also the
actor's start, so the training is the same), on one Ray node and on two; and one PPO step with
veRL's engine-based critic. What the stand-in (``packages/cl-trainer/tests/fake_verl.py``) cannot
catch is caught here: Hydra, Ray, model loading, the rollout, weight sync, the critic,
checkpointing, the rollout dumps, the log contract with cl-eval.
"""

from __future__ import annotations

import json
import math
import os
import re
import shutil
import subprocess
import sys
from pathlib import Path

import pyarrow.parquet as pq
import pytest
import torch
from omegaconf import OmegaConf
from safetensors import safe_open
from transformers import AutoModelForCausalLM, AutoModelForTokenClassification

from cl_eval.analysis import analyse
from cl_eval.logs import parse_log
from cl_rundir.layout import ROLLOUT_COLUMNS
from cl_trainer.checkpoints import VALUE_HEAD, weight_names
from cl_trainer.config import resolve_config
from cl_trainer.local.tiny import ensure_tiny_model
from cl_trainer.verl_cpu import ray_demand
from countdown_data.dataset import split_path
from countdown_data.groups import GROUPS, data_source
from countdown_reward.scoring import FORMAT_SCORE

from .loopback import loopback_cluster, node_ip

pytestmark = pytest.mark.slow

BIN = Path(sys.executable).parent
GRPO_STEPS, PPO_STEPS = 2, 1
TRAIN_BATCH, GRPO_N = 8, 8
"""The tiny preset's prompts per step and GRPO rollouts per prompt (PPO: one)."""
VAL_SAMPLES = 2
GRPO_OPTIONS = ("--reference", "base", "--val-samples", str(VAL_SAMPLES))
TIMEOUT_S = 1200
"""Hard limit for a stage; each takes about 1-4 minutes on 2 cores."""
LOG = Path("logs") / "ContinualCountdown_R1_plus.log"


@pytest.fixture(scope="module")
def inputs(tmp_path_factory: pytest.TempPathFactory) -> tuple[Path, Path]:
    """Data (every group's test split small) and a tiny base model with a few SFT steps."""
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
    base = ensure_tiny_model(work / "base_model", data, seed=0, sft_steps=10, eval_samples=4)
    return data, Path(base)


def train(
    inputs: tuple[Path, Path],
    name: str,
    steps: int,
    *options: str,
    env: dict[str, str] | None = None,
) -> Path:
    """One stage of the tiny preset on group ``plus`` through veRL's trainer on CPU."""
    data, base = inputs
    run = data.parent / "runs" / name
    # The base model where the trainer builds it: found complete, it is not rebuilt.
    shutil.copytree(base, run / "base_model")
    val_files = ",".join(str(split_path(data, g, "test")) for g in GROUPS)
    cmd = [
        str(BIN / "cl-trainer"), "--size", "tiny", "--backend", "verl", "--device", "cpu",
        "--groups", "plus", "--data-dir", str(data), "--out", str(run), "--no-wandb",
        "--max-steps", str(steps), *options, "--", f"data.val_files=[{val_files}]",
    ]  # fmt: skip
    proc = subprocess.run(
        cmd,
        cwd=data.parent,
        env={**os.environ, **(env or {}), "WANDB_MODE": "disabled"},
        capture_output=True,
        text=True,
        timeout=TIMEOUT_S,
    )
    log = run / LOG
    assert proc.returncode == 0, (
        f"cl-trainer exited {proc.returncode}\n--- stdout\n{proc.stdout[-4000:]}"
        f"\n--- stderr\n{proc.stderr[-4000:]}\n--- log\n"
        + (log.read_text()[-6000:] if log.is_file() else "(no log)")
    )
    return run


@pytest.fixture(scope="module")
def run(inputs: tuple[Path, Path]) -> Path:
    return train(inputs, "grpo", GRPO_STEPS, *GRPO_OPTIONS)


@pytest.fixture(scope="module")
def ppo(inputs: tuple[Path, Path]) -> Path:
    return train(inputs, "ppo", PPO_STEPS, "--algo", "ppo")


def test_the_stage_is_done_and_its_overlay_recorded(run: Path) -> None:
    manifest = json.loads((run / "run.json").read_text())
    stage = manifest["stages"][0]
    assert stage["status"] == "done" and stage["global_steps"] == GRPO_STEPS
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
    log = parse_log(run / LOG)
    assert log.val_steps() == [0, GRPO_STEPS]
    assert log.train_steps() == list(range(1, GRPO_STEPS + 1))
    for step in (0, GRPO_STEPS):
        keys = log.records[step]
        for g in GROUPS:
            assert 0.0 <= keys[f"val-core/{data_source(g)}/acc/mean@{VAL_SAMPLES}"] <= 1.0
    a = analyse(run)
    assert a.R.shape == (2, 1) and a.stages_used == 1


def test_the_rollout_follows_the_trained_weights(run: Path) -> None:
    # The transformers rollout's log-probs match the actor's recomputation, also after the first
    # weight sync: a stale rollout model would show up at step 2.
    log = parse_log(run / LOG)
    for step in range(1, GRPO_STEPS + 1):
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
    assert conf.trainer.total_training_steps == GRPO_STEPS
    assert conf.actor_rollout_ref.rollout.max_model_len == 96 + 48  # the tiny preset's lengths


def test_verl_built_its_reference_through_the_plugin(run: Path) -> None:
    log = (run / "logs" / "ContinualCountdown_R1_plus.log").read_text()
    assert f"cl-trainer: reference policy from {run / 'base_model'}" in log
    conf = OmegaConf.load(run / "hydra" / "R1_plus" / ".hydra" / "config.yaml")
    assert conf.actor_rollout_ref.actor.use_kl_loss  # the reference is used


def test_validation_writes_every_sampled_answer(run: Path) -> None:
    """veRL's own dump: ``--val-samples`` answers per puzzle, keyed ``<puzzle>_<sample>_0`` (the
    local backend writes the same)."""
    for step in (0, GRPO_STEPS):
        lines = (run / "validation" / "R1_plus" / f"{step}.jsonl").read_text().splitlines()
        assert len(lines) == 2 * len(GROUPS) * VAL_SAMPLES  # 2 test puzzles per group
        samples: dict[str, list[tuple[int, str]]] = {}
        for record in map(json.loads, lines):
            prompt, sample, output = record["uid"].rsplit("_", 2)
            assert output == "0"
            samples.setdefault(prompt, []).append((int(sample), str(record["gts"])))
        assert len(samples) == 2 * len(GROUPS)
        for answers in samples.values():
            assert sorted(s for s, _ in answers) == list(range(VAL_SAMPLES))
            assert len({gts for _, gts in answers}) == 1


@pytest.mark.parametrize(("name", "steps", "per_step"), [("grpo", 2, 64), ("ppo", 1, 8)])
def test_every_training_sample_is_kept_compact(
    name: str, steps: int, per_step: int, request: pytest.FixtureRequest
) -> None:
    """veRL's per-step rollout dumps became one small file: the training success rate's source."""
    done = request.getfixturevalue("run" if name == "grpo" else "ppo")
    assert per_step == TRAIN_BATCH * (GRPO_N if name == "grpo" else 1)
    path = done / "rollouts" / "R1_plus.parquet"
    table = pq.read_table(path)
    assert tuple(table.column_names) == ROLLOUT_COLUMNS
    assert table["step"].to_pylist() == [s for s in range(1, steps + 1) for _ in range(per_step)]
    # The verifier's verdict on the dumped text agrees with the reward veRL computed.
    scores, correct = table["score"].to_pylist(), table["correct"].to_pylist()
    for score, right in zip(scores, correct, strict=True):
        assert score == 1.0 if right else score in (0.0, pytest.approx(FORMAT_SCORE))
    assert not (done / "rollouts" / "R1_plus").exists()
    print(f"rollouts/R1_plus.parquet ({name}): {path.stat().st_size} bytes, {table.num_rows} rows")


def test_ppo_trains_veRLs_critic(ppo: Path) -> None:
    manifest = json.loads((ppo / "run.json").read_text())
    stage = manifest["stages"][0]
    assert stage["status"] == "done" and stage["global_steps"] == PPO_STEPS
    assert "critic.strategy=fsdp2" in manifest["cpu_overlay"]["overrides"]
    record = parse_log(ppo / LOG).records[PPO_STEPS]
    for key in ("critic/vf_loss", "critic/vf_clipfrac", "critic/grad_norm", "critic/vpred_mean"):
        assert math.isfinite(record[key]), key
    assert 0.0 <= record["critic/vf_clipfrac"] <= 1.0


def test_the_critic_export_is_labelled_a_value_model(ppo: Path) -> None:
    critic = ppo / "critics" / "final_1_plus"
    config = json.loads((critic / "config.json").read_text())
    assert config["architectures"] == ["Qwen2ForTokenClassification"]
    names = weight_names(critic)
    assert VALUE_HEAD in names and not any(n.startswith("lm_head") for n in names)
    model = AutoModelForTokenClassification.from_pretrained(critic, dtype=torch.float32)
    assert model.config.num_labels == 1
    with safe_open(critic / "model.safetensors", "pt") as f:
        assert torch.equal(model.score.weight, f.get_tensor(VALUE_HEAD).float())


def test_cl_eval_reads_the_ppo_run(ppo: Path) -> None:
    a = analyse(ppo)
    assert a.R.shape == (2, 1) and a.stages_used == 1
    train = a.results[0].train
    assert train["vf_loss"].steps == [PPO_STEPS] and math.isfinite(train["vf_loss"].last)
    assert train["success"].samples == [TRAIN_BATCH]


# --------------------------------------------------------------------- two Ray nodes, one machine

ACTOR_LINE = re.compile(r"\((\w+) pid=(\d+)(?:, ip=([\d.]+))?\)")
"""Ray's prefix of an actor's output in the driver's log; ``ip`` only for another node's."""


@pytest.fixture(scope="module")
def two_nodes(
    inputs: tuple[Path, Path], tmp_path_factory: pytest.TempPathFactory
) -> tuple[Path, dict[str, str]]:
    """The GRPO stage on a cluster of a head and a worker node, each with the CPUs its share of
    the configuration holds (``cl_trainer.verl_cpu.ray_demand``) and one training process; its
    last checkpoint kept, to show each rank's shard."""
    cfg = resolve_config("tiny", backend="verl", device="cpu", nnodes=2, ray_address="x")
    ray_dir = tmp_path_factory.mktemp("ray")
    with loopback_cluster(ray_dir, nodes=2, cpus_per_node=ray_demand(cfg).per_node) as cluster:
        nodes = cluster.node_ids()
        # Every actor line in the stage log with its own prefix, not folded into another node's.
        env = {**cluster.env, "RAY_DEDUP_LOGS": "0"}
        run = train(
            inputs, "two_nodes", GRPO_STEPS, *GRPO_OPTIONS, "--ray-address", cluster.address,
            "--nnodes", "2", "--keep-checkpoints", "1", env=env,
        )  # fmt: skip
    return run, nodes


def test_two_nodes_each_run_a_training_worker(two_nodes: tuple[Path, dict[str, str]]) -> None:
    run, nodes = two_nodes
    assert sorted(nodes.values()) == [node_ip(0), node_ip(1)]
    manifest = json.loads((run / "run.json").read_text())
    assert manifest["stages"][0]["status"] == "done" and manifest["config"]["nnodes"] == 2
    placed: dict[str, set[str]] = {}
    for line in (run / LOG).read_text(errors="replace").splitlines():
        for actor, pid, ip in ACTOR_LINE.findall(line):
            # The driver joins the head node: its own node's actors print without an ip.
            placed.setdefault(actor, set()).add(f"pid {pid} on {ip or node_ip(0)}")
    print("placement:", json.dumps({k: sorted(v) for k, v in placed.items()}, indent=1))
    workers = placed["WorkerDict"]  # veRL's colocated actor/rollout/reference processes
    assert {w.split(" on ")[1] for w in workers} == {node_ip(0), node_ip(1)}
    assert len({w.split(" on ")[0] for w in workers}) == 2


def layout(run: Path) -> set[str]:
    """A run directory's files but its base model and kept checkpoints."""
    files = {p.relative_to(run).as_posix() for p in run.rglob("*") if p.is_file()}
    return {f for f in files if not f.startswith(("base_", "checkpoints/"))}


def test_two_nodes_leave_the_run_directory_of_one(
    two_nodes: tuple[Path, dict[str, str]], run: Path
) -> None:
    """The same files (and a FSDP shard per rank), run.json fields, log keys, sample counts and
    validation prompts; the numbers differ, as two data-parallel ranks split each batch, and two
    rollout replicas sample with other random streams."""
    two, _ = two_nodes
    assert layout(two) == layout(run)
    one_m, two_m = (json.loads((r / "run.json").read_text()) for r in (run, two))
    assert set(one_m) == set(two_m) and set(one_m["stages"][0]) == set(two_m["stages"][0])
    for key in ("status", "global_steps", "final_model", "checkpoint_dir", "validation_dir"):
        assert one_m["stages"][0][key] == two_m["stages"][0][key], key
    one_log, two_log = parse_log(run / LOG), parse_log(two / LOG)
    assert one_log.train_steps() == two_log.train_steps()
    for step in one_log.records:
        assert set(one_log.records[step]) == set(two_log.records[step]), step
    shards = sorted((two / "checkpoints" / "R1_plus").rglob("model_world_size_*.pt"))
    assert [p.name for p in shards] == [f"model_world_size_2_rank_{r}.pt" for r in (0, 1)]
    for name in ("rollouts/R1_plus.parquet",):
        assert pq.read_metadata(run / name).num_rows == pq.read_metadata(two / name).num_rows
    one_final, two_final = (r / "metrics" / "final_1_plus" for r in (run, two))
    assert weight_names(one_final) == weight_names(two_final)
    asked = [
        sorted(r["input"] for r in map(json.loads, path.read_text().splitlines()))
        for path in (r / "validation" / "R1_plus" / "0.jsonl" for r in (run, two))
    ]
    assert asked[0] == asked[1] and len(asked[0]) == 2 * len(GROUPS) * VAL_SAMPLES
