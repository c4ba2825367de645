"""``cl-eval compare``: conditions of several runs, their aggregates and differences."""

from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from cl_eval.cli import main
from cl_eval.compare import CellKey, aggregate, contrast
from cl_eval.stats import MetricKey

GROUPS = ["plus", "plus_minus"]


def simulated_runs(rng: np.random.Generator, shift: float, seeds: int = 3) -> list[dict]:
    """Per run, the final accuracy of a 4-group curriculum: true accuracies plus a seed effect,
    measured on 400 puzzles per group."""
    true = np.array([0.6, 0.4, 0.3, 0.2]) + shift
    runs = []
    for _ in range(seeds):
        p = np.clip(true + rng.normal(0, 0.03, size=4), 0, 1)
        runs.append({MetricKey("final_accuracy"): float((rng.binomial(400, p) / 400).mean())})
    return runs


def test_difference_intervals_cover_the_true_difference() -> None:
    """95 % intervals of a known difference (+0.05) contain it in at least 90 of 100 repeats."""
    rng = np.random.default_rng(11)
    covered = 0
    for _ in range(100):
        a = aggregate("none", [], simulated_runs(rng, 0.0))
        b = aggregate("remedy", [], simulated_runs(rng, 0.05))
        est = contrast([a, b]).differences["remedy − none"][MetricKey("final_accuracy")]
        covered += est.lo <= 0.05 <= est.hi
        assert est.method == "Welch over runs"
    assert covered >= 90, covered


def test_compare_cli_aggregates_and_contrasts_labelled_runs(tmp_path, verl_line, synth) -> None:
    rng = np.random.default_rng(3)
    for label, shift in (("a", 0.0), ("b", 0.2)):
        for seed in range(3):
            R = np.clip(
                np.array([[0.2, 0.1], [0.5, 0.1], [0.4, 0.45]]) + shift + rng.normal(0, 0.02),
                0,
                1,
            )
            synth.make_run(
                tmp_path / f"{label}-s{seed}", verl_line, R, [(1, "plus"), (1, "plus_minus")],
                GROUPS, checkpoints=False,
            )  # fmt: skip
    out = tmp_path / "cmp"
    res = CliRunner().invoke(
        main,
        ["compare", "--label", f"a={tmp_path}/a-s*", "--label", f"b={tmp_path}/b-s*",
         "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert "Difference b − a" in res.output and "Accuracy matrix of a" in res.output
    data = json.loads((out / "compare.json").read_text())
    assert len(data["conditions"]["a"]["runs"]) == 3
    diff = data["differences"]["b − a"]["final_accuracy"]
    assert diff["lo"] < 0.2 < diff["hi"] and diff["lo"] > 0
    assert (out / "compare.md").read_text().count("|") > 20
    assert (out / "plots" / "compare_metrics.png").stat().st_size > 10_000
    bad = CliRunner().invoke(main, ["compare", "--label", f"x={tmp_path}/none-*"])
    assert bad.exit_code == 2 and "no run directory matches" in bad.output


def test_accuracy_cells_over_seeds_stay_inside_0_1() -> None:
    """Seeds that disagree widely (0.05, 0.9, 0.95) give a t-interval beyond [0, 1]; a cell is an
    accuracy, so its interval is clipped, while a metric such as BWT keeps its own bounds."""
    cell_key, bwt = CellKey("R1_plus_minus", "plus"), MetricKey("bwt")
    runs = [{cell_key: a, bwt: -a} for a in (0.05, 0.9, 0.95)]
    cond = aggregate("wide", [], runs)
    cell = cond.cells[cell_key]
    assert cell.lo == 0.0 and 0.0 < cell.hi <= 1.0
    assert cond.metrics[bwt].lo < -1.0
    assert str(cell_key) == "R[R1_plus_minus][plus]" and str(MetricKey("bwt_per_stage", 2)) == (
        "bwt_per_stage[2]"
    )


def test_arms_that_share_seeds_are_differenced_seed_by_seed() -> None:
    """Per-seed differences 0.05, 0.06, 0.07 (seed effects far larger): the paired t-interval,
    0.06 ± t(2) · 0.01/√3, where Welch would see the seed spread."""
    key = MetricKey("final_accuracy")
    ref = aggregate("none", [], [{key: v} for v in (0.1, 0.3, 0.5)], seeds=[0, 1, 2])
    remedy = aggregate("remedy", [], [{key: v} for v in (0.57, 0.36, 0.15)], seeds=[2, 1, 0])
    est = contrast([ref, remedy]).differences["remedy − none"][key]
    half = 4.303 * 0.01 / np.sqrt(3)
    assert est.method == "paired by seed" and est.n == 3
    assert (est.value, est.lo, est.hi) == pytest.approx((0.06, 0.06 - half, 0.06 + half))
    unpaired = aggregate("remedy", [], remedy.values, seeds=[7, 8, 9])
    welch = contrast([ref, unpaired]).differences["remedy − none"][key]
    assert welch.method == "Welch over runs" and welch.lo < 0 < welch.hi


def _seeded(run, seed: int, curriculum: str = "sequential") -> None:
    record = json.loads((run / "run.json").read_text())
    record["config"]["seed"] = seed
    record["curriculum"] = curriculum
    (run / "run.json").write_text(json.dumps(record))


def test_identical_arms_differ_by_a_zero_width_interval(tmp_path, verl_line, synth) -> None:
    """The same seeds run twice with the same result (a remedy that changed nothing): every
    difference is exactly 0 with a zero-width interval, not Welch's spread over seeds."""
    rng = np.random.default_rng(4)
    for seed in range(3):
        R = np.clip(np.array([[0.2, 0.1], [0.5, 0.1], [0.4, 0.45]]) + rng.normal(0, 0.05), 0, 1)
        for arm in ("none", "redo"):
            run = synth.make_run(tmp_path / f"{arm}-s{seed}", verl_line, R,
                                 [(1, "plus"), (1, "plus_minus")], GROUPS, checkpoints=False)
            _seeded(run, seed)  # fmt: skip
    res = CliRunner().invoke(
        main, ["compare", "--label", f"none={tmp_path}/none-s*", "--label",
               f"redo={tmp_path}/redo-s*", "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads(res.output)
    assert data["conditions"]["redo"]["seeds"] == [0, 1, 2]
    diffs = data["differences"]["redo − none"]
    for key in ("final_accuracy", "bwt", "R[final][plus]"):
        assert diffs[key]["method"] == "paired by seed", key
        assert diffs[key]["mean"] == diffs[key]["lo"] == diffs[key]["hi"] == 0, key


def test_a_joint_run_stands_beside_the_curriculum_as_its_upper_bound(
    tmp_path, verl_line, synth
) -> None:
    stages = [(1, "plus"), (1, "plus_minus")]
    for seed in range(2):
        seq = np.array([[0.2, 0.1], [0.6, 0.1], [0.4, 0.5]]) + 0.01 * seed
        joint = np.array([[0.2, 0.1], [0.5, 0.4], [0.7, 0.6]]) + 0.02 * seed
        _seeded(synth.make_run(tmp_path / f"seq-s{seed}", verl_line, seq, stages, GROUPS,
                               checkpoints=False), seed)
        _seeded(synth.make_run(tmp_path / f"joint-s{seed}", verl_line, joint, stages, GROUPS,
                               checkpoints=False), seed, "joint")  # fmt: skip
    out = tmp_path / "cmp"
    res = CliRunner().invoke(
        main, ["compare", "--label", f"sequential={tmp_path}/seq-s*", "--label",
               f"joint={tmp_path}/joint-s*", "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    data = json.loads((out / "compare.json").read_text())
    assert data["conditions"]["joint"]["curriculum"] == "joint"
    diffs = data["differences"]["joint − sequential"]
    assert set(diffs) == {"final_accuracy", "R[final][plus]", "R[final][plus_minus]"}
    assert diffs["R[final][plus]"]["mean"] == pytest.approx(0.3 + 0.01 / 2)
    md = (out / "compare.md").read_text()
    assert "joint (upper bound)" in md


def test_runs_of_different_curricula_are_not_averaged_or_contrasted(
    tmp_path, verl_line, synth
) -> None:
    """4 groups against 1 (here 2 stages against 1) is no comparison: refused in one line that
    names both runs, instead of one averaged condition and "excludes 0: yes"."""
    R2 = np.array([[0.2, 0.1], [0.5, 0.1], [0.4, 0.45]])
    synth.make_run(tmp_path / "two", verl_line, R2, [(1, "plus"), (1, "plus_minus")], GROUPS,
                   checkpoints=False)  # fmt: skip
    synth.make_run(tmp_path / "one", verl_line, R2[:2, :1], [(1, "plus")], ["plus"],
                   checkpoints=False)  # fmt: skip
    for argv in (
        [str(tmp_path / "two"), str(tmp_path / "one")],
        ["--label", f"a={tmp_path}/two", "--label", f"b={tmp_path}/one"],
    ):
        res = CliRunner().invoke(main, ["compare", *argv, "--out", str(tmp_path / "cmp")])
        assert res.exit_code == 2, res.output
        assert "one curriculum" in res.output and str(tmp_path / "one") in res.output
        assert not (tmp_path / "cmp").exists()


def _failed_at(run, index: int) -> None:
    """The run's stage ``index`` failed before its last validation (a crash mid-stage); the
    later stages never started."""
    record = json.loads((run / "run.json").read_text())
    record["stages"][index].update(status="failed", exit_code=1, global_steps=None)
    for later in record["stages"][index + 1 :]:
        later.update(status="pending", global_steps=None)
        (run / later["log"]).unlink()
    (run / "run.json").write_text(json.dumps(record))


@pytest.mark.parametrize("failed", [0, 1], ids=["first-stage", "last-stage"])
def test_a_failed_run_shows_a_dash_for_what_it_does_not_have(
    tmp_path, verl_line, synth, failed: int
) -> None:
    """A run whose stage failed before validating has no final accuracy (none at all when its
    first stage failed): compare shows `–` there, names the run in a warning, and contrasts what
    both have, instead of a KeyError or an earlier stage's accuracy passed off as the final."""
    stages = [(1, "plus"), (1, "plus_minus")]
    done = np.array([[0.2, 0.1], [0.5, 0.1], [0.4, 0.45]])
    stopped = done.copy()
    stopped[failed + 1 :] = np.nan
    synth.make_run(tmp_path / "done", verl_line, done, stages, GROUPS, checkpoints=False)
    _failed_at(synth.make_run(tmp_path / "failed", verl_line, stopped, stages, GROUPS,
                              checkpoints=False), failed)  # fmt: skip
    out = tmp_path / "cmp"
    res = CliRunner().invoke(
        main, ["compare", "--label", f"done={tmp_path}/done", "--label",
               f"failed={tmp_path}/failed", "--out", str(out)],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    assert f"{tmp_path / 'failed'} measured {failed} of its 2 stages" in res.stderr
    md = (out / "compare.md").read_text()
    final = next(line for line in md.splitlines() if line.startswith("| final_accuracy "))
    assert final.split("|")[2:4] == [" 0.425 ", " – "], final
    assert "R1_plus_minus | 0.400 | 0.450 |" in md.replace("  ", " ")
    data = json.loads((out / "compare.json").read_text())
    assert data["differences"]["failed − done"].get("final_accuracy", {}).get("mean") is None
    assert (out / "plots" / "compare_metrics.png").stat().st_size > 10_000


def test_runs_of_other_presets_are_not_averaged(tmp_path, verl_line, synth) -> None:
    """Seeds of one condition on different presets (another model) are not one condition:
    refused in one line naming both; two conditions on different presets are contrasted with a
    warning naming them (a model-size study is a comparison someone means to make)."""
    R = np.array([[0.2, 0.1], [0.5, 0.1], [0.4, 0.45]])
    stages = [(1, "plus"), (1, "plus_minus")]
    for name, size in (("tiny", "tiny"), ("big", "0.5b"), ("big2", "0.5b")):
        synth.make_run(tmp_path / name, verl_line, R, stages, GROUPS, size=size,
                       checkpoints=False)  # fmt: skip
    res = CliRunner().invoke(main, ["compare", str(tmp_path / "tiny"), str(tmp_path / "big")])
    assert res.exit_code == 2, res.output
    assert "preset 0.5b" in res.output and "preset tiny" in res.output
    assert "Traceback" not in res.output
    res = CliRunner().invoke(
        main, ["compare", "--label", f"tiny={tmp_path}/tiny", "--label", f"big={tmp_path}/big*",
               "--json"],
    )  # fmt: skip
    assert res.exit_code == 0, res.output
    (warning,) = [line for line in res.stderr.splitlines() if "preset" in line]
    assert "big" in warning and "0.5b" in warning and "tiny" in warning


def test_a_condition_of_joint_and_sequential_runs_is_refused(tmp_path, verl_line, synth) -> None:
    """A joint run is the upper bound, not a seed of the curriculum: one line, no traceback."""
    R = np.array([[0.2, 0.1], [0.5, 0.1], [0.4, 0.45]])
    stages = [(1, "plus"), (1, "plus_minus")]
    for seed, curriculum in enumerate(("sequential", "joint")):
        run = synth.make_run(tmp_path / f"s{seed}", verl_line, R, stages, GROUPS,
                             checkpoints=False)  # fmt: skip
        _seeded(run, seed, curriculum)
    res = CliRunner().invoke(main, ["compare", f"{tmp_path}/s*"])
    assert res.exit_code == 2, res.output
    assert "joint" in res.output and "sequential" in res.output
    assert res.exception is None or isinstance(res.exception, SystemExit)
