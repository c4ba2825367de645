"""Property tests: every valid solution scores 1.0, every tampered one does not, nothing raises."""

import operator
from fractions import Fraction

from hypothesis import assume, given
from hypothesis import strategies as st

from countdown_reward import compute_score, verify

FORMAT = 0.1
OPS = {
    "+": operator.add,
    "-": operator.sub,
    "*": operator.mul,
    "/": operator.truediv,
}
SPACE = st.sampled_from(["", " ", "  ", "\t", "\n"])


@st.composite
def expressions(draw: st.DrawFn, numbers: list[int]) -> tuple[str, Fraction]:
    """Render a random binary tree over ``numbers`` (each once) with random spacing/parentheses."""
    if len(numbers) == 1:
        text, value = str(numbers[0]), Fraction(numbers[0])
    else:
        split = draw(st.integers(1, len(numbers) - 1))
        left_text, left = draw(expressions(numbers[:split]))
        right_text, right = draw(expressions(numbers[split:]))
        op = draw(st.sampled_from("+-*/"))
        assume(not (op == "/" and right == 0))
        value = OPS[op](left, right)
        s = [draw(SPACE) for _ in range(6)]
        text = f"{s[0]}({s[1]}{left_text}{s[2]}){s[3]}{op}{s[4]}({right_text}){s[5]}"
    extra = draw(st.integers(0, 2))
    return "(" * extra + text + ")" * extra, value


@st.composite
def solved_puzzles(draw: st.DrawFn) -> tuple[list[int], int, str]:
    numbers = draw(st.lists(st.integers(1, 100), min_size=2, max_size=6))
    order = draw(st.permutations(numbers))
    text, value = draw(expressions(list(order)))
    assume(value.denominator == 1)
    return numbers, int(value), text


@given(solved_puzzles(), st.booleans())
def test_any_valid_expression_scores_one(
    puzzle: tuple[list[int], int, str], with_rhs: bool
) -> None:
    numbers, target, text = puzzle
    if with_rhs:
        text = f"{text} = {target}"
    response = f"<think>try</think> <answer>{text}</answer>"
    assert compute_score(None, response, {"target": target, "numbers": numbers}) == 1.0


@given(solved_puzzles(), st.data())
def test_tampered_numbers_never_score_one(puzzle: tuple[list[int], int, str], data) -> None:
    numbers, target, text = puzzle
    mutation = data.draw(st.sampled_from(["drop", "duplicate", "change"]))
    i = data.draw(st.integers(0, len(numbers) - 1))
    claimed = list(numbers)
    if mutation == "drop":
        del claimed[i]
    elif mutation == "duplicate":
        claimed.append(claimed[i])
    else:
        new = data.draw(st.integers(0, 200).filter(lambda n: n != numbers[i]))
        claimed[i] = new
    response = f"<answer>{text}</answer>"
    verdict = verify(response, target, claimed)
    assert verdict.reason == "wrong_numbers"
    assert compute_score(None, response, {"target": target, "numbers": claimed}) == FORMAT


@given(st.text(max_size=300), st.integers(-1000, 1000), st.lists(st.integers(0, 100), min_size=1))
def test_arbitrary_text_never_raises(text: str, target: int, numbers: list[int]) -> None:
    for response in (text, f"<answer>{text}</answer>", f"Assistant: <answer>{text}"):
        score = compute_score(None, response, {"target": target, "numbers": numbers})
        assert score in (0.0, FORMAT, 1.0)


@given(st.text(alphabet="0123456789+-*/() =<>answer/", max_size=200))
def test_equation_alphabet_fuzz_is_consistent(text: str) -> None:
    """Dense fuzzing in the verifier's own alphabet: a correct verdict must be truly correct."""
    verdict = verify(f"<answer>{text}</answer>", 10, [2, 5])
    assert verdict.reason in {
        "no_answer",
        "bad_syntax",
        "wrong_numbers",
        "div_by_zero",
        "wrong_value",
        "correct",
    }
    if verdict.correct:
        assert sorted(verdict.numbers_used) == [2, 5] and verdict.value == 10
