"""Reward scoring speed: countdown-reward vs the naive regex-then-eval approach (TinyZero's).

Run: uv run python bench/reward.py
Prints responses/s on a realistic mix and the worst-case time on an adversarial corpus.
The naive scorer is re-implemented here from its description (regex check, then Python eval)
so both run side by side in one process.
"""

from __future__ import annotations

import multiprocessing as mp
import random
import re
import statistics
import time

from countdown_reward import compute_score


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


def realistic_mix(n: int, seed: int = 0) -> list[tuple[str, dict]]:
    rng = random.Random(seed)
    words = [
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
    out = []
    for _ in range(n):
        a, b, c, d = (rng.randint(1, 100) for _ in range(4))
        gt = {"target": a + b - c + d, "numbers": [a, b, c, d]}
        think = " ".join(rng.choice(words) for _ in range(rng.choice([20, 200, 1500])))
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


GT = {"target": 24, "numbers": [3, 7, 25, 50]}
ADVERSARIAL = {
    "power tower 3**7**25-50": "<answer>3**7**25-50</answer>",
    "9**9**9 (numbers 9,9,9)": "<answer>9**9**9</answer>",
    "1 MB literal": "<answer>" + "9" * 1_000_000 + "</answer>",
    "10k nested parens": "<answer>" + "(" * 10_000 + "3+7+25-50" + ")" * 10_000 + "</answer>",
    "100k operators": "<answer>" + "+".join(["3"] * 100_000) + "</answer>",
    "1 MB of tags": "<answer>1</answer>" * 60_000,
}
ADVERSARIAL_GT = {"9**9**9 (numbers 9,9,9)": {"target": 24, "numbers": [9, 9, 9]}}


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


def rate(fn, corpus, repeat: int = 5) -> float:
    best = float("inf")
    for _ in range(repeat):
        start = time.perf_counter()
        for text, gt in corpus:
            fn(text, gt)
        best = min(best, time.perf_counter() - start)
    return len(corpus) / best


def main() -> None:
    corpus = realistic_mix(20_000)
    mean_len = statistics.mean(len(t) for t, _ in corpus)
    ours = rate(lambda t, g: compute_score("countdown", t, g), corpus)
    naive = rate(naive_score, corpus)
    agree = sum(compute_score("c", t, g) == naive_score(t, g) for t, g in corpus) / len(corpus)
    print(f"realistic mix: {len(corpus)} responses, mean {mean_len:.0f} chars")
    print(f"  countdown-reward : {ours:>10,.0f} responses/s  ({1e6 / ours:.1f} µs each)")
    print(f"  naive regex+eval : {naive:>10,.0f} responses/s  ({1e6 / naive:.1f} µs each)")
    print(f"  ratio ours/naive : {ours / naive:.2f}x   (same score on {agree:.1%} of responses)")
    print("adversarial corpus (worst single response):")
    worst = 0.0
    for name, text in ADVERSARIAL.items():
        gt = ADVERSARIAL_GT.get(name, GT)
        start = time.perf_counter()
        score = compute_score("countdown", text, gt)
        ours_s = time.perf_counter() - start
        worst = max(worst, ours_s)
        naive = naive_worst(text, gt, 10)
        print(f"  {name:<26} ours {ours_s * 1e3:7.3f} ms (score {score})  naive {naive}")
    print(f"  worst case, ours: {worst * 1e3:.3f} ms")


if __name__ == "__main__":
    main()
