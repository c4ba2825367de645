"""Property tests: every valid solution scores 1.0, every tampered one does not, nothing raises."""

import ast
import operator
from fractions import Fraction

from hypothesis import assume, given
from hypothesis import strategies as st

from countdown_reward import compute_score, verify
from countdown_reward.verifier import TURN_MARKERS

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


@given(solved_puzzles(), st.text(max_size=200), st.sampled_from(TURN_MARKERS), st.text(max_size=50))
def test_the_prompt_never_counts_and_a_made_up_turn_never_hides_an_answer(
    puzzle: tuple[list[int], int, str], prompt: str, marker: str, after: str
) -> None:
    numbers, target, text = puzzle
    gt = {"target": target, "numbers": numbers}
    answer = f"<answer>{text}</answer>"
    # prompt + response: a right answer in the prompt (an example) never scores for the model
    full = f"{prompt}{answer}{marker}"
    assert compute_score(None, full + " no idea", gt, includes_prompt=True) == 0.0
    assert compute_score(None, full + answer, gt, includes_prompt=True) == 1.0
    # the response alone: a made-up turn after the answer is text; only a later answer tag counts
    assume("<answer>" not in after and "</answer>" not in after)
    assert compute_score(None, f"{answer}{marker}{after}", gt) == 1.0


def independent_verdict(text: str, target: int, numbers: list[int]) -> bool:
    """An exact checker built on Python's own parser, independent of the verifier: binary
    ``+ - * /`` over non-negative integer literals only (no unary minus, no implicit product,
    no leading zeros), each number used exactly once, value equal to the target."""
    try:
        tree = ast.parse(" ".join(text.split()), mode="eval").body  # any whitespace is a space
    except SyntaxError:
        return False
    literals: list[int] = []

    def value(node: ast.AST) -> Fraction | None:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            literals.append(node.value)
            return Fraction(node.value)
        if isinstance(node, ast.BinOp) and type(node.op) in AST_OPS:
            left, right = value(node.left), value(node.right)
            if left is None or right is None or (isinstance(node.op, ast.Div) and right == 0):
                return None
            return AST_OPS[type(node.op)](left, right)
        raise ValueError("not a plain arithmetic expression")

    try:
        result = value(tree)
    except ValueError:
        return False
    return result == target and sorted(literals) == sorted(numbers)


AST_OPS = {ast.Add: operator.add, ast.Sub: operator.sub, ast.Mult: operator.mul, ast.Div: OPS["/"]}
ALPHABET = "0123456789+-*/() "


@st.composite
def mutated_answers(draw: st.DrawFn) -> str:
    """Expressions over the puzzle's numbers (often correct), then a few random character edits,
    so both the correct branch and every near-miss are reached."""
    text, _ = draw(expressions(draw(st.permutations([2, 5]))))
    for _ in range(draw(st.integers(0, 3))):
        i = draw(st.integers(0, len(text)))
        if draw(st.booleans()) and i < len(text):
            text = text[:i] + text[i + 1 :]
        else:
            text = text[:i] + draw(st.sampled_from(ALPHABET)) + text[i:]
    return text


@given(st.one_of(mutated_answers(), st.text(alphabet=ALPHABET, max_size=60)))
def test_verdict_agrees_with_an_independent_exact_checker(text: str) -> None:
    """Correct exactly when Python's parser, evaluated in fractions, says so (target 10 = 2 * 5)."""
    verdict = verify(f"<answer>{text}</answer>", 10, [2, 5])
    assert verdict.correct == independent_verdict(text, 10, [2, 5]), (text, verdict.reason)
