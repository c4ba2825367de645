"""The solver engines against an independent brute force over permutations and tree shapes."""

from __future__ import annotations

import itertools
from fractions import Fraction

import numpy as np
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from countdown_data.solver import (
    equation_steps,
    evaluate_table,
    expression_table,
    reachable,
    solve,
)
from countdown_reward import check_equation


def _brute(seq: tuple[Fraction, ...], ops: str, integer_only: bool) -> set[Fraction]:
    """Every value of every bracketing of the ordered sequence ``seq``."""
    if len(seq) == 1:
        return {seq[0]}
    out = set()
    for cut in range(1, len(seq)):
        for a in _brute(seq[:cut], ops, integer_only):
            for b in _brute(seq[cut:], ops, integer_only):
                for op in ops:
                    if op == "/":
                        if b == 0 or (integer_only and a % b != 0):
                            continue
                        out.add(a / b)
                    else:
                        out.add({"+": a + b, "-": a - b, "*": a * b}[op])
    return out


def brute_force(numbers: list[int], ops: str, integer_only: bool = False) -> set[Fraction]:
    return set().union(
        *(
            _brute(tuple(Fraction(n) for n in p), ops, integer_only)
            for p in itertools.permutations(numbers)
        )
    )


OPS = st.sampled_from(["+", "+-", "+-*", "+-*/", "*/", "-/"])
SMALL = st.lists(st.integers(1, 12), min_size=2, max_size=4)


@settings(max_examples=60, deadline=None)
@given(SMALL, OPS)
def test_reachable_matches_brute_force_over_rationals(numbers: list[int], ops: str) -> None:
    assert set(reachable(numbers, ops)) == brute_force(numbers, ops)


@settings(max_examples=60, deadline=None)
@given(SMALL, OPS)
def test_integer_only_matches_brute_force(numbers: list[int], ops: str) -> None:
    assert set(reachable(numbers, ops, integer_only=True)) == brute_force(numbers, ops, True)


@settings(max_examples=40, deadline=None)
@given(st.lists(st.lists(st.integers(1, 30), min_size=3, max_size=3), min_size=1, max_size=8), OPS)
def test_vectorised_table_matches_solver(rows: list[list[int]], ops: str) -> None:
    table = expression_table(3, ops)
    nums = np.sort(np.array(rows, dtype=np.int64), axis=1)
    vals, ok = evaluate_table(table, nums)
    for i, row in enumerate(nums.tolist()):
        assert set(vals[i][ok[i]].tolist()) == set(reachable(row, ops, integer_only=True))
        for c in np.flatnonzero(ok[i])[:50]:
            value, _, leaves = equation_steps(table.templates[c].format(*row))
            assert value == vals[i, c] and sorted(leaves) == row


@settings(max_examples=60, deadline=None)
@given(SMALL, st.integers(1, 60), OPS)
def test_solve_finds_a_verified_solution_iff_one_exists(
    numbers: list[int], target: int, ops: str
) -> None:
    eq = solve(numbers, target, ops)
    if Fraction(target) in brute_force(numbers, ops):
        assert eq is not None
        assert check_equation(eq, target, numbers).reason == "correct"
        assert {c for c in eq if c in "+-*/"} <= set(ops)
    else:
        assert eq is None


def test_solve_needs_a_rational_path_sometimes() -> None:
    eq = solve([3, 3, 8, 8], 24)
    assert eq is not None and check_equation(eq, 24, [3, 3, 8, 8]).reason == "correct"
    assert solve([3, 3, 8, 8], 24, "+-*") is None


def test_columns_within_selects_sub_group_columns() -> None:
    table = expression_table(4, "+-*/")
    for ops in ("+", "+-", "+-*"):
        sub = [
            t for t, keep in zip(table.templates, table.columns_within(ops), strict=True) if keep
        ]
        assert all(set(c for c in t if c in "+-*/") <= set(ops) for t in sub)
        assert len(sub) == len(expression_table(4, ops).templates)


def test_equation_steps_tracks_fractional_intermediates() -> None:
    value, steps, leaves = equation_steps("8 / (3 - 8 / 3)")
    assert value == 24 and leaves == [8, 3, 8, 3]
    assert [type(s.result) for s in steps] == [Fraction, Fraction, Fraction]
    value, steps, _ = equation_steps("51 - 27 * 46 / 69")
    assert value == 33 and all(isinstance(s.result, int) for s in steps)
    assert [str(s) for s in steps] == ["27*46=1242", "1242/69=18", "51-18=33"]
    for bad in ("2 ** 3", "1 / 0", "abs(3)", "3 +"):
        with pytest.raises(ValueError):
            equation_steps(bad)
