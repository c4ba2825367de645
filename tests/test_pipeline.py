"""End to end on CPU: data → continual training (local backend, tiny model) → cl-eval.

The CPU testbed reduced (its data profile, its preset; 2 groups × 1 round, 2 steps per stage, ReDo
between the stages) through the real command lines; the artifacts are what a researcher relies
on, so those are what is asserted.
"""

import json
import os
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from matplotlib import pyplot as plt
from transformers import AutoModelForCausalLM, AutoTokenizer

from cl_eval.logs import parse_log
from cl_eval.probe import PROBE_PUZZLES, build_probe_set, load_model, soft_accuracy_and_kl
from cl_eval.run import load_run
from cl_trainer.local.tiny import WARM_STARTS, ensure_tiny_model
from countdown_data.sft import COMPLETION_STYLES

BIN = Path(sys.executable).parent
GROUPS = ("plus", "plus_minus")
CONSOLIDATED = "consolidated_metrics_testbed.json"
VAL_PUZZLES = 16
"""Validation puzzles over both groups (of their 2 x 20 test puzzles)."""

pytestmark = pytest.mark.slow


def _run(*args: str, cwd: Path) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, "WANDB_MODE": "disabled"}
    proc = subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=900)
    assert proc.returncode == 0, f"{args[0]} failed:\n{proc.stdout[-3000:]}\n{proc.stderr[-3000:]}"
    return proc


@pytest.fixture(scope="module")
def run_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    work = tmp_path_factory.mktemp("pipeline")
    data = work / "data"
    _run(
        str(BIN / "countdown-data"), "gen", "--out", str(data), "--groups", ",".join(GROUPS),
        "--profile", "small", "--train-size", "200", "--test-size", "20", cwd=work,
    )
    run = work / "runs" / "testbed"
    # Built here with few SFT steps to keep CI short; the trainer finds it complete and reuses it.
    ensure_tiny_model(
        run / "base_model", data, warm_start=WARM_STARTS["testbed"], sft_steps=10, eval_samples=4
    )
    _run(
        str(BIN / "cl-trainer"), "--size", "testbed", "--groups", ",".join(GROUPS),
        "--data-dir", str(data), "--out", str(run), "--no-wandb",
        "--train-batch-size", "8", "--ppo-mini-batch-size", "8", "--rollout-n", "2",
        "--between-stages", "redo:tau=0.1", "--val-max-samples", str(VAL_PUZZLES),
        "--", "data.train_max_samples=16", cwd=work,
    )
    _run(str(BIN / "cl-eval"), "report", "--run", str(run), cwd=work)
    return run


def test_every_stage_is_done_in_the_manifest(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["backend"] == "local"
    assert [(s["round"], s["group"], s["status"]) for s in manifest["stages"]] == [
        (1, "plus", "done"),
        (1, "plus_minus", "done"),
    ]


def test_final_checkpoints_load_with_transformers(run_dir: Path) -> None:
    for group in GROUPS:
        final = run_dir / "metrics" / f"final_1_{group}"
        model = AutoModelForCausalLM.from_pretrained(final)
        tokenizer = AutoTokenizer.from_pretrained(final)
        assert model.config.model_type == "qwen2"
        assert tokenizer.decode(tokenizer("nums 3 5 target 8")["input_ids"]) == "nums 3 5 target 8"
    assert (run_dir / "metrics" / "initial_1_plus_minus").exists()


def test_logs_parse_into_a_full_accuracy_matrix(run_dir: Path) -> None:
    run = load_run(run_dir)
    assert not run.warnings
    for stage in run.stages:
        parsed = parse_log(stage.log)
        assert parsed.train_steps() == [1, 2], stage.name
        assert parsed.val_steps() == [0, 2], stage.name  # before the first step, after the last
    proc = _run(str(BIN / "cl-eval"), "matrix", str(run_dir), "--json", cwd=run_dir)
    matrix = json.loads(proc.stdout)["accuracy_matrix"]
    assert matrix["rows"] == ["base", "R1_plus", "R1_plus_minus"]
    assert all(0.0 <= v <= 1.0 for row in matrix["values"] for v in row)
    # --val-max-samples reached the backend (its validation records) and the evaluator.
    assert json.loads((run_dir / "run.json").read_text())["config"]["val_max_samples"] == 16
    assert all(sum(n) == VAL_PUZZLES for n in matrix["n"]), matrix["n"]


def _is_a_picture(path: Path) -> bool:
    """A PNG of a readable size whose pixels are not one flat colour."""
    img = plt.imread(path)
    colours = np.unique(img.reshape(-1, img.shape[-1]), axis=0)
    return img.shape[0] > 300 and img.shape[1] > 400 and len(colours) > 10


def test_the_report_shows_every_number_and_picture_of_the_run(run_dir: Path) -> None:
    report = (run_dir / "report.md").read_text()
    consolidated = json.loads((run_dir / "metrics" / CONSOLIDATED).read_text())
    m = consolidated["accuracy_matrix"]
    assert m["rows"] == ["base", "R1_plus", "R1_plus_minus"] and m["columns"] == list(GROUPS)
    # The matrix table shows each cell of the consolidated file with its 95 % interval.
    for row, values, lo, hi in zip(m["rows"], m["values"], m["lo"], m["hi"], strict=True):
        cells = [f"{v:.3f} [{a:.3f}, {b:.3f}]" for v, a, b in zip(values, lo, hi, strict=True)]
        assert f"| {row} | {' | '.join(cells)} |" in report, row
    for name in ("R1_plus", "R1_plus_minus"):  # status and steps of every stage
        assert f"| {name} | done | 2 |" in report
    bwt = consolidated["metrics"]["bwt"]
    assert f"| bwt | {bwt:.3f} |" in report
    # Every figure it shows is on disk and is a picture, not a blank canvas.
    images = re.findall(r"!\[[^\]]*\]\(([^)]+)\)", report)
    kinds = ("training_metrics", "accuracy_matrix", "forgetting", "weight_change", "plasticity")
    assert {f"plots/{k}_testbed.png" for k in (*kinds, "kl_forgetting")} <= set(images)
    for rel in images:
        assert _is_a_picture(run_dir / rel), rel


def test_the_remedy_is_recorded_and_the_report_has_plasticity(run_dir: Path) -> None:
    manifest = json.loads((run_dir / "run.json").read_text())
    assert manifest["config"]["between_stages"] == ["redo:tau=0.1"]
    first, second = manifest["stages"]
    assert first["remedies"] == []
    (record,) = second["remedies"]
    assert record["name"] == "redo" and record["params"] == {"tau": 0.1}
    assert len(record["changed"]["reset_units_per_layer"]) == 3
    # The stage trained from the transformed model, which cl-eval sees as its initial model.
    assert (run_dir / "metrics" / "initial_1_plus_minus" / "model.safetensors").is_file()
    assert not (run_dir / "metrics" / "initial_1_plus_minus").is_symlink()
    report = (run_dir / "report.md").read_text()
    assert "## Plasticity" in report and "dormant τ=0" in report and "Soft accuracy" in report
    consolidated = json.loads((run_dir / "metrics" / CONSOLIDATED).read_text())
    probes = consolidated["plasticity"]["probes"]
    assert len(probes) == 3 and set(probes[1]["soft_accuracy"]) == set(GROUPS)
    assert probes[2]["kl_moved"]["plus_minus"] >= 0


def test_soft_accuracy_scores_the_answer_text_the_model_was_taught(run_dir: Path) -> None:
    """The testbed's warm start teaches compact answers and records it; cl-eval scores that text,
    which the base model finds likelier than the worked solutions it never saw."""
    manifest = json.loads((run_dir / "run.json").read_text())
    base, data = Path(manifest["base_model"]), Path(manifest["config"]["data_dir"])
    assert json.loads((base / "tiny_model.json").read_text())["completion_style"] == "compact"
    model, tokenizer = load_model(base)
    scores = {}
    for style in COMPLETION_STYLES:
        probe = build_probe_set(data, GROUPS, tokenizer, PROBE_PUZZLES, style)
        scores[style] = {
            g: soft_accuracy_and_kl(model, None, tokenizer, probe.solutions[g])[0] for g in GROUPS
        }
    assert all(scores["compact"][g] > scores["worked"][g] for g in GROUPS), scores
    consolidated = json.loads((run_dir / "metrics" / CONSOLIDATED).read_text())
    assert consolidated["plasticity"]["probes"][0]["soft_accuracy"] == pytest.approx(
        scores["compact"]
    )


def test_compare_summarises_plasticity_from_the_checkpoints(run_dir: Path, tmp_path: Path) -> None:
    out = tmp_path / "compare"
    _run(str(BIN / "cl-eval"), "compare", "--plasticity", "--out", str(out), str(run_dir),
         cwd=tmp_path)  # fmt: skip
    metrics = json.loads((out / "compare.json").read_text())["conditions"]["runs"]["metrics"]
    assert 0 <= metrics["dormant_final"]["mean"] <= 1 and metrics["srank_final"]["mean"] >= 1
    assert metrics["soft_final_accuracy"]["mean"] < 0  # a mean log-likelihood
    assert "soft_plasticity_gain" in (out / "compare.md").read_text()
