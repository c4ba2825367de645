"""Each generation guarantee, checked with engines independent of the generator."""

from __future__ import annotations

from dataclasses import replace
from fractions import Fraction
from itertools import combinations_with_replacement

import pytest

from countdown_data.generate import (
    GenConfig,
    GenerationError,
    capacity,
    check_config,
    generate,
    previous_ops,
    puzzle_key,
)
from countdown_data.groups import GROUPS, OPERATORS
from countdown_data.solver import equation_steps, reachable
from countdown_reward import check_equation


def test_sizes_and_ranges(small_data) -> None:
    for g in GROUPS:
        for split, size in (("train", 300), ("test", 60)):
            data = small_data[g, split]
            assert len(data) == size == len(data.nums) == len(data.solutions)
            for nums, t in zip(data.nums, data.targets, strict=True):
                assert 3 <= len(nums) <= 4 and all(1 <= n <= 100 for n in nums)
                assert 10 <= t <= 1000


def test_solutions_verified_with_group_ops_and_exact_division(small_data) -> None:
    for (g, _), data in small_data.items():
        for nums, t, sol in zip(data.nums, data.targets, data.solutions, strict=True):
            assert check_equation(sol, t, nums).reason == "correct", (g, sol)
            assert {c for c in sol if c in "+-*/"} <= set(OPERATORS[g])
            _, steps, _ = equation_steps(sol)
            assert all(isinstance(s.result, int) for s in steps), sol


def test_new_operator_rule_over_rationals(small_data) -> None:
    for (g, _), data in small_data.items():
        prev = previous_ops(g)
        if prev is None:
            continue
        for nums, t in zip(data.nums[:80], data.targets[:80], strict=True):
            assert Fraction(t) not in reachable(nums, prev), (g, nums, t)


def test_rule_can_be_switched_off(small_cfg: GenConfig) -> None:
    data = generate(replace(small_cfg, require_new_op=False, groups=("plus_minus",)), workers=1)
    old = [
        Fraction(t) in reachable(n, "+")
        for n, t in zip(
            data["plus_minus", "train"].nums, data["plus_minus", "train"].targets, strict=True
        )
    ]
    assert any(old) and not all(old)


def test_no_duplicates_and_no_leakage(small_data) -> None:
    test_keys = set()
    for g in GROUPS:
        d = small_data[g, "test"]
        test_keys |= {puzzle_key(n, t) for n, t in zip(d.nums, d.targets, strict=True)}
    for (_, split), d in small_data.items():
        keys = [puzzle_key(n, t) for n, t in zip(d.nums, d.targets, strict=True)]
        assert len(set(keys)) == len(keys)
        if split == "train":
            assert not test_keys & set(keys)


def test_determinism_and_seed(small_cfg: GenConfig) -> None:
    cfg = replace(small_cfg, train_size=120, test_size=20, groups=("plus", "plus_minus_mul_div"))
    a, b = generate(cfg, workers=1), generate(cfg, workers=2)
    assert a == b
    c = generate(replace(cfg, seed=8), workers=1)
    assert c["plus", "train"].targets != a["plus", "train"].targets


def test_exact_capacity_on_a_small_space() -> None:
    cfg = GenConfig(numbers_per_puzzle=(3, 3), number_range=(1, 6), target_range=(10, 20))
    sums = [sum(m) for m in combinations_with_replacement(range(1, 7), 3)]
    assert capacity(cfg, "plus") == sum(10 <= s <= 20 for s in sums)
    expected = 0
    for m in combinations_with_replacement(range(1, 7), 3):
        now = {v for v in reachable(m, "+-", integer_only=True) if 10 <= v <= 20}
        expected += len(now - set(reachable(m, "+")))
    assert capacity(cfg, "plus_minus") == expected
    # the dynamic-programming count for large spaces agrees with enumeration
    big = GenConfig(numbers_per_puzzle=(2, 3), number_range=(1, 60), target_range=(10, 90))
    assert capacity(big, "plus") == sum(
        10 <= sum(m) <= 90 for k in (2, 3) for m in combinations_with_replacement(range(1, 61), k)
    )


def test_small_space_filled_exactly() -> None:
    cfg = GenConfig(
        train_size=20,
        test_size=5,
        groups=("plus",),
        numbers_per_puzzle=(3, 3),
        number_range=(1, 6),
        target_range=(10, 20),
    )
    data = generate(cfg, workers=1)
    assert len(data["plus", "train"]) == 20


@pytest.mark.parametrize(
    ("change", "message"),
    [
        ({"groups": ("plus", "times")}, "unknown group"),
        ({"number_range": (5, 1)}, "is empty"),
        ({"target_range": (0, 10)}, "target_range"),
        ({"numbers_per_puzzle": (1, 3)}, "2-5"),
        ({"train_size": 0}, "at least 1"),
        ({"number_range": (1, 5), "numbers_per_puzzle": (3, 3)}, "unique puzzles"),
        ({"template": "fancy"}, "unknown template"),
    ],
)
def test_bad_options_rejected_before_work(change: dict, message: str, small_cfg: GenConfig) -> None:
    with pytest.raises(GenerationError, match=message) as err:
        check_config(replace(small_cfg, **change))
    assert set(err.value.fields) & set(change)  # names a field, so a CLI can say its flag


def test_errors_speak_field_names_that_a_front_end_renames() -> None:
    err = GenerationError("train_size and test_size must be at least 1", "train_size", "test_size")
    assert err.renamed(lambda f: "--" + f.replace("_", "-")) == (
        "--train-size and --test-size must be at least 1"
    )
