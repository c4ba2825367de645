"""The analyses a 3-round curriculum asks for, on synthetic runs with known answers: the rounds'
gain and start with paired intervals, forgetting from the base model, pass@k from n samples per
puzzle, and per-puzzle turnover."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cl_eval.analysis import analyse
from cl_eval.matrix import Curriculum, compute_metrics
from cl_eval.passk import pass_at_k_table
from cl_eval.report import build_report
from cl_eval.turnover import SOLVED

GROUPS = ["plus", "plus_minus"]
STAGES = [(r, g) for r in (1, 2, 3) for g in GROUPS]
P, N = 300, 4  # puzzles per group, samples per puzzle
ACC = {  # rows: base, then after each stage; plus gains less each time it returns
    "plus": [0.20, 0.70, 0.50, 0.60, 0.55, 0.62, 0.60],
    "plus_minus": [0.05, 0.10, 0.40, 0.30, 0.50, 0.45, 0.55],
}
Z95 = 1.959963984540054


def test_rounds_and_base_metrics_by_hand() -> None:
    """Two rounds of two groups: every new metric against the matrix read by eye."""
    R = np.array(
        [
            [0.1, 0.0],
            [0.7, 0.1],  # R1 a: gain 0.6 from start 0.1
            [0.5, 0.6],  # R1 b: gain 0.6 from start 0.0 (the base's 0.1 → 0.1 after R1 a)
            [0.8, 0.4],  # R2 a: gain 0.3 from start 0.5
            [0.6, 0.7],  # R2 b: gain 0.3 from start 0.4
        ]
    )
    m = compute_metrics(R, Curriculum(("a", "b"), (0, 1, 0, 1)))
    assert m["start_accuracy_per_stage"] == pytest.approx([0.1, 0.1, 0.5, 0.4])
    assert m["gain_change_per_stage"][:2] == [None, None]
    assert m["gain_change_per_stage"][2:] == pytest.approx([0.3 - 0.6, 0.3 - 0.5])
    assert m["start_change_per_stage"][2:] == pytest.approx([0.5 - 0.1, 0.4 - 0.1])
    assert m["gain_change"] == pytest.approx((-0.3 - 0.2) / 2)
    assert m["start_change"] == pytest.approx((0.4 + 0.3) / 2)
    assert m["from_base_per_group"] == pytest.approx([0.5, 0.7])
    assert m["from_base"] == pytest.approx(0.6)
    single = compute_metrics(R[:3], Curriculum(("a", "b"), (0, 1)))
    assert single["gain_change"] is None and single["start_change"] is None


def outcomes(rng: np.random.Generator) -> dict[str, np.ndarray]:
    """Per group, rows × puzzles × samples of correctness: a puzzle the model 'knows' at a row
    (a latent skill below the row's accuracy) is answered right 90 % of the time, else 5 %."""
    out = {}
    for g, acc in ACC.items():
        skill = rng.random(P)
        p = np.where(skill[None, :] < np.array(acc)[:, None], 0.9, 0.05)
        out[g] = rng.random((len(acc), P, N)) < p[..., None]
    return out


@pytest.fixture(scope="module")
def three_rounds(tmp_path_factory, verl_line, synth):
    x = outcomes(np.random.default_rng(5))
    R = np.array([[x[g][i].mean() for g in GROUPS] for i in range(len(STAGES) + 1)])
    run = synth.make_run(
        tmp_path_factory.mktemp("rounds") / "run", verl_line, R, STAGES, GROUPS, checkpoints=False
    )
    for k, (rnd, g) in enumerate(STAGES, start=1):
        for step, row in ((0, k - 1), (6, k)):
            path = run / "validation" / f"R{rnd}_{g}" / f"{step}.jsonl"
            synth.write_records(path, {h: x[h][row] for h in GROUPS})
    return run, x


def paired(d: np.ndarray) -> tuple[float, float, float]:
    """Mean of per-puzzle differences and its normal 95 % interval."""
    half = Z95 * d.std(ddof=1) / math.sqrt(len(d))
    return d.mean(), d.mean() - half, d.mean() + half


def test_later_rounds_gain_less_with_paired_intervals(three_rounds) -> None:
    run, x = three_rounds
    a = analyse(run)
    acc = {g: x[g].mean(axis=2) for g in GROUPS}  # rows × puzzles
    by = {(r.group, r.round): r for r in a.round_results()}
    assert [(r.group, r.round) for r in a.round_results()] == [
        (g, r) for g in GROUPS for r in (1, 2, 3)
    ]
    plus = acc["plus"]
    r3 = by[("plus", 3)]  # stage 5 trains plus the third time; stage 1 the first
    assert r3.stage == 5 and r3.start.value == pytest.approx(plus[4].mean())
    gain, lo, hi = paired(plus[5] - plus[4])
    assert r3.gain.value == pytest.approx(gain)
    assert r3.gain.lo == pytest.approx(lo, abs=0.01) and r3.gain.hi == pytest.approx(hi, abs=0.01)
    change, lo, hi = paired((plus[5] - plus[4]) - (plus[1] - plus[0]))
    assert r3.gain_change.value == pytest.approx(change)
    assert r3.gain_change.lo == pytest.approx(lo, abs=0.012)
    assert r3.gain_change.hi == pytest.approx(hi, abs=0.012)
    assert r3.gain_change.hi < 0  # the third return to plus gains less: the interval says so
    start, lo, hi = paired(plus[4] - plus[0])
    assert r3.start_change.value == pytest.approx(start) and r3.start_change.lo > 0
    assert by[("plus", 1)].gain_change.value is None
    summary = a.metric("gain_change")
    assert summary.value == pytest.approx(
        np.mean([(acc[g][k] - acc[g][k - 1] - acc[g][f] + acc[g][f - 1]).mean()
                 for g, f in (("plus", 1), ("plus_minus", 2)) for k in (f + 2, f + 4)])
    )  # fmt: skip
    assert summary.lo is not None and summary.lo < summary.value < summary.hi


def test_forgetting_from_the_base_model_has_a_paired_interval(three_rounds) -> None:
    run, x = three_rounds
    a = analyse(run)
    for j, g in enumerate(GROUPS, start=1):
        d, lo, hi = paired(x[g][6].mean(axis=1) - x[g][0].mean(axis=1))
        est = a.metric("from_base_per_group", j)
        assert est.value == pytest.approx(d)
        assert est.lo == pytest.approx(lo, abs=0.012) and est.hi == pytest.approx(hi, abs=0.012)


def test_pass_at_k_matches_the_unbiased_estimator(three_rounds) -> None:
    run, x = three_rounds
    a = analyse(run)
    pk = a.pass_at_k
    assert pk is not None and pk.n == N and pk.ks == [1, 2, 3, 4] and pk.metric_ks == [1, N]

    def by_comb(c: int, k: int) -> float:
        return 1 - math.comb(N - c, k) / math.comb(N, k)

    for g_i, g in enumerate(GROUPS):
        c = x[g].sum(axis=2)
        for k in pk.ks:
            expect = [np.mean([by_comb(int(ci), k) for ci in row]) for row in c]
            assert pk.values[k - 1, :, g_i] == pytest.approx(expect)
    assert pk.values[0] == pytest.approx(a.R)  # pass@1 is the accuracy
    assert (np.diff(pk.values, axis=0) >= -1e-12).all()  # pass@k never falls with k
    c = x["plus"].sum(axis=2)
    at_n = np.array([[by_comb(int(ci), N) for ci in row] for row in c])
    d, lo, hi = paired(at_n[6] - at_n[5])  # plus after the last stage vs after R3_plus
    assert pk.metrics[N]["bwt_per_group"][0] == pytest.approx(d)
    got = pk.intervals[N][next(k for k in pk.intervals[N] if str(k) == "bwt_per_group[1]")]
    assert got == pytest.approx((lo, hi), abs=0.012)
    assert pass_at_k_table(3)[3, 1, 2] == pytest.approx(1 - math.comb(2, 2) / math.comb(3, 2))


def test_turnover_counts_the_puzzles_each_stage_lost_and_gained(tmp_path, verl_line, synth):
    """Known flips: stage 1 takes plus from puzzles 0..199 solved to 150..299 (150 lost, 100
    gained); stage 2 (plus_minus) loses 150..169 of plus: the 20 plus lost for good."""
    solved = {
        "plus": [np.arange(P) < 200, (np.arange(P) >= 150) & (np.arange(P) < 300),
                 (np.arange(P) >= 170) & (np.arange(P) < 300)],
        "plus_minus": [np.zeros(P, bool), np.zeros(P, bool), np.arange(P) < 30],
    }  # fmt: skip
    R = np.array([[solved[g][i].mean() for g in GROUPS] for i in range(3)])
    run = synth.make_run(tmp_path / "run", verl_line, R, [(1, "plus"), (1, "plus_minus")],
                         GROUPS, checkpoints=False)  # fmt: skip
    for k, g in enumerate(GROUPS, start=1):
        for step, row in ((0, k - 1), (6, k)):
            path = run / "validation" / f"R1_{g}" / f"{step}.jsonl"
            synth.write_records(path, {h: solved[h][row] for h in GROUPS})
    a = analyse(run)
    flips = {(f.stage, f.group): f for f in a.flips}
    assert (flips[1, "plus"].lost, flips[1, "plus"].gained) == (150, 100)
    assert flips[1, "plus"].net == -50 and flips[1, "plus"].solved_before == 200
    assert (flips[2, "plus"].lost, flips[2, "plus"].gained) == (20, 0)
    assert (flips[2, "plus_minus"].lost, flips[2, "plus_minus"].gained) == (0, 30)
    (loss,) = a.losses
    assert (loss.group, loss.last, loss.end) == ("plus", 1, 2)
    assert (loss.solved_then, loss.unsolved_now, loss.by_stage) == (150, 20, {2: 20})
    assert SOLVED == 0.5


def test_report_of_a_three_round_run_shows_the_new_sections(three_rounds) -> None:
    run, _ = three_rounds
    build_report(run, weights=False)
    md = (run / "report.md").read_text()
    for heading in ("## Rounds: plasticity and retention", "## pass@k", "## Turnover"):
        assert heading in md, heading
    assert "from_base" in md
    assert (run / "plots" / "rounds_tiny.png").stat().st_size > 10_000
    assert (run / "plots" / "pass_at_k_tiny.png").stat().st_size > 10_000
