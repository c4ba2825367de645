"""Exact, total and bounded reward verifier for the Countdown puzzle.

No runtime dependencies: import it from veRL, TRL or any RL framework.
"""

from countdown_reward.scoring import (
    FORMAT_SCORE,
    CountdownReward,
    compute_score,
    compute_score_batch,
    compute_score_with_acc,
    countdown_reward,
)
from countdown_reward.verifier import (
    MAX_EQUATION_CHARS,
    Verdict,
    check_equation,
    extract_answer,
    parse_ground_truth,
    verify,
)

__all__ = [
    "FORMAT_SCORE",
    "MAX_EQUATION_CHARS",
    "CountdownReward",
    "Verdict",
    "check_equation",
    "compute_score",
    "compute_score_batch",
    "compute_score_with_acc",
    "countdown_reward",
    "extract_answer",
    "parse_ground_truth",
    "verify",
]
