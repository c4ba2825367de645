"""The training success rate: per training step, the fraction of that step's samples whose answer
is correct, from ``rollouts/<stage>.parquet`` (cl-trainer compacts veRL's rollout dumps into it
when a stage ends).

It is the original experiments' "success rate" during training. The logged mean reward
(``critic/score/mean``) is not: it adds the format reward of every well-formed wrong answer. The
samples are the training rollouts (sampled at the rollout temperature, ``rollout.n`` per prompt,
from the stage's training data), not the greedy validation on the test split.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from cl_eval.stats import wilson


@dataclass
class TrainingSuccess:
    """Per step: the success rate, its 95 % Wilson interval and the number of samples."""

    steps: list[int]
    rate: list[float]
    lo: list[float]
    hi: list[float]
    samples: list[int]

    def summary(self) -> dict:
        """The shape of ``StageResult.train`` entries, plus the intervals and sample counts."""
        return {
            "key": "rollouts: correct",
            "steps": self.steps,
            "values": self.rate,
            "first": self.rate[0],
            "last": self.rate[-1],
            "mean": float(np.average(self.rate, weights=self.samples)),
            "min": min(self.rate),
            "max": max(self.rate),
            "lo": self.lo,
            "hi": self.hi,
            "samples": self.samples,
        }


def training_success(path: Path) -> TrainingSuccess | None:
    """Read one stage's compacted rollouts; None when the file has no rows."""
    table = pq.read_table(path, columns=["step", "correct"])
    if table.num_rows == 0:
        return None
    steps = table["step"].to_numpy()
    correct = table["correct"].to_numpy(zero_copy_only=False).astype(np.int64)
    uniq, index = np.unique(steps, return_inverse=True)
    n = np.bincount(index)
    k = np.bincount(index, weights=correct)
    rate = k / n
    bounds = [wilson(float(p), float(m)) for p, m in zip(rate, n, strict=True)]
    return TrainingSuccess(
        steps=[int(s) for s in uniq],
        rate=[float(p) for p in rate],
        lo=[b[0] for b in bounds],
        hi=[b[1] for b in bounds],
        samples=[int(m) for m in n],
    )
