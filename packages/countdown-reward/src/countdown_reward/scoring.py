"""Reward functions in the call shapes of veRL (single and batch) and TRL.

veRL sets options by keyword (``reward.custom_reward_function.reward_kwargs``); TRL passes every
dataset column by keyword, so its reward function takes no options in its call: a configured
variant is a :class:`CountdownReward` instance.
"""

from __future__ import annotations

import inspect
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, fields
from typing import Any, ClassVar

from countdown_reward.verifier import Verdict, parse_ground_truth, parse_puzzle, verify_puzzle

FORMAT_SCORE = 0.1
"""Reward for a response that has an answer tag but a wrong or invalid equation (TinyZero's)."""

VERL_KEYWORDS = frozenset({"reward_router_address", "reward_model_tokenizer"})
"""Keywords veRL 0.9.1's reward loop adds to the call when a reward model router is configured:
accepted and unused. Any other unknown keyword is a misspelt option and raises."""

PUZZLE_COLUMNS: dict[str, tuple[str, ...]] = {"target": ("target",), "numbers": ("numbers", "nums")}
"""Dataset column names TRL may pass each puzzle field under (``nums``: TinyZero's datasets and
countdown-data's parquet)."""


def _score(verdict: Verdict, format_score: float, score: float) -> float:
    if verdict.correct:
        return score
    return format_score if verdict.has_answer else 0.0


def _reject_unknown(function: Callable[..., Any], keywords: Mapping[str, Any]) -> None:
    unknown = sorted(keywords.keys() - VERL_KEYWORDS)
    if unknown:
        options = [
            p.name
            for p in inspect.signature(function).parameters.values()
            if p.kind is inspect.Parameter.KEYWORD_ONLY
        ]
        raise TypeError(
            f"{function.__name__}() got unknown option(s) {', '.join(map(repr, unknown))}; its "
            f"options are {', '.join(map(repr, options))} (veRL: set them under "
            "reward.custom_reward_function.reward_kwargs)"
        )


def compute_score(
    data_source: str | None,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    format_score: float = FORMAT_SCORE,
    score: float = 1.0,
    includes_prompt: bool = False,
    **verl_keywords: Any,
) -> float:
    """veRL ``custom_reward_function`` entry point.

    ``score`` for a correct equation, ``format_score`` for a present but wrong answer, 0.0 without
    an ``<answer>`` tag. ``ground_truth`` is ``{"target": int, "numbers": [int, ...]}``.
    ``solution_str`` is the response alone, as every veRL 0.9.1 reward manager passes it; set
    ``includes_prompt=True`` where it is prompt and response together (TinyZero's manager), so
    example tags in the prompt are not taken for the answer.

    >>> puzzle = {"target": 24, "numbers": [4, 6, 2, 1]}
    >>> compute_score("countdown", "<think>…</think><answer>(4 * 6) * (2 - 1)</answer>", puzzle)
    1.0
    >>> compute_score("countdown", "<answer>4 + 6 + 2 + 1</answer>", puzzle)
    0.1
    >>> compute_score("countdown", "<answer>4 + 6 + 2 + 1</answer>", puzzle, format_score=0.0)
    0.0
    >>> compute_score("countdown", "no answer tag", puzzle)
    0.0
    """
    if verl_keywords:
        _reject_unknown(compute_score, verl_keywords)
    verdict = verify_puzzle(solution_str, *parse_ground_truth(ground_truth), includes_prompt)
    return _score(verdict, format_score, score)


def compute_score_with_acc(
    data_source: str | None,
    solution_str: str,
    ground_truth: Any,
    extra_info: Any = None,
    *,
    format_score: float = FORMAT_SCORE,
    score: float = 1.0,
    includes_prompt: bool = False,
    **verl_keywords: Any,
) -> dict[str, float]:
    """Like :func:`compute_score`, plus ``acc`` (1.0 only when correct).

    veRL reports a returned ``acc`` as ``val-core/<data_source>/acc/mean@N``: the accuracy the
    forgetting matrix is built from, undiluted by format rewards.

    >>> puzzle = {"target": 10, "numbers": [4, 6]}
    >>> compute_score_with_acc("countdown", "<answer>4 + 6</answer>", puzzle)
    {'score': 1.0, 'acc': 1.0}
    >>> compute_score_with_acc("countdown", "<answer>4 - 6</answer>", puzzle)
    {'score': 0.1, 'acc': 0.0}
    """
    if verl_keywords:
        _reject_unknown(compute_score_with_acc, verl_keywords)
    verdict = verify_puzzle(solution_str, *parse_ground_truth(ground_truth), includes_prompt)
    return {"score": _score(verdict, format_score, score), "acc": float(verdict.correct)}


def compute_score_batch(
    data_sources: Sequence[str | None],
    solution_strs: Sequence[str],
    ground_truths: Sequence[Any],
    extra_infos: Sequence[Any] | None = None,
    *,
    format_score: float = FORMAT_SCORE,
    score: float = 1.0,
    includes_prompt: bool = False,
    **verl_keywords: Any,
) -> list[float]:
    """Entry point for veRL's legacy ``BatchRewardManager`` (``verl.workers.reward_manager``).

    >>> compute_score_batch(
    ...     ["countdown", "countdown"],
    ...     ["<answer>3 * 5</answer>", "<answer>3 + 5</answer>"],
    ...     [{"target": 15, "numbers": [3, 5]}] * 2,
    ... )
    [1.0, 0.1]
    """
    if verl_keywords:
        _reject_unknown(compute_score_batch, verl_keywords)
    if not len(data_sources) == len(solution_strs) == len(ground_truths):
        raise ValueError(
            "data_sources, solution_strs and ground_truths must have the same length, got "
            f"{len(data_sources)}, {len(solution_strs)}, {len(ground_truths)}"
        )
    return [
        _score(verify_puzzle(s, *parse_ground_truth(gt), includes_prompt), format_score, score)
        for s, gt in zip(solution_strs, ground_truths, strict=True)
    ]


def _is_text_part(part: Any) -> bool:
    return (
        isinstance(part, Mapping)
        and part.get("type") == "text"
        and isinstance(part.get("text"), str)
    )


def completion_text(completion: Any) -> str:
    """The text of one TRL completion: a string, or chat messages whose last message is the
    model's; its ``content`` is a string or a list of ``{"type": "text", "text": ...}`` parts
    (multimodal-ready templates). Anything else raises: an unreadable completion is a caller's
    bug, and scoring it 0.0 would hide it.

    >>> parts = [{"type": "text", "text": "<answer>1 + 2"}, {"type": "text", "text": "</answer>"}]
    >>> completion_text([{"role": "assistant", "content": parts}])
    '<answer>1 + 2</answer>'
    """
    if isinstance(completion, str):
        return completion
    if isinstance(completion, Sequence) and completion and isinstance(completion[-1], Mapping):
        content = completion[-1].get("content")
        if isinstance(content, str):
            return content
        if isinstance(content, Sequence) and all(map(_is_text_part, content)):
            return "".join(part["text"] for part in content)
    shown = repr(completion)
    raise ValueError(
        "countdown_reward cannot read this completion: expected a string or chat messages whose "
        "last 'content' is a string or a list of {'type': 'text', 'text': ...} parts, got "
        f"{shown[:120]}{'…' if len(shown) > 120 else ''}"
    )


def _column(columns: Mapping[str, Any], field: str) -> Any:
    names = PUZZLE_COLUMNS[field]
    present = [name for name in names if name in columns]
    if len(present) == 1:
        return columns[present[0]]
    wanted = " or ".join(map(repr, names))
    if present:
        raise ValueError(
            f"countdown_reward got the puzzle {field} twice (columns {wanted}): keep one column"
        )
    raise ValueError(
        f"countdown_reward needs the puzzle {field} as a dataset column named {wanted}; "
        f"it was given {sorted(columns)}"
    )


@dataclass(frozen=True)
class CountdownReward:
    """TRL ``reward_funcs`` entry: dataset columns arrive as keyword arguments.

    The puzzle comes from the ``target`` column and the ``numbers`` (or ``nums``) column; other
    columns and TRL's own keywords are ignored. Completions are TRL's (strings, or chat messages,
    see :func:`completion_text`) and never contain the prompt, so no turn-marker rule applies. The
    options are fields of the instance, never call keywords, so no dataset column can change
    them; a column named like an option is refused at the first call rather than ignored.

    >>> countdown_reward(["<answer>(4 * 6) * (2 - 1)</answer>", "<answer>4 + 6</answer>", "..."],
    ...                  target=[24, 24, 24], nums=[[4, 6, 2, 1]] * 3)
    [1.0, 0.1, 0.0]
    >>> strict = CountdownReward(format_score=0.0)
    >>> strict([[{"role": "assistant", "content": "<answer>4 + 6</answer>"}]], target=[24],
    ...        numbers=[[4, 6, 2, 1]])
    [0.0]
    >>> countdown_reward(["<answer>4 * 6</answer>"], target=[24], nums=[[4, 6]], score=[0.5])
    Traceback (most recent call last):
    ...
    ValueError: dataset column(s) 'score' share a name with countdown_reward's options, ...
    """

    score: float = 1.0
    format_score: float = FORMAT_SCORE

    __name__: ClassVar[str] = "countdown_reward"
    """TRL names its metrics after it: ``rewards/countdown_reward/mean``."""

    def __call__(self, completions: Sequence[Any], **columns: Any) -> list[float]:
        collisions = sorted(columns.keys() & _OPTIONS)
        if collisions:
            options = ", ".join(f"{name}=..." for name in sorted(_OPTIONS))
            raise ValueError(
                f"dataset column(s) {', '.join(map(repr, collisions))} share a name with "
                f"countdown_reward's options, which are set as CountdownReward({options}), "
                "never by columns: rename or remove the column(s)"
            )
        target, numbers = _column(columns, "target"), _column(columns, "numbers")
        if not len(completions) == len(target) == len(numbers):
            raise ValueError(
                "completions, target and numbers must have the same length, got "
                f"{len(completions)}, {len(target)}, {len(numbers)}"
            )
        verdicts = (
            verify_puzzle(completion_text(c), *parse_puzzle(t, n))
            for c, t, n in zip(completions, target, numbers, strict=True)
        )
        return [_score(v, self.format_score, self.score) for v in verdicts]


_OPTIONS = frozenset(f.name for f in fields(CountdownReward))

countdown_reward = CountdownReward()
"""TRL reward function with the default scores: ``GRPOTrainer(reward_funcs=countdown_reward)``."""
