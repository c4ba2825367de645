"""CL metrics against matrices computed by hand."""

from __future__ import annotations

import math

import numpy as np
import pytest

from cl_eval.matrix import (
    DEFINITIONS,
    Curriculum,
    compute_metrics,
    forgetting_matrix,
    per_round_metrics,
)

approx = pytest.approx


def one_round(n: int) -> Curriculum:
    return Curriculum(tuple("abcd"[:n]), tuple(range(n)))


def test_gem_metrics_single_round() -> None:
    R = np.array(
        [
            [0.10, 0.00, 0.00],
            [0.80, 0.20, 0.10],
            [0.85, 0.90, 0.30],
            [0.50, 0.70, 0.95],
        ]
    )
    m = compute_metrics(R, one_round(3))
    assert m["final_accuracy"] == approx((0.5 + 0.7 + 0.95) / 3)
    assert m["bwt"] == approx(((0.5 - 0.8) + (0.7 - 0.9)) / 2)
    assert m["forgetting_avalanche"] == approx(0.25)
    # Chaudhry: a's best earlier accuracy is 0.85 (after stage 2), not 0.80 right after training.
    assert m["forgetting_max"] == approx(((0.85 - 0.5) + (0.9 - 0.7)) / 2)
    assert m["fwt"] == approx(((0.2 - 0.0) + (0.3 - 0.0)) / 2)
    assert m["learning_accuracy"] == approx((0.8 + 0.9 + 0.95) / 3)
    assert m["learning_accuracy_per_stage"] == approx([0.8, 0.9, 0.95])
    assert m["plasticity_gain_per_stage"] == approx([0.7, 0.7, 0.65])
    assert m["average_accuracy_per_stage"] == approx([0.8, 0.875, (0.5 + 0.7 + 0.95) / 3])
    assert m["average_incremental_accuracy"] == approx((0.8 + 0.875 + (0.5 + 0.7 + 0.95) / 3) / 3)
    assert m["bwt_per_stage"][0] is None
    assert m["bwt_per_stage"][1] == approx(0.05)
    assert set(DEFINITIONS) <= set(m)


def test_negative_transfer_and_forgetting() -> None:
    R = np.array([[0.2, 0.5], [0.9, 0.1], [0.3, 0.8]])
    m = compute_metrics(R, one_round(2))
    assert m["fwt"] == approx(0.1 - 0.5)
    assert m["bwt"] == approx(0.3 - 0.9)
    assert m["forgetting_avalanche"] == approx(0.6)
    assert m["forgetting_max"] == approx(0.6)


def test_model_that_never_learns() -> None:
    m = compute_metrics(np.zeros((5, 4)), one_round(4))
    for key in (
        "final_accuracy",
        "bwt",
        "fwt",
        "forgetting_avalanche",
        "forgetting_max",
        "learning_accuracy",
        "plasticity_gain",
        "average_incremental_accuracy",
    ):
        assert m[key] == 0.0, key


def test_multiple_rounds_use_most_recent_and_first_occurrence() -> None:
    R = np.array([[0.0, 0.0], [0.6, 0.1], [0.4, 0.7], [0.8, 0.5], [0.7, 0.9]])
    cur = Curriculum(("a", "b"), (0, 1, 0, 1))
    m = compute_metrics(R, cur)
    assert m["bwt"] == approx(0.7 - 0.8)  # a's reference is its round-2 training (stage 3)
    assert m["fwt"] == approx(0.1 - 0.0)  # b's first occurrence is stage 2
    assert m["forgetting_max"] == approx(0.8 - 0.7)
    assert m["learning_accuracy"] == approx(0.75)
    rounds = per_round_metrics(R, cur, [1, 1, 2, 2])
    assert rounds[1]["bwt"] == approx(0.4 - 0.6)
    assert rounds[1]["fwt"] == approx(0.1)
    assert rounds[2]["bwt"] == approx(0.7 - 0.8)
    assert rounds[2]["fwt"] == approx(0.5 - 0.0)  # vs the base model, not the round's start
    assert rounds[2]["final_accuracy"] == approx(0.8)


def test_forgetting_matrix_and_missing_cells() -> None:
    R = np.array([[0.1, 0.0, 0.0], [0.8, 0.2, 0.1], [math.nan, 0.9, 0.3], [0.5, 0.7, 0.95]])
    F = forgetting_matrix(R, one_round(3))
    assert np.isnan(F[:2]).all()
    assert np.isnan(F[2, 0])  # R[2][a] unknown
    assert F[3, 0] == approx(0.8 - 0.5)
    assert F[3, 1] == approx(0.9 - 0.7)
    assert np.isnan(F[3, 2])
    m = compute_metrics(R, one_round(3))
    assert m["bwt_per_stage"][1] is None  # the only old group's cell is missing: no value, no crash
    assert m["average_accuracy_per_stage"][1] == approx(0.9)


def test_rejects_a_matrix_without_stages() -> None:
    with pytest.raises(ValueError, match="row 0"):
        compute_metrics(np.zeros((1, 2)), one_round(2))
