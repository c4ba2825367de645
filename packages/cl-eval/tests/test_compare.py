"""``cl-eval compare``: conditions of several runs, their aggregates and differences."""

from __future__ import annotations

import json

import numpy as np
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
