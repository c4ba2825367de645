"""Example tests: one per scoring rule of the Countdown verifier."""

from fractions import Fraction

import pytest

from countdown_reward import (
    MAX_EQUATION_CHARS,
    check_equation,
    compute_score,
    compute_score_batch,
    compute_score_with_acc,
    countdown_reward,
    extract_answer,
    verify,
)
from countdown_reward.bench import ADVERSARIAL

GT = {"target": 24, "numbers": [4, 6, 2, 1]}


def tag(eq: str) -> str:
    return f"<think>working</think><answer>{eq}</answer>"


@pytest.mark.parametrize(
    "equation",
    [
        "4 * 6 * (2 - 1)",
        "4*6*(2-1)",
        "(4 * 6) / (2 - 1)",
        "((4*6))*(2-1) = 24",
        "\t(4 *\n6)\r/ (2 - 1) ",
    ],
)
def test_correct_equations_score_one(equation: str) -> None:
    assert compute_score("countdown_plus", tag(equation), GT) == 1.0


@pytest.mark.parametrize(
    ("equation", "reason"),
    [
        ("4 * 6 * 2 - 1", "wrong_value"),
        ("4 * 6 * 2", "wrong_numbers"),  # 1 unused
        ("4 * 6 * 2 * 1 * 1", "wrong_numbers"),  # 1 used twice
        ("4 * 6 * (3 - 2)", "wrong_numbers"),  # 3 not in the puzzle
        ("46 - 21 - 1", "wrong_numbers"),  # concatenated digits
        ("-4 + 6 * 2 * 1", "bad_syntax"),  # unary minus
        ("4 * 6.0 * (2 - 1)", "bad_syntax"),  # decimals
        ("4 ** 6 * 2 * 1", "bad_syntax"),
        ("4 ^ 6 * 2 * 1", "bad_syntax"),
        ("4 x 6 x (2 - 1)", "bad_syntax"),
        ("4 × 6 × (2 - 1)", "bad_syntax"),
        ("4 * 6 ÷ (2 - 1)", "bad_syntax"),
        ("4(6) * (2 - 1)", "bad_syntax"),  # implicit multiplication
        ("4 6 * (2 - 1)", "bad_syntax"),  # juxtaposed literals
        ("４ * 6 * (2 - 1)", "bad_syntax"),  # non-ASCII digit
        ("4 * 06 * (2 - 1)", "bad_syntax"),  # leading zero disguises a literal
        ("4 * 6 * (2 - 1", "bad_syntax"),
        ("4 * 6 * 2 - 1)", "bad_syntax"),
        ("", "bad_syntax"),
        ("4 * 6 * (2 - 1) = 25", "wrong_value"),  # right-hand side is not the target
        ("4 * 6 * (2 - 1) = x", "bad_syntax"),
        ("4 * 6 * (2 - 1) = 24 = 24", "bad_syntax"),
        ("4 * 6 / (2 - 2 * 1)", "wrong_numbers"),
    ],
)
def test_wrong_answers_get_format_score_with_reason(equation: str, reason: str) -> None:
    assert verify(tag(equation), 24, [4, 6, 2, 1]).reason == reason
    assert compute_score("countdown_plus", tag(equation), GT) == 0.1


def test_division_by_zero_is_wrong_not_an_exception() -> None:
    verdict = verify(tag("4 / (2 - 2) + 6"), 24, [4, 2, 2, 6])
    assert verdict.reason == "div_by_zero"
    assert (
        compute_score(None, tag("4 / (2 - 2) + 6"), {"target": 24, "numbers": [4, 2, 2, 6]}) == 0.1
    )


def test_arithmetic_is_exact_rational() -> None:
    verdict = verify(tag("8 / 3 * 3"), 8, [8, 3, 3])
    assert verdict.correct and verdict.value == Fraction(8)
    # 1/3 + 1/3 + 1/3 is exactly 1: floating point would say 0.9999999999999999 for some paths.
    assert verify(tag("1/3 + 1/3 + 1/3"), 1, [1, 3, 1, 3, 1, 3]).correct
    assert verify(tag("6 / (1 / 4)"), 24, [6, 1, 4]).correct  # 1/4 is not an integer
    assert verify(tag("10 / 4"), 2, [10, 4]).reason == "wrong_value"  # 2.5, not truncated


def test_operator_precedence_and_left_associativity() -> None:
    assert verify(tag("2 + 3 * 4"), 14, [2, 3, 4]).correct
    assert verify(tag("20 - 5 - 3"), 12, [20, 5, 3]).correct
    assert verify(tag("24 / 4 / 2"), 3, [24, 4, 2]).correct
    assert verify(tag("20 - (5 - 3)"), 18, [20, 5, 3]).correct


def test_no_answer_tag_scores_zero() -> None:
    assert compute_score(None, "the answer is 4*6*(2-1)", GT) == 0.0
    assert compute_score(None, "<answer>4*6*(2-1)", GT) == 0.0  # never closed (cut off)
    assert verify("", 24, [4, 6, 2, 1]).reason == "no_answer"


def test_last_answer_tag_counts() -> None:
    response = tag("4 * 6 * 2 * 1") + " wait, no " + tag("4 * 6 * (2 - 1)")
    assert compute_score(None, response, GT) == 1.0
    assert compute_score(None, tag("4 * 6 * (2 - 1)") + tag("4 + 6"), GT) == 0.1


def test_a_made_up_turn_after_the_answer_is_just_text_in_a_response() -> None:
    # veRL 0.9.1 and TRL pass the response alone: no prompt to guard against
    made_up = tag("4 * 6 * (2 - 1)") + "\nUser: thanks\nAssistant: you are welcome"
    assert compute_score(None, made_up, GT) == 1.0
    assert verify(made_up, 24, [4, 6, 2, 1]).correct
    assert compute_score(None, made_up + tag("4 + 6"), GT) == 0.1  # the last tag still counts
    assert extract_answer("<answer>1</answer><|im_start|>assistant\n") == "1"


def test_with_the_prompt_only_text_after_last_turn_marker_counts() -> None:
    prompt = "User: answer like <answer> (1 + 2) / 3 </answer>. Assistant: Let me solve this."
    assert compute_score(None, prompt + tag("4 * 6 * (2 - 1)"), GT, includes_prompt=True) == 1.0
    # the example tag in the prompt is not the model's answer
    assert compute_score(None, prompt + " I give up", GT, includes_prompt=True) == 0.0
    assert compute_score(None, prompt + " I give up", GT) == 0.1  # read as a response, it has one
    chat = "<|im_start|>user\n<answer>4*6*(2-1)</answer><|im_end|>\n<|im_start|>assistant\nhmm"
    assert compute_score(None, chat, GT, includes_prompt=True) == 0.0
    assert not verify(chat, 24, [4, 6, 2, 1], includes_prompt=True).has_answer
    both = "Assistant: <answer>1</answer> Assistant: <answer>2</answer>"
    assert extract_answer(both, includes_prompt=True) == "2"
    assert compute_score_with_acc(None, chat, GT, includes_prompt=True)["score"] == 0.0
    assert compute_score_batch([None], [chat], [GT], includes_prompt=True) == [0.0]


def test_scores_are_configurable() -> None:
    assert compute_score(None, tag("4 + 6"), GT, format_score=0.0) == 0.0
    assert compute_score(None, tag("4 * 6 * (2 - 1)"), GT, score=2.0) == 2.0


def test_acc_variant_separates_accuracy_from_reward() -> None:
    assert compute_score_with_acc("s", tag("4 + 6"), GT) == {"score": 0.1, "acc": 0.0}
    assert compute_score_with_acc("s", tag("4*6*(2-1)"), GT) == {"score": 1.0, "acc": 1.0}


def test_batch_and_trl_forms_match_single() -> None:
    responses = [tag("4*6*(2-1)"), tag("4+6"), "nothing"]
    expected = [compute_score(None, r, GT) for r in responses]
    assert compute_score_batch(["a"] * 3, responses, [GT] * 3, [None] * 3) == expected
    chats = [[{"role": "assistant", "content": r}] for r in responses]
    columns = {"target": [24] * 3, "numbers": [[4, 6, 2, 1]] * 3}
    assert countdown_reward(responses, **columns) == expected
    assert countdown_reward(chats, **columns) == expected
    assert countdown_reward(responses, target=[24] * 3, nums=[[4, 6, 2, 1]] * 3) == expected


def test_numpy_ground_truth_as_veRL_passes_it() -> None:
    np = pytest.importorskip("numpy")
    gt = {"target": np.int64(24), "numbers": np.array([4, 6, 2, 1])}
    assert compute_score(None, tag("4*6*(2-1)"), gt) == 1.0


@pytest.mark.parametrize(
    ("ground_truth", "field"),
    [
        ({"numbers": [1, 2]}, "target"),
        ({"target": 3}, "numbers"),
        ({"target": 3.5, "numbers": [1, 2]}, "target"),
        ({"target": "3", "numbers": [1, 2]}, "target"),
        ({"target": 3, "numbers": [1, 2.0]}, "numbers"),
        ({"target": 3, "numbers": "12"}, "numbers"),
        ({"target": 3, "numbers": []}, "numbers"),
        ({"target": True, "numbers": [1, 2]}, "target"),
        ([3, [1, 2]], "mapping"),
    ],
)
def test_malformed_ground_truth_raises_value_error_naming_field(ground_truth, field) -> None:
    with pytest.raises(ValueError, match=field):
        compute_score(None, tag("1+2"), ground_truth)


def test_non_string_response_is_a_score_not_an_error() -> None:
    assert compute_score(None, None, GT) == 0.0  # type: ignore[arg-type]
    assert compute_score(None, b"<answer>1</answer>", GT) == 0.0  # type: ignore[arg-type]


@pytest.mark.parametrize("name", sorted(ADVERSARIAL))
def test_adversarial_responses_get_their_score(name: str) -> None:
    # their cost is bench/reward.py's (python -m countdown_reward.bench), not a timed test's
    case = ADVERSARIAL[name]
    assert compute_score(None, case.text, case.ground_truth) == case.score


def test_long_equations_are_rejected_before_parsing() -> None:
    eq = "(" * MAX_EQUATION_CHARS + "1" + ")" * MAX_EQUATION_CHARS
    assert check_equation(eq, 1, [1]).reason == "bad_syntax"
    assert check_equation("(" * 300 + "1" + ")" * 300, 1, [1]).correct
