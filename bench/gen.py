"""Per-puzzle cost of countdown-data's generator vs reasoning-gym and a naive search, plus the
wall time of the full default ``gen`` and of ``validate``.

Run: ``uv run --locked --group bench python bench/gen.py [--sample N] [--skip-full]``
(reasoning-gym lives in the ``bench`` dependency group; without it that row is skipped).
"""

from __future__ import annotations

import argparse
import itertools
import random
import subprocess
import sys
import tempfile
import time
from fractions import Fraction
from pathlib import Path

from countdown_data.generate import GenConfig, generate
from countdown_data.groups import GROUPS


def _values(seq: tuple[Fraction, ...]) -> set[Fraction]:
    if len(seq) == 1:
        return {seq[0]}
    out = set()
    for cut in range(1, len(seq)):
        for a in _values(seq[:cut]):
            for b in _values(seq[cut:]):
                out.update((a + b, a - b, a * b))
                if b:
                    out.add(a / b)
    return out


def naive_puzzle(rng: random.Random) -> tuple[list[int], int]:
    """Draw numbers and a target, then search every expression in Python until one is solvable."""
    while True:
        nums = [rng.randint(1, 100) for _ in range(rng.randint(3, 4))]
        target = rng.randint(10, 1000)
        for perm in itertools.permutations(Fraction(n) for n in nums):
            if target in _values(perm):
                return nums, target


def per_puzzle_ms(fn, n: int) -> float:
    start = time.perf_counter()
    fn(n)
    return (time.perf_counter() - start) / n * 1e3


def ours(n: int) -> None:
    """Single process, all four groups, every guarantee (dedup, leakage, new-op, verification)."""
    per_group = n // len(GROUPS)
    generate(GenConfig(train_size=per_group, test_size=max(1, per_group // 100)), workers=1)


def reasoning_gym(n: int) -> None:
    import reasoning_gym as rg

    ds = rg.create_dataset(
        "countdown",
        min_numbers=3,
        max_numbers=4,
        min_value=1,
        max_value=100,
        min_target=10,
        max_target=1000,
        size=n,
        seed=0,
    )
    for i in range(n):
        ds[i]


def naive(n: int) -> None:
    rng = random.Random(0)
    for _ in range(n):
        naive_puzzle(rng)


def timed(cmd: list[str]) -> float:
    start = time.perf_counter()
    subprocess.run(cmd, check=True, stdout=subprocess.DEVNULL)
    return time.perf_counter() - start


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--sample", type=int, default=200, help="puzzles for the slow baselines")
    ap.add_argument("--ours", type=int, default=40_000, help="puzzles for our generator")
    ap.add_argument("--skip-full", action="store_true", help="skip the full default gen")
    args = ap.parse_args()
    rows = [("countdown-data (1 process)", per_puzzle_ms(ours, args.ours), args.ours)]
    try:
        rows.append(
            ("reasoning-gym 0.1.25", per_puzzle_ms(reasoning_gym, args.sample), args.sample)
        )
    except ImportError:
        print("reasoning-gym not installed (bench group); skipping it", file=sys.stderr)
    rows.append(("naive Python search", per_puzzle_ms(naive, args.sample // 4), args.sample // 4))
    base = rows[0][1]
    print(f"{'generator':<28}{'ms/puzzle':>12}{'vs ours':>10}{'sample':>9}")
    for name, ms, n in rows:
        print(f"{name:<28}{ms:>12.4f}{ms / base:>9.0f}x{n:>9}")
    if args.skip_full:
        return
    with tempfile.TemporaryDirectory() as tmp:
        out = str(Path(tmp) / "continual")
        gen_s = timed(["countdown-data", "gen", "--out", out])
        val_s = timed(["countdown-data", "validate", out])
    print(f"full default gen (4 x 101,000 puzzles): {gen_s:.1f} s wall")
    print(f"validate on the full set:               {val_s:.1f} s wall")


if __name__ == "__main__":
    main()
