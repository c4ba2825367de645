"""Reward functions in the call shapes of veRL (single and batch) and TRL."""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from countdown_reward.verifier import Verdict, parse_ground_truth, verify_puzzle

FORMAT_SCORE = 0.1
"""Reward for a response that has an answer tag but a wrong or invalid equation (TinyZero's)."""


def _score(verdict: Verdict, format_score: float, score: float) -> float:
    if verdict.correct:
        return score
    return format_score if verdict.has_answer else 0.0


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    format_score: float = FORMAT_SCORE,
    score: float = 1.0,
    **kwargs: Any,
) -> float:
    """veRL ``custom_reward_function`` entry point.

    ``score`` for a correct equation, ``format_score`` for a present but wrong answer, 0.0 without
    an ``<answer>`` tag. ``ground_truth`` is ``{"target": int, "numbers": [int, ...]}``.
    """
    return _score(
        verify_puzzle(solution_str, *parse_ground_truth(ground_truth)), format_score, score
    )


def compute_score_with_acc(
    data_source: str | None,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    format_score: float = FORMAT_SCORE,
    score: float = 1.0,
    **kwargs: Any,
) -> dict[str, float]:
    """Like :func:`compute_score`, plus ``acc`` (1.0 only when correct).

    veRL reports a returned ``acc`` as ``val-core/<data_source>/acc/mean@N``: the accuracy the
    forgetting matrix is built from, undiluted by format rewards.
    """
    verdict = verify_puzzle(solution_str, *parse_ground_truth(ground_truth))
    return {"score": _score(verdict, format_score, score), "acc": float(verdict.correct)}


def compute_score_batch(
    data_sources: Sequence[str | None],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    *,
    format_score: float = FORMAT_SCORE,
    score: float = 1.0,
    **kwargs: Any,
) -> list[float]:
    """veRL ``BatchRewardManager`` entry point (``reward_manager.name=batch``)."""
    if not len(data_sources) == len(solution_strs) == len(ground_truths):
        raise ValueError(
            "data_sources, solution_strs and ground_truths must have the same length, got "
            f"{len(data_sources)}, {len(solution_strs)}, {len(ground_truths)}"
        )
    return [
        compute_score(None, s, gt, format_score=format_score, score=score)
        for s, gt in zip(solution_strs, ground_truths, strict=True)
    ]


def _completion_text(completion: Any) -> str:
    """TRL passes plain strings, or chat message lists whose last message is the completion."""
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion:
        last = completion[-1]
        if isinstance(last, dict):
            content = last.get("content")
            return content if isinstance(content, str) else ""
    return ""


def countdown_reward(
    completions: Sequence[Any],
    target: Sequence[int],
    numbers: Sequence[Sequence[int]] | None = None,
    *,
    format_score: float = FORMAT_SCORE,
    score: float = 1.0,
    **kwargs: Any,
) -> list[float]:
    """TRL reward function: dataset columns arrive as keyword arguments.

    ``numbers`` may also arrive as ``nums`` (the column name TinyZero-style parquet uses).
    """
    if numbers is None:
        numbers = kwargs.get("nums")
    if numbers is None:
        raise ValueError(
            "countdown_reward needs the puzzle numbers: pass a 'numbers' or 'nums' column"
        )
    if not len(completions) == len(target) == len(numbers):
        raise ValueError(
            "completions, target and numbers must have the same length, got "
            f"{len(completions)}, {len(target)}, {len(numbers)}"
        )
    return [
        compute_score(
            None,
            _completion_text(c),
            {"target": t, "numbers": n},
            format_score=format_score,
            score=score,
        )
        for c, t, n in zip(completions, target, numbers, strict=True)
    ]
