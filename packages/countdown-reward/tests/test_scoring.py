"""The call shapes: TRL passes dataset columns as keywords, veRL passes its own keywords and
``reward_kwargs``. Neither may reach an option by accident, and every misuse is one clear error."""

import pickle

import pytest

from countdown_reward import CountdownReward, compute_score, compute_score_batch, countdown_reward
from countdown_reward.scoring import compute_score_with_acc

RIGHT, WRONG = "<answer>4 * 6 * (2 - 1)</answer>", "<answer>4 + 6</answer>"
GT = {"target": 24, "numbers": [4, 6, 2, 1]}
COLUMNS = {"target": [24, 24], "nums": [[4, 6, 2, 1], [4, 6, 2, 1]]}
TRL_KEYWORDS = {  # what GRPOTrainer adds to the columns on every call (TRL 1.16)
    "prompts": ["p", "p"],
    "completion_ids": [[1], [2]],
    "trainer_state": object(),
    "log_extra": print,
    "log_metric": print,
}


@pytest.mark.parametrize("column", ["score", "format_score"])
def test_a_column_named_like_an_option_is_refused_at_the_first_call(column: str) -> None:
    # it fails on the first batch, whatever the completions, not at the first correct answer
    for completions in ([RIGHT, WRONG], ["", ""]):
        with pytest.raises(ValueError, match=f"column.*'{column}'.*CountdownReward"):
            countdown_reward(completions, **COLUMNS, **{column: [0.5, 0.5]})


def test_configured_variant_keeps_its_options_whatever_the_columns() -> None:
    strict = CountdownReward(score=2.0, format_score=0.0)
    assert strict([RIGHT, WRONG, "no tag"], target=[24] * 3, numbers=[GT["numbers"]] * 3) == [
        2.0,
        0.0,
        0.0,
    ]
    assert strict.__name__ == countdown_reward.__name__ == "countdown_reward"  # TRL's metric key
    assert pickle.loads(pickle.dumps(strict)) == strict  # travels to worker processes


def test_trl_keywords_and_other_columns_are_ignored() -> None:
    scores = countdown_reward(
        [RIGHT, WRONG], **COLUMNS, **TRL_KEYWORDS, data_source=["a", "b"], reward_model=[{}, {}]
    )
    assert scores == [1.0, 0.1]


@pytest.mark.parametrize(
    ("columns", "message"),
    [
        ({"nums": [[4, 6, 2, 1]]}, r"target as a dataset column named 'target'"),
        ({"target": [24]}, r"numbers as a dataset column named 'numbers' or 'nums'"),
        ({"target": [24], "numbers": [[4]], "nums": [[4]]}, r"numbers twice.*keep one"),
    ],
)
def test_missing_or_doubled_puzzle_columns_are_one_clear_error(columns, message) -> None:
    with pytest.raises(ValueError, match=message):
        countdown_reward([RIGHT], **columns)


def test_columns_of_different_lengths_are_an_error() -> None:
    with pytest.raises(ValueError, match="same length"):
        countdown_reward([RIGHT, WRONG], target=[24], nums=[[4, 6, 2, 1]])


def test_chat_completions_with_text_parts_are_read() -> None:
    def message(content):
        return [{"role": "assistant", "content": content}]

    parts = [{"type": "text", "text": "<think>hm</think>"}, {"type": "text", "text": RIGHT}]
    split_tag = [{"type": "text", "text": "<answer>4 + 6"}, {"type": "text", "text": "</answer>"}]
    completions = [message(parts), message(split_tag), message([]), message(RIGHT)]
    assert countdown_reward(completions, target=[24] * 4, numbers=[GT["numbers"]] * 4) == [
        1.0,
        0.1,
        0.0,
        1.0,
    ]


@pytest.mark.parametrize(
    "completion",
    [
        [{"role": "assistant", "content": [{"type": "image", "image": "x.png"}]}],
        [{"role": "assistant", "content": [{"type": "text"}]}],
        [{"role": "assistant", "content": None}],
        [{"role": "assistant"}],
        [],
        None,
        42,
    ],
)
def test_an_unreadable_completion_is_an_error_not_a_zero(completion) -> None:
    with pytest.raises(ValueError, match="cannot read this completion"):
        countdown_reward([completion], target=[24], nums=[[4, 6, 2, 1]])


@pytest.mark.parametrize("fn", [compute_score, compute_score_with_acc])
def test_verl_options_come_from_reward_kwargs_and_a_typo_is_refused(fn) -> None:
    assert fn("countdown", WRONG, GT, {}, format_score=0.0) in (0.0, {"score": 0.0, "acc": 0.0})
    with pytest.raises(TypeError, match=r"unknown option\(s\) 'formatscore'.*reward_kwargs"):
        fn("countdown", WRONG, GT, {}, formatscore=0.0)
    with pytest.raises(TypeError, match="unknown option"):
        compute_score_batch(["countdown"], [WRONG], [GT], [{}], formatscore=0.0)


def test_verl_reward_loop_keywords_are_accepted() -> None:
    # veRL 0.9.1's reward loop adds these to every call when a reward model router is configured
    extra = {"reward_router_address": "127.0.0.1:8000", "reward_model_tokenizer": object()}
    assert compute_score("countdown", RIGHT, GT, {}, **extra) == 1.0
    assert compute_score_with_acc("countdown", RIGHT, GT, {}, **extra)["acc"] == 1.0
    assert compute_score_batch(["countdown"], [RIGHT], [GT], [{}], **extra) == [1.0]
