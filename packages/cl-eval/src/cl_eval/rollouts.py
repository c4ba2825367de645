"""The training success rate: per training step, the fraction of that step's samples whose answer
is correct, from ``rollouts/<stage>.parquet`` (cl-trainer compacts veRL's rollout dumps into it
when a stage ends; ``cl_rundir.layout.ROLLOUT_COLUMNS``).

It is the original experiments' "success rate" during training. The logged mean reward
(``critic/score/mean``) is not: it adds the format reward of every well-formed wrong answer. The
samples are the training rollouts (sampled at the rollout temperature, ``rollout.n`` per prompt,
from the stage's training data), not the greedy validation on the test split.

The ``rollout.n`` answers to one prompt are not independent (an easy puzzle is solved by most of
them), so a step's interval is Wilson's at the step's effective sample size: the binomial variance
over the cluster (ratio-estimator) variance of its prompts, between the number of prompts and the
number of samples. With one answer per prompt it is plain Wilson over the samples.
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pyarrow.parquet as pq

from cl_eval.stats import wilson


@dataclass(frozen=True)
class TrainingSuccess:
    """Per step: the success rate, its 95 % interval, the samples and the prompts behind it."""

    steps: list[int]
    rate: list[float]
    lo: list[float]
    hi: list[float]
    samples: list[int]
    prompts: list[int]


def effective_samples(correct: np.ndarray, prompt: np.ndarray) -> float:
    """The sample size at which one step's success rate is as precise as its prompts make it.

    ``correct``: 0/1 per sample; ``prompt``: each sample's prompt. ``n_eff = p(1-p) / v`` with
    ``v`` the cluster variance of the ratio estimator, clipped to [prompts, samples] (a design
    effect above the cluster size, or below 1, is sampling noise in ``v``). Where it cannot be
    estimated (every answer right, or every one wrong), the conservative end: the prompts.
    """
    n = len(correct)
    _, cluster = np.unique(prompt, return_inverse=True)
    m = np.bincount(cluster).astype(float)
    y = np.bincount(cluster, weights=correct.astype(float))
    k = len(m)
    if k == n:
        return float(n)
    p = y.sum() / n
    if p in (0.0, 1.0):
        return float(k)
    if k < 2:
        return 1.0
    v = k / (k - 1) * float(np.sum((y - p * m) ** 2)) / n**2
    if v == 0.0:
        return float(n)
    return float(np.clip(p * (1 - p) / v, k, n))


def training_success(path: Path) -> TrainingSuccess | None:
    """Read one stage's compacted rollouts; None when the file has no rows. A file without the
    ``prompt`` column counts every sample as its own prompt."""
    columns = [c for c in ("step", "prompt", "correct") if c in pq.read_schema(path).names]
    table = pq.read_table(path, columns=columns)
    if table.num_rows == 0:
        return None
    steps = table["step"].to_numpy()
    correct = table["correct"].to_numpy(zero_copy_only=False).astype(np.int64)
    prompt = table["prompt"].to_numpy() if "prompt" in columns else np.arange(len(steps))
    out = TrainingSuccess([], [], [], [], [], [])
    for step in np.unique(steps):
        at = steps == step
        ok, who = correct[at], prompt[at]
        rate = float(ok.mean())
        lo, hi = wilson(rate, effective_samples(ok, who))
        out.steps.append(int(step))
        out.rate.append(rate)
        out.lo.append(lo)
        out.hi.append(hi)
        out.samples.append(int(at.sum()))
        out.prompts.append(len(np.unique(who)))
    return out
