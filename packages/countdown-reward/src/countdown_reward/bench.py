"""Scoring speed on this machine: ``python -m countdown_reward.bench``.

Prints responses/s on a realistic mix of responses and the time of the slowest response of an
adversarial corpus, against the goal :data:`WORST_CASE_GOAL_S`; exits 1 if the goal is missed.
The repository's ``bench/reward.py`` adds the side-by-side with the naive regex-then-eval scorer.
"""

from __future__ import annotations

import random
import statistics
import sys
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any

from countdown_reward.scoring import compute_score

WORST_CASE_GOAL_S = 0.01
"""Slowest single adversarial response allowed: a reward call must never stall a rollout batch
(the measured worst case is about a millisecond on one core of a 2-core CI machine)."""


@dataclass(frozen=True)
class Case:
    """An adversarial response, its puzzle and the score it must get."""

    text: str
    ground_truth: dict[str, Any]
    score: float


def _tag(equation: str) -> str:
    return f"<think>working</think><answer>{equation}</answer>"


_GT = {"target": 24, "numbers": [4, 6, 2, 1]}
ADVERSARIAL: dict[str, Case] = {
    "huge literal (1 MB)": Case(_tag("9" * 1_000_000), _GT, 0.1),
    "power tower 9**9**9": Case(_tag("9**9**9"), {"target": 24, "numbers": [9, 9, 9]}, 0.1),
    "TinyZero stall 3**7**25-50": Case(
        _tag("3**7**25-50"), {"target": 24, "numbers": [3, 7, 25, 50]}, 0.1
    ),
    "10k nested parens": Case(_tag("(" * 10_000 + "4*6*(2-1)" + ")" * 10_000), _GT, 0.1),
    "100k operators": Case(_tag("+".join(["1"] * 100_000)), _GT, 0.1),
    "60k answer tags": Case("<answer>1</answer>" * 60_000, _GT, 0.1),
    "120k open tags": Case("<answer>" * 120_000 + "</answer>", _GT, 0.1),
    "1 MB without a tag": Case("x" * 1_000_000, _GT, 0.0),
    "1 MB of thinking, then right": Case(
        "<think>" + "let me try 4 * 6. " * 55_000 + "</think>" + _tag("4*6*(2-1)"), _GT, 1.0
    ),
}
"""Responses that stall or crash an ``eval``-based scorer; each must be cheap and scored right."""

_WORDS = [
    "so",
    "we",
    "need",
    "to",
    "reach",
    "the",
    "target",
    "let",
    "me",
    "try",
    "adding",
    "then",
    "subtracting",
]


def realistic_mix(n: int, seed: int = 0) -> list[tuple[str, dict[str, Any]]]:
    """``n`` (response, ground truth) pairs: thinking of 20 to 1500 words, then a right, a wrong,
    an invalid or no answer, in the proportions of an early RL run."""
    rng = random.Random(seed)
    out = []
    for _ in range(n):
        a, b, c, d = (rng.randint(1, 100) for _ in range(4))
        gt = {"target": a + b - c + d, "numbers": [a, b, c, d]}
        think = " ".join(rng.choice(_WORDS) for _ in range(rng.choice([20, 200, 1500])))
        kind = rng.random()
        if kind < 0.35:
            answer = f"<answer>({a} + {b}) - {c} + {d}</answer>"
        elif kind < 0.7:
            answer = f"<answer>{a} + {b} + {c} - {d}</answer>"
        elif kind < 0.85:
            answer = f"<answer>{a} * {b} - {c}</answer>"
        else:
            answer = ""  # cut off before answering
        out.append((f"<think>{think}</think>\n{answer}", gt))
    return out


def rate(
    score: Callable[[str, dict[str, Any]], Any],
    corpus: Sequence[tuple[str, dict[str, Any]]],
    repeat: int = 5,
) -> float:
    """Responses per second, best of ``repeat`` passes over ``corpus``."""
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for text, gt in corpus:
            score(text, gt)
        best = min(best, time.perf_counter() - start)
    return len(corpus) / best


def worst_case(name: str) -> tuple[float, float]:
    """(seconds, score) of one adversarial case: the best of three calls, so a context switch
    does not pass for the verifier's cost."""
    case = ADVERSARIAL[name]
    times = []
    for _ in range(3):
        start = time.perf_counter()
        got = compute_score("countdown", case.text, case.ground_truth)
        times.append(time.perf_counter() - start)
    return min(times), got


def main() -> int:
    corpus = realistic_mix(20_000)
    ours = rate(lambda t, g: compute_score("countdown", t, g), corpus)
    mean_len = statistics.mean(len(t) for t, _ in corpus)
    print(f"realistic mix: {len(corpus)} responses, mean {mean_len:.0f} chars")
    print(f"  {ours:,.0f} responses/s ({1e6 / ours:.1f} µs each)")
    print("adversarial corpus:")
    worst = 0.0
    for name in ADVERSARIAL:
        seconds, got = worst_case(name)
        worst = max(worst, seconds)
        print(f"  {name:<30} {seconds * 1e3:7.3f} ms  score {got}")
    verdict = "met" if worst < WORST_CASE_GOAL_S else "MISSED"
    print(f"  worst case {worst * 1e3:.3f} ms; goal < {WORST_CASE_GOAL_S * 1e3:.0f} ms: {verdict}")
    return 0 if worst < WORST_CASE_GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
