"""The training success rate per step and its interval, from a stage's compacted rollouts."""

from __future__ import annotations

from pathlib import Path

import numpy as np
import pyarrow as pa
import pyarrow.parquet as pq
import pytest

from cl_eval.rollouts import effective_samples, training_success
from cl_eval.stats import wilson
from cl_rundir.layout import ROLLOUT_COLUMNS


def write(path: Path, step: list[int], prompt: list[int], correct: list[bool]) -> Path:
    n = len(step)
    table = {
        "step": pa.array(step, pa.int32()),
        "prompt": pa.array(prompt, pa.int32()),
        "score": pa.array([1.0 if c else 0.0 for c in correct], pa.float32()),
        "correct": pa.array(correct, pa.bool_()),
        "response_chars": pa.array([10] * n, pa.int32()),
    }
    pq.write_table(pa.table({k: table[k] for k in ROLLOUT_COLUMNS}), path)
    return path


def test_answers_to_one_prompt_count_as_one_when_they_agree(tmp_path: Path) -> None:
    """GRPO: 8 prompts x 8 answers. Half the prompts solved by all their answers, half by none:
    64 samples but 8 independent outcomes, so the interval is Wilson's over 8, not over 64."""
    prompt = [p for p in range(8) for _ in range(8)]
    correct = [p < 4 for p in prompt]
    s = training_success(write(tmp_path / "r.parquet", [1] * 64, prompt, correct))
    assert s is not None and s.rate == [0.5] and s.samples == [64] and s.prompts == [8]
    assert (s.lo[0], s.hi[0]) == pytest.approx(wilson(0.5, 8))
    assert s.hi[0] - s.lo[0] > 2 * (wilson(0.5, 64)[1] - wilson(0.5, 64)[0])


def test_one_answer_per_prompt_is_plain_wilson(tmp_path: Path) -> None:
    correct = [True, False, True, True] * 4
    s = training_success(write(tmp_path / "r.parquet", [3] * 16, list(range(16)), correct))
    assert s is not None and s.steps == [3] and s.rate == [0.75]
    assert (s.lo[0], s.hi[0]) == pytest.approx(wilson(0.75, 16))


def test_independent_looking_answers_keep_their_sample_size() -> None:
    """Every prompt solved by half its answers: no sign of correlation, n_eff = n."""
    prompt = np.repeat(np.arange(8), 8)
    correct = np.tile([1, 0], 32)
    assert effective_samples(correct, prompt) == 64


def test_all_right_says_nothing_of_correlation_so_the_prompts_count(tmp_path: Path) -> None:
    prompt = [p for p in range(4) for _ in range(8)]
    s = training_success(write(tmp_path / "r.parquet", [1] * 32, prompt, [True] * 32))
    assert s is not None and s.rate == [1.0]
    assert (s.lo[0], s.hi[0]) == pytest.approx(wilson(1.0, 4))


def test_steps_are_summarised_separately(tmp_path: Path) -> None:
    path = write(tmp_path / "r.parquet", [1, 1, 2, 2, 2], [0, 1, 0, 1, 2], [True] * 2 + [False] * 3)
    s = training_success(path)
    assert s is not None and s.steps == [1, 2] and s.rate == [1.0, 0.0] and s.samples == [2, 3]


def test_an_empty_file_has_no_rate(tmp_path: Path) -> None:
    assert training_success(write(tmp_path / "r.parquet", [], [], [])) is None
