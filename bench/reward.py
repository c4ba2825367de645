"""Reward scoring speed: countdown-reward vs the naive regex-then-eval approach (TinyZero's).

Run: uv run python bench/reward.py
Prints responses/s on a realistic mix and each adversarial response's time, for both scorers.
The corpora and the worst-case goal are the package's (``python -m countdown_reward.bench``
measures the package alone, from the wheel). The naive scorer is re-implemented here from its
description (regex check, then Python eval) so both run side by side in one process.
"""

from __future__ import annotations

import multiprocessing as mp
import re
import statistics
import sys
import time

from countdown_reward import compute_score
from countdown_reward.bench import ADVERSARIAL, WORST_CASE_GOAL_S, rate, realistic_mix, worst_case


def naive_score(solution_str: str, ground_truth: dict, format_score: float = 0.1) -> float:
    """The common approach: regex the answer, regex-validate the characters, then eval."""
    if "Assistant:" in solution_str:
        solution_str = solution_str.split("Assistant:", 1)[1]
    matches = list(re.finditer(r"<answer>(.*?)</answer>", solution_str.split("\n")[-1]))
    if not matches:
        matches = list(re.finditer(r"<answer>(.*?)</answer>", solution_str, re.DOTALL))
    if not matches:
        return 0.0
    equation = matches[-1].group(1).strip()
    try:
        used = sorted(int(n) for n in re.findall(r"\d+", equation))
    except ValueError:
        return format_score
    if used != sorted(ground_truth["numbers"]):
        return format_score
    if not re.match(r"^[\d+\-*/().\s]+$", equation):
        return format_score
    try:
        result = eval(equation, {"__builtins__": None}, {})
        return 1.0 if abs(float(result) - ground_truth["target"]) < 1e-5 else format_score
    except Exception:
        return format_score


def _naive_worker(text: str, gt: dict, queue: mp.Queue) -> None:
    start = time.perf_counter()
    try:
        naive_score(text, gt)
        queue.put(time.perf_counter() - start)
    except Exception as exc:  # recursion errors, ValueError for >4300-digit ints...
        queue.put(f"{type(exc).__name__} after {time.perf_counter() - start:.3f}s")


def naive_worst(text: str, gt: dict, timeout: float) -> str:
    queue: mp.Queue = mp.Queue()
    proc = mp.Process(target=_naive_worker, args=(text, gt, queue))
    proc.start()
    proc.join(timeout)
    if proc.is_alive():
        proc.kill()
        return f"> {timeout:.0f} s (killed, never returned)"
    result = queue.get()
    return f"{result * 1e3:.2f} ms" if isinstance(result, float) else f"raised {result}"


def main() -> int:
    corpus = realistic_mix(20_000)
    mean_len = statistics.mean(len(t) for t, _ in corpus)
    ours = rate(lambda t, g: compute_score("countdown", t, g), corpus)
    naive = rate(naive_score, corpus)
    agree = sum(compute_score("c", t, g) == naive_score(t, g) for t, g in corpus) / len(corpus)
    print(f"realistic mix: {len(corpus)} responses, mean {mean_len:.0f} chars")
    print(f"  countdown-reward : {ours:>10,.0f} responses/s  ({1e6 / ours:.1f} µs each)")
    print(f"  naive regex+eval : {naive:>10,.0f} responses/s  ({1e6 / naive:.1f} µs each)")
    print(f"  ratio ours/naive : {ours / naive:.2f}x   (same score on {agree:.1%} of responses)")
    print("adversarial corpus (one response each):")
    worst = 0.0
    for name, case in ADVERSARIAL.items():
        seconds, score = worst_case(name)
        worst = max(worst, seconds)
        naive_s = naive_worst(case.text, case.ground_truth, 10)
        print(f"  {name:<30} ours {seconds * 1e3:7.3f} ms (score {score})  naive {naive_s}")
    goal = f"goal < {WORST_CASE_GOAL_S * 1e3:.0f} ms"
    verdict = "met" if worst < WORST_CASE_GOAL_S else "MISSED"
    print(f"  worst case, ours: {worst * 1e3:.3f} ms; {goal}: {verdict}")
    return 0 if worst < WORST_CASE_GOAL_S else 1


if __name__ == "__main__":
    sys.exit(main())
