"""Intervals: per-sample records give a paired bootstrap over puzzles, checked here against the
analytic intervals it should reproduce; logs alone give Wilson intervals; the noise floor flags
two validations of the same weights that differ more than sampling explains."""

from __future__ import annotations

import json
import math

import numpy as np
import pytest
from click.testing import CliRunner

from cl_eval.analysis import analyse
from cl_eval.cli import main
from cl_eval.report import build_report
from cl_eval.stats import Z95, MetricKey, wilson

GROUPS = ["plus", "plus_minus"]
P = 400  # test puzzles per group


def outcomes(rng: np.random.Generator) -> dict[str, list[np.ndarray]]:
    """Per group, the correctness of every puzzle at rows 0 (base), 1 and 2 (after each stage).

    ``plus`` is learned in stage 1 (a paired gain) and partly forgotten in stage 2.
    """
    plus0 = rng.random(P) < 0.30
    plus1 = plus0 | (rng.random(P) < 0.45)
    plus2 = plus1 & (rng.random(P) < 0.85)
    pm0 = rng.random(P) < 0.10
    pm2 = pm0 | (rng.random(P) < 0.30)
    return {"plus": [plus0, plus1, plus2], "plus_minus": [pm0, pm0.copy(), pm2]}


@pytest.fixture
def recorded_run(tmp_path, verl_line, synth):
    x = outcomes(np.random.default_rng(7))
    R = np.array([[x[g][i].mean() for g in GROUPS] for i in range(3)])
    run = synth.make_run(
        tmp_path / "run", verl_line, R, [(1, "plus"), (1, "plus_minus")], GROUPS, checkpoints=False
    )
    rows = {("R1_plus", 0): 0, ("R1_plus", 6): 1, ("R1_plus_minus", 0): 1, ("R1_plus_minus", 6): 2}
    for (stage, step), row in rows.items():
        path = run / "validation" / stage / f"{step}.jsonl"
        synth.write_records(path, {g: x[g][row] for g in GROUPS})
    return run, x


def test_a_cell_interval_matches_the_analytic_one(recorded_run) -> None:
    run, x = recorded_run
    a = analyse(run)
    assert a.uncertainty.method[1][0] == "bootstrap" and a.uncertainty.n[1][0] == P
    p = x["plus"][1].mean()
    half = Z95 * math.sqrt(p * (1 - p) / P)
    assert a.uncertainty.lo[1, 0] == pytest.approx(p - half, abs=0.008)
    assert a.uncertainty.hi[1, 0] == pytest.approx(p + half, abs=0.008)


def test_a_paired_gain_interval_matches_the_analytic_one_and_beats_independent(
    recorded_run,
) -> None:
    """The same puzzles before and after a stage: the gain's interval is that of a paired mean,
    sd(d)/sqrt(n), much tighter than two independent proportions would give."""
    run, x = recorded_run
    a = analyse(run)
    d = x["plus"][1].astype(float) - x["plus"][0].astype(float)
    half = Z95 * d.std(ddof=1) / math.sqrt(P)
    gain = a.metric("plasticity_gain_per_stage", 1)
    assert gain.value == pytest.approx(d.mean())
    lo, hi = gain.lo, gain.hi
    assert lo == pytest.approx(d.mean() - half, abs=0.008)
    assert hi == pytest.approx(d.mean() + half, abs=0.008)
    p0, p1 = x["plus"][0].mean(), x["plus"][1].mean()
    independent = Z95 * math.sqrt(p0 * (1 - p0) / P + p1 * (1 - p1) / P)
    assert hi - lo < 2 * independent * 0.9
    forgot = a.metric("bwt_per_group", 1)  # plus after stage 2 vs after stage 1
    assert forgot.hi < 0 and forgot.excludes_zero  # forgetting, and the interval says so


def test_the_noise_floor_of_identical_revalidations_is_zero(recorded_run) -> None:
    run, _ = recorded_run
    floor = analyse(run).uncertainty.noise_floor
    assert {e["group"] for e in floor} == set(GROUPS)
    assert all(e["diff"] == 0 and e["lo"] == e["hi"] == 0 and not e["flag"] for e in floor)


def test_a_revalidation_beyond_sampling_is_flagged(recorded_run, synth) -> None:
    run, x = recorded_run
    # Stage 2 starts from other weights than stage 1 ended with: its first validation differs.
    shifted = {g: x[g][1].copy() for g in GROUPS}
    shifted["plus"][: P // 4] = False
    synth.write_records(run / "validation" / "R1_plus_minus" / "0.jsonl", shifted)
    a = analyse(run)
    flagged = [e for e in a.uncertainty.noise_floor if e["flag"]]
    assert [e["group"] for e in flagged] == ["plus"]
    assert any("noise floor: plus at R1_plus → R1_plus_minus" in w for w in a.warnings)
    report = build_report(run, weights=False)
    assert "beyond sampling" in (run / "report.md").read_text()
    assert any("noise floor" in w for w in report.warnings)


def test_a_boundary_without_shared_puzzles_is_named_not_a_silent_nan(recorded_run) -> None:
    """Stage 2's first validation ran on other puzzles (the data set changed between the
    stages): the noise floor at that boundary is not measured, and a warning names it."""
    run, _ = recorded_run
    path = run / "validation" / "R1_plus_minus" / "0.jsonl"
    records = [json.loads(line) for line in path.read_text().splitlines()]
    for r in records:
        r["gts"]["target"] += 10_000
    path.write_text("".join(json.dumps(r) + "\n" for r in records))
    a = analyse(run)
    assert a.uncertainty.noise_floor == []
    named = [w for w in a.warnings if "R1_plus → R1_plus_minus" in w and "share no" in w]
    assert len(named) == len(GROUPS), a.warnings


def test_matrix_json_gives_every_cell_with_its_interval(recorded_run) -> None:
    """``cl-eval matrix --json`` prints the very payload the report's consolidated file holds."""
    run, x = recorded_run
    res = CliRunner().invoke(main, ["matrix", str(run), "--json"])
    assert res.exit_code == 0, res.output
    out = json.loads(res.output)
    m = out["accuracy_matrix"]
    value, lo, hi, n = (m[k][2][1] for k in ("values", "lo", "hi", "n"))
    assert value == pytest.approx(x["plus_minus"][2].mean())
    assert lo < value < hi and n == P and m["interval_method"][2][1] == "bootstrap"
    assert m["rows"] == ["base", "R1_plus", "R1_plus_minus"] and m["columns"] == GROUPS
    assert out["interval_source"].startswith("per-sample validation records")
    build_report(run, weights=False)
    consolidated = json.loads((run / "metrics" / "consolidated_metrics_tiny.json").read_text())
    for key in ("accuracy_matrix", "interval_source", "metrics", "metric_intervals"):
        assert consolidated[key] == out[key], key
    assert (
        out["metric_intervals"]["bwt"][0]
        <= out["metrics"]["bwt"]
        <= out["metric_intervals"]["bwt"][1]
    )


def test_logs_alone_give_wilson_intervals(tmp_path, verl_line, synth) -> None:
    """No per-sample records (an older run): Wilson over the answers the data manifest implies."""
    R = np.array([[0.25, 0.0], [0.5, 0.0], [0.5, 0.25]])
    run = synth.make_run(tmp_path / "run", verl_line, R, [(1, "plus"), (1, "plus_minus")], GROUPS,
                         checkpoints=False)  # fmt: skip
    data = tmp_path / "data"
    data.mkdir()
    counts = {g: {"train": 10, "test": 200} for g in GROUPS}
    (data / "manifest.json").write_text(json.dumps({"counts": counts}))
    manifest = json.loads((run / "run.json").read_text())
    manifest["config"]["data_dir"] = str(data)
    (run / "run.json").write_text(json.dumps(manifest))
    a = analyse(run)
    assert a.uncertainty.method[1][0] == "wilson" and a.uncertainty.n[1][0] == 200
    assert (a.uncertainty.lo[1, 0], a.uncertainty.hi[1, 0]) == pytest.approx(wilson(0.5, 200))
    assert a.uncertainty.hi[0, 1] > 0  # Wilson is not degenerate at 0
    assert a.uncertainty.source.startswith("logged means")


def test_two_single_runs_on_the_same_puzzles_compare_pair_by_puzzle(
    recorded_run, tmp_path, synth
) -> None:
    import shutil

    from cl_eval.compare import compare

    run, x = recorded_run
    other = tmp_path / "other"
    shutil.copytree(run, other)
    better = {g: x[g][2].copy() for g in GROUPS}
    better["plus_minus"][: P // 5] = True
    synth.write_records(other / "validation" / "R1_plus_minus" / "6.jsonl", better)
    log = other / "logs" / "ContinualCountdown_R1_plus_minus.log"
    before, after = float(x["plus_minus"][2].mean()), float(better["plus_minus"].mean())
    old = f"val-core/countdown_plus_minus/acc/mean@1:np.float64({before!r})"
    assert old in log.read_text()
    log.write_text(log.read_text().replace(old, old.replace(repr(before), repr(after))))
    result = compare({"base": [analyse(run)], "better": [analyse(other)]})
    est = result.differences["better − base"][MetricKey("final_accuracy")]
    assert est.method == "bootstrap, paired by puzzle"
    true = (after - before) / 2
    assert est.value == pytest.approx(true) and est.lo <= true <= est.hi and est.lo > 0


@pytest.mark.parametrize(
    "bad",
    [
        '"acc": 7.5',  # out of range: was averaged in, giving accuracies of 3.75
        '"acc": NaN',
        '"acc": "1"',
        '"gts": {"target": 1e999, "numbers": [1, 2]}',  # was an OverflowError
        '"gts": {"target": 5, "numbers": [Infinity]}',
        '"gts": {"target": 5.5, "numbers": [1]}',
        '"gts": {"target": 5, "numbers": [true]}',
        '"score": Infinity',
    ],
)
def test_a_record_with_a_value_out_of_range_is_skipped_naming_file_and_line(
    recorded_run, bad: str
) -> None:
    """Every field read from a record is checked; a bad one costs that line, never a number."""
    run, _ = recorded_run
    clean = analyse(run)
    path = run / "validation" / "R1_plus" / "6.jsonl"
    lines = path.read_text().splitlines()
    record = json.loads(lines[0])
    key, raw = bad.split(": ", 1)
    if key == '"score"':
        record.pop("acc")  # the score is read only without an acc
    record[json.loads(key)] = "BAD"
    text = json.dumps(record).replace('"BAD"', raw)
    path.write_text("\n".join([*lines, text]) + "\n")
    a = analyse(run)
    named = [w for w in a.warnings if str(path) in w and f"line {len(lines) + 1}:" in w]
    assert named, a.warnings
    np.testing.assert_array_equal(a.uncertainty.lo, clean.uncertainty.lo)
    np.testing.assert_array_equal(a.uncertainty.hi, clean.uncertainty.hi)
    assert a.uncertainty.n == clean.uncertainty.n
