"""The installed veRL loads and calls our reward through its own custom_reward_function path,
given exactly as the trainer gives it (``pkg://countdown_reward``)."""

import numpy as np
from omegaconf import OmegaConf
from verl.trainer.ppo.reward import get_custom_reward_fn

from cl_trainer.overrides import reward_module


def _config(name: str, **reward_kwargs: float):
    return OmegaConf.create(
        {
            "reward": {
                "custom_reward_function": {
                    "path": reward_module(),
                    "name": name,
                    "reward_kwargs": reward_kwargs,
                }
            }
        }
    )


def test_verl_loads_compute_score_and_passes_reward_kwargs() -> None:
    fn = get_custom_reward_fn(_config("compute_score", format_score=0.2))
    ground_truth = {"target": np.int64(24), "numbers": np.array([4, 6, 2, 1])}  # as veRL passes it
    assert fn("countdown_plus", "<answer>4*6*(2-1)</answer>", ground_truth, {}) == 1.0
    assert fn("countdown_plus", "<answer>4+6</answer>", ground_truth, {}) == 0.2
    assert fn("countdown_plus", "no tag", ground_truth, {}) == 0.0


def test_verl_loads_acc_variant_for_validation_accuracy() -> None:
    fn = get_custom_reward_fn(_config("compute_score_with_acc"))
    out = fn("countdown_plus", "<answer>4+6</answer>", {"target": 24, "numbers": [4, 6, 2, 1]}, {})
    assert out == {"score": 0.1, "acc": 0.0}
