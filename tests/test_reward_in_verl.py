"""The installed veRL loads and calls our reward through its own custom_reward_function path:
given exactly as the trainer gives it (``pkg://countdown_reward``), and exactly as the package
README shows it, through veRL's own Hydra config and reward manager."""

import re
from pathlib import Path

import numpy as np
import pytest
import torch
from hydra import compose, initialize_config_dir
from hydra.core.global_hydra import GlobalHydra
from omegaconf import OmegaConf
from verl import DataProto
from verl.trainer.ppo.reward import get_custom_reward_fn, load_reward_manager
from verl.workers.reward_manager.batch import BatchRewardManager

from cl_trainer.local.config import verl_config_dir
from cl_trainer.local.tiny import build_tokenizer
from cl_trainer.overrides import reward_module

README = Path(__file__).resolve().parents[1] / "packages" / "countdown-reward" / "README.md"
GT = {"target": np.int64(24), "numbers": np.array([4, 6, 2, 1])}  # as veRL passes it


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


def _readme_overrides() -> list[str]:
    match = re.search(r"<!-- verl-example -->\n```\n(.+?)```", README.read_text(), re.DOTALL)
    assert match, "the countdown-reward README has no veRL example"
    return match.group(1).split()


def _compose(overrides: list[str]):
    """veRL's own ppo_trainer config, as ``main_ppo`` composes it."""
    GlobalHydra.instance().clear()
    with initialize_config_dir(config_dir=str(verl_config_dir()), version_base=None):
        return compose(config_name="ppo_trainer", overrides=overrides)


def test_verl_loads_compute_score_and_passes_reward_kwargs() -> None:
    fn = get_custom_reward_fn(_config("compute_score", format_score=0.2))
    assert fn("countdown_plus", "<answer>4*6*(2-1)</answer>", GT, {}) == 1.0
    assert fn("countdown_plus", "<answer>4+6</answer>", GT, {}) == 0.2
    assert fn("countdown_plus", "no tag", GT, {}) == 0.0


def test_verl_loads_acc_variant_for_validation_accuracy() -> None:
    fn = get_custom_reward_fn(_config("compute_score_with_acc"))
    out = fn("countdown_plus", "<answer>4+6</answer>", {"target": 24, "numbers": [4, 6, 2, 1]}, {})
    assert out == {"score": 0.1, "acc": 0.0}


def test_a_misspelt_reward_kwarg_fails_at_the_first_call() -> None:
    fn = get_custom_reward_fn(_config("compute_score", formatscore=0.0))
    with pytest.raises(TypeError, match=r"unknown option.*'formatscore'"):
        fn("countdown_plus", "<answer>4+6</answer>", GT, {})


def _batch(tokenizer, prompt: str, responses: list[str], width: int = 64) -> DataProto:
    """Rollouts as veRL's agent loop hands them to the reward loop: prompt ids left-padded and
    response ids right-padded to one width, one attention mask over both."""
    pad = tokenizer.pad_token_id
    p = tokenizer(prompt, add_special_tokens=False)["input_ids"]
    rows = [tokenizer(r, add_special_tokens=False)["input_ids"] for r in responses]
    n = len(rows)
    return DataProto.from_dict(
        tensors={
            "prompts": torch.tensor([[pad] * (width - len(p)) + p] * n),
            "responses": torch.tensor([r + [pad] * (width - len(r)) for r in rows]),
            "attention_mask": torch.tensor(
                [
                    [0] * (width - len(p)) + [1] * (len(p) + len(r)) + [0] * (width - len(r))
                    for r in rows
                ]
            ),
        },
        non_tensors={
            "data_source": np.array(["countdown_plus"] * n, dtype=object),
            "reward_model": np.array([{"ground_truth": GT}] * n, dtype=object),
            "extra_info": np.array([{} for _ in rows], dtype=object),
        },
    )


PROMPT = "Use 4 6 2 1 to make 24, e.g. <answer>4*6*(2-1)</answer>. Assistant:"
MADE_UP_TURN = "<answer>4*6*(2-1)</answer>\nUser: thanks\nAssistant: welcome"


def test_readme_overrides_drive_verls_reward_manager_on_the_response_alone() -> None:
    cfg = _compose(_readme_overrides())
    tokenizer = build_tokenizer()
    manager = load_reward_manager(cfg, tokenizer)

    def reward(response: str) -> dict:
        out = manager.run_single(_batch(tokenizer, PROMPT, [response]))
        return manager.loop.run_until_complete(out)["reward_extra_info"]

    # veRL 0.9.1 passes the response alone: the prompt's example answer is never the model's
    assert reward("I give up") == {"score": 0.0, "acc": 0.0}
    # and a made-up next turn after a right answer is text the model wrote, not a prompt
    assert reward(MADE_UP_TURN) == {"score": 1.0, "acc": 1.0}
    # the README's reward_kwargs line (format_score=0.0) reaches every call
    assert reward("<answer>4+6+2+1</answer>") == {"score": 0.0, "acc": 0.0}


def test_verls_batch_manager_calls_compute_score_batch() -> None:
    # veRL 0.9.1 still ships the legacy BatchRewardManager, though its trainer's reward loop
    # (naive, dapo, gdpo, remote) no longer offers it
    fn = get_custom_reward_fn(_config("compute_score_batch", format_score=0.0))
    tokenizer = build_tokenizer()
    manager = BatchRewardManager(tokenizer, num_examine=0, compute_score=fn)
    responses = [MADE_UP_TURN, "<answer>4+6+2+1</answer>", "I give up"]
    assert manager.verify(_batch(tokenizer, PROMPT, responses)) == [1.0, 0.0, 0.0]
