"""Damaged inputs: stray or impossible log lines, cut-off logs, mistyped run.json, corrupt
safetensors headers. Each gives a warning that names what is wrong, never a traceback, and never a
wrong number in the matrix."""

from __future__ import annotations

import json
import shutil
import struct

import numpy as np
import pytest
from click.testing import CliRunner

from cl_eval.analysis import analyse
from cl_eval.cli import main
from cl_eval.logs import parse_log_text
from cl_eval.report import build_report
from cl_eval.weights import CheckpointError, diff_checkpoints

GROUPS = ["plus", "plus_minus"]
R = np.array([[0.2, 0.1], [0.8, 0.1], [0.6, 0.7]])
STAGES = [(1, "plus"), (1, "plus_minus")]


@pytest.fixture
def run(tmp_path, verl_line, synth):
    return synth.make_run(tmp_path / "run", verl_line, R, STAGES, GROUPS, checkpoints=False)


def _insert_before_last_metric_line(path, line: str) -> None:
    lines = path.read_text().splitlines()
    last = max(i for i, x in enumerate(lines) if "step:" in x and " - " in x)
    lines.insert(last, line)
    path.write_text("\n".join(lines) + "\n")


def test_a_stray_huge_step_cannot_pose_as_the_final_validation(run) -> None:
    log = run / "logs/ContinualCountdown_R1_plus.log"
    _insert_before_last_metric_line(
        log, "step:99999999999999999999999 - val-core/countdown_plus/acc/mean@1:0.5"
    )
    a = analyse(run)
    assert a.R[1, 0] == pytest.approx(0.8)  # the real final validation, last in the file
    assert a.results[0].after.step == 6


def test_an_accuracy_outside_0_1_is_dropped_naming_the_line(run) -> None:
    log = run / "logs/ContinualCountdown_R1_plus.log"
    _insert_before_last_metric_line(log, "step:6 - val-core/countdown_plus/acc/mean@1:7.5")
    parsed = parse_log_text(log.read_text(), name=log.name)
    bad_line = log.read_text().splitlines().index("step:6 - val-core/countdown_plus/acc/mean@1:7.5")
    assert any(f"line {bad_line + 1}" in w and "7.5" in w for w in parsed.warnings)
    a = analyse(run)
    assert a.R[1, 0] == pytest.approx(0.8)
    assert np.nanmax(a.R) <= 1.0


def test_a_cut_last_line_names_the_cell_left_with_a_reward(tmp_path, verl_line) -> None:
    """veRL logs each group's reward before its accuracy: a crash mid-line can leave a cell with
    the reward only; the warning says which cell."""
    root = tmp_path / "run"
    (root / "logs").mkdir(parents=True)
    val = {}
    for g, acc in (("plus", 0.5), ("plus_minus", 0.25)):
        val[f"val-aux/countdown_{g}/reward/mean@1"] = np.float64(0.1 + 0.9 * acc)
        val[f"val-core/countdown_{g}/acc/mean@1"] = np.float64(acc)
    first = verl_line(val, 0)
    last = verl_line({"critic/score/mean": 0.5, **val}, 1)
    cut = last[: last.rindex(":") + 3]  # "...acc/mean@1:0." : the last value cut mid-number
    (root / "logs/ContinualCountdown_R1_plus.log").write_text(f"{first}\n{cut}")
    stage = {"round": 1, "group": "plus", "status": "done"}
    (root / "run.json").write_text(json.dumps({"groups": GROUPS, "stages": [stage]}))
    a = analyse(root)
    assert a.R[1, 1] == pytest.approx(0.1 + 0.9 * 0.25)  # the reward, as the warning says
    cell = [w for w in a.warnings if "R1_plus × plus_minus" in w]
    assert cell and "mean reward" in cell[0] and "truncated" in cell[0]


@pytest.mark.parametrize(
    "damage",
    [
        lambda m: m["stages"][0].update(log=42),
        lambda m: m["stages"].__setitem__(1, "R1_plus_minus"),
        lambda m: m.update(groups=None),
        lambda m: m["stages"][0].update(round="one"),
    ],
)
def test_mistyped_run_json_falls_back_to_file_names(run, damage) -> None:
    manifest = json.loads((run / "run.json").read_text())
    damage(manifest)
    (run / "run.json").write_text(json.dumps(manifest))
    a = analyse(run)
    assert any("run.json unreadable" in w for w in a.warnings)
    assert [s.name for s in a.run.stages] == ["R1_plus", "R1_plus_minus"]
    assert a.R[2, 1] == pytest.approx(0.7)
    res = CliRunner().invoke(main, ["matrix", str(run)])
    assert res.exit_code == 0, res.output


def test_a_log_path_that_is_a_directory_is_a_warning(run) -> None:
    manifest = json.loads((run / "run.json").read_text())
    manifest["stages"][1]["log"] = "logs"
    (run / "run.json").write_text(json.dumps(manifest))
    a = analyse(run)
    assert any("R1_plus_minus" in w and "not a file" in w for w in a.warnings)
    assert np.isnan(a.R[2]).all()


def _corrupt_shape(path, name: str, shape: list[int]) -> None:
    raw = path.read_bytes()
    (n,) = struct.unpack("<Q", raw[:8])
    header = json.loads(raw[8 : 8 + n])
    header[name]["shape"] = shape
    blob = json.dumps(header).encode()
    path.write_bytes(struct.pack("<Q", len(blob)) + blob + raw[8 + n :])


def test_a_header_whose_shape_disagrees_with_its_bytes_is_corrupt(
    tmp_path, verl_line, synth
) -> None:
    run = synth.make_run(tmp_path / "run", verl_line, R, STAGES, GROUPS)
    final = run / "metrics/final_1_plus"
    shutil.copytree(final.resolve(), tmp_path / "copy")
    name = "model.layers.0.mlp.up_proj.weight"
    _corrupt_shape(final / "model.safetensors", name, [1_000_000, 1_000_000])
    with pytest.raises(CheckpointError, match=f"corrupt header: tensor {name}"):
        diff_checkpoints(tmp_path / "copy", final)
    res = build_report(run)
    flagged = [w for w in res.warnings if "corrupt header" in w]
    assert flagged and "R1_plus" in flagged[0]
    assert "corrupt header" in (run / "report.md").read_text()
    out = CliRunner().invoke(main, ["report", "--run", str(run)])
    assert out.exit_code == 0 and "corrupt header" in out.output
