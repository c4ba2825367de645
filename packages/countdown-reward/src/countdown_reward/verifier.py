"""Parse-don't-evaluate verification of a Countdown answer.

The equation is never handed to ``eval``: it is tokenised with a whitelist, parsed by an
iterative shunting-yard loop (no recursion, so nesting cannot overflow the stack) and evaluated
in exact rational arithmetic on integer pairs. Every step is bounded by ``MAX_EQUATION_CHARS``,
so a hostile response costs at most a few scans of its text.
"""

from __future__ import annotations

import operator
import re
from collections.abc import Iterable
from dataclasses import dataclass
from fractions import Fraction
from typing import Any, Literal

Reason = Literal[
    "no_answer", "bad_syntax", "wrong_numbers", "div_by_zero", "wrong_value", "correct"
]

MAX_EQUATION_CHARS = 1000
"""Longest equation parsed; a real answer is a few dozen characters, anything longer is rejected
as ``bad_syntax`` before tokenising (this is what keeps huge literals and deep nesting cheap)."""

TURN_MARKERS = ("Assistant:", "<|im_start|>assistant")
_OPEN, _CLOSE = "<answer>", "</answer>"
_ALLOWED = re.compile(r"[0-9+\-*/() \t\r\n]*")
_TOKEN = re.compile(r"[0-9]+|[+\-*/()]")
_NUMBER = re.compile(r"[0-9]+")
_RHS = re.compile(r"[ \t\r\n]*(-?[0-9]+)[ \t\r\n]*")
_PRECEDENCE = {"+": 1, "-": 1, "*": 2, "/": 2}

# A value is an unreduced rational (numerator, denominator); None marks a division by zero,
# which propagates so that the rest of the equation is still checked for syntax.
_Value = tuple[int, int] | None


@dataclass(frozen=True, slots=True)
class Verdict:
    """Why a response scored what it did: ``reason`` plus what the verifier read.

    The value and numbers are kept in the raw form the parser produced and converted on access:
    most callers only want the score, and building a Fraction per response would dominate.
    """

    reason: Reason
    equation: str | None = None
    ratio: tuple[int, int] | None = None
    literals: list[str] | None = None

    @property
    def value(self) -> Fraction | None:
        """Exact value of the equation (None if it could not be evaluated)."""
        return None if self.ratio is None else Fraction(*self.ratio)

    @property
    def numbers_used(self) -> tuple[int, ...]:
        """Numbers the equation uses, in ascending order."""
        return tuple(sorted(map(int, self.literals or ())))

    @property
    def correct(self) -> bool:
        return self.reason == "correct"

    @property
    def has_answer(self) -> bool:
        return self.reason != "no_answer"


def extract_answer(response: str, *, includes_prompt: bool = False) -> str | None:
    """Content of the last complete ``<answer>…</answer>``, or None.

    Of several answers the last one is the model's final word. ``includes_prompt=True`` is for
    callers that pass the prompt and the response as one text (TinyZero's reward manager): prompts
    contain example tags, so only text after the last turn marker (``Assistant:`` or
    ``<|im_start|>assistant``) counts there. veRL 0.9.1 and TRL pass the response alone, where a
    marker is just text the model wrote.

    >>> extract_answer("<think>4 * 6 = 24</think> <answer>4 * 6 * (2 - 1)</answer>")
    '4 * 6 * (2 - 1)'
    >>> extract_answer("<answer>1 + 2</answer> wait <answer>3 - 1</answer>")
    '3 - 1'
    >>> extract_answer("User: reply as <answer>1 + 2</answer>. Assistant: no idea",
    ...                includes_prompt=True) is None
    True
    """
    # Search from the end so the cost is the tail's length, not the response's. With the prompt
    # included, a turn marker at or after the last opening tag means the model's own turn has no
    # complete answer.
    close = response.rfind(_CLOSE)
    if close < 0:
        return None
    open_ = response.rfind(_OPEN, 0, close)
    if open_ < 0 or (includes_prompt and any(response.find(m, open_) >= 0 for m in TURN_MARKERS)):
        return None
    return response[open_ + len(_OPEN) : close]


def _apply(op: str, a: _Value, b: _Value) -> _Value:
    if a is None or b is None:
        return None
    (an, ad), (bn, bd) = a, b
    if op == "+":
        return an * bd + bn * ad, ad * bd
    if op == "-":
        return an * bd - bn * ad, ad * bd
    if op == "*":
        return an * bn, ad * bd
    if bn == 0:
        return None
    return an * bd, ad * bn


def _evaluate(tokens: list[str]) -> tuple[bool, _Value]:
    """Shunting-yard parse and evaluate; returns (syntax_ok, value)."""
    values: list[_Value] = []
    ops: list[str] = []
    expect_operand = True
    for tok in tokens:
        if tok == "(":
            if not expect_operand:
                return False, None
            ops.append(tok)
            continue
        prec = _PRECEDENCE.get(tok)
        if prec is None and tok != ")":
            if not expect_operand or (tok[0] == "0" and len(tok) > 1):
                return False, None
            values.append((int(tok), 1))
            expect_operand = False
            continue
        if expect_operand:
            return False, None
        # ")" has precedence 0: it reduces down to its "(".
        prec = prec or 0
        while ops and ops[-1] != "(" and _PRECEDENCE[ops[-1]] >= prec:
            b = values.pop()
            values.append(_apply(ops.pop(), values.pop(), b))
        if tok == ")":
            if not ops:
                return False, None
            ops.pop()
        else:
            ops.append(tok)
            expect_operand = True
    if expect_operand:
        return False, None
    while ops:
        if ops[-1] == "(":
            return False, None
        b = values.pop()
        values.append(_apply(ops.pop(), values.pop(), b))
    return True, values[0]


def check_equation(equation: str, target: int, numbers: Iterable[int]) -> Verdict:
    """Verify a bare equation (no tags) against a puzzle; never raises on any ``equation``.

    >>> check_equation("(4 * 6) / (2 - 1) = 24", 24, [4, 6, 2, 1]).correct
    True
    >>> check_equation("4 * 6 * 2", 24, [4, 6, 2, 1]).reason
    'wrong_numbers'
    """
    target, numbers = parse_puzzle(target, numbers)
    return _check(equation, target, numbers)


def _check(equation: str, target: int, numbers: tuple[str, ...]) -> Verdict:
    """``numbers`` are the puzzle's literals, sorted: the form the multiset test compares."""
    if len(equation) > MAX_EQUATION_CHARS:
        return Verdict("bad_syntax")
    lhs, eq, rhs = equation.partition("=")
    claimed = None
    if eq:
        match = _RHS.fullmatch(rhs)
        if match is None:
            return Verdict("bad_syntax", equation)
        claimed = int(match.group(1))
    if _ALLOWED.fullmatch(lhs) is None:
        return Verdict("bad_syntax", equation)
    tokens = _TOKEN.findall(lhs)
    ok, value = _evaluate(tokens)
    if not ok:
        return Verdict("bad_syntax", equation)
    literals = sorted(_NUMBER.findall(lhs))
    if literals != list(numbers):
        return Verdict("wrong_numbers", equation, None, literals)
    if value is None:
        return Verdict("div_by_zero", equation, None, literals)
    num, den = value
    if num != target * den or (claimed is not None and claimed != target):
        return Verdict("wrong_value", equation, value, literals)
    return Verdict("correct", equation, value, literals)


def verify(
    solution_str: str, target: int, numbers: Iterable[int], *, includes_prompt: bool = False
) -> Verdict:
    """Verify a model response; a malformed puzzle raises ValueError, a bad response never does.

    ``includes_prompt``: see :func:`extract_answer`.

    >>> verdict = verify("<answer>8 / 3 * 3</answer>", 8, [8, 3, 3])
    >>> verdict.reason, verdict.value, verdict.numbers_used
    ('correct', Fraction(8, 1), (3, 3, 8))
    >>> verify("<answer>4 ** 6</answer>", 24, [4, 6, 2, 1]).reason
    'bad_syntax'
    >>> verify("<answer>10 / (5 - 5)</answer>", 2, [10, 5, 5]).reason
    'div_by_zero'
    >>> verify("I think it is 24", 24, [4, 6, 2, 1]).reason
    'no_answer'
    """
    return verify_puzzle(solution_str, *parse_puzzle(target, numbers), includes_prompt)


def verify_puzzle(
    solution_str: str, target: int, numbers: tuple[str, ...], includes_prompt: bool = False
) -> Verdict:
    """:func:`verify` for a puzzle already normalised by :func:`parse_ground_truth`."""
    answer = (
        extract_answer(solution_str, includes_prompt=includes_prompt)
        if isinstance(solution_str, str)
        else None
    )
    if answer is None:
        return Verdict("no_answer")
    return _check(answer.strip(), target, numbers)


def _as_int(value: Any, field: str) -> int:
    if isinstance(value, bool):
        raise ValueError(f"ground_truth {field} must be an integer, got bool {value!r}")
    try:
        return operator.index(value)
    except TypeError:
        raise ValueError(
            f"ground_truth {field} must be an integer, got {type(value).__name__} {value!r}"
        ) from None


def parse_puzzle(target: Any, numbers: Any) -> tuple[int, tuple[str, ...]]:
    """Normalise a puzzle (numpy scalars and arrays welcome) or raise a ValueError naming the field.

    Returns the target and the numbers as sorted decimal literals, ready for the multiset test.
    """
    if type(target) is int and type(numbers) is list and set(map(type, numbers)) == {int}:
        # fast path for plain-int ground truth (checked once per response): no negatives
        literals = tuple(sorted(map(str, numbers)))
        if "".join(literals).isdigit():
            return target, literals
    target = _as_int(target, "'target'")
    if isinstance(numbers, str | bytes | dict) or not isinstance(numbers, Iterable):
        raise ValueError(f"ground_truth 'numbers' must be a list of integers, got {numbers!r}")
    ints = tuple(_as_int(n, "'numbers' entry") for n in numbers)
    if not ints:
        raise ValueError("ground_truth 'numbers' is empty; a puzzle needs at least one number")
    if min(ints) < 0:
        raise ValueError(f"ground_truth 'numbers' must be non-negative, got {list(ints)}")
    return target, tuple(sorted(map(str, ints)))


def parse_ground_truth(ground_truth: Any) -> tuple[int, tuple[str, ...]]:
    """Read ``{"target": int, "numbers": [int, ...]}``; a ValueError names a bad field.

    Returns the target and the numbers as sorted decimal literals (what the verifier compares).

    >>> parse_ground_truth({"target": 24, "numbers": [6, 4, 1, 2]})
    (24, ('1', '2', '4', '6'))
    >>> parse_ground_truth({"target": 24})
    Traceback (most recent call last):
    ...
    ValueError: ground_truth is missing 'numbers'; expected keys 'target' and 'numbers'
    """
    try:
        target, numbers = ground_truth["target"], ground_truth["numbers"]
    except KeyError as missing:
        raise ValueError(
            f"ground_truth is missing {missing}; expected keys 'target' and 'numbers'"
        ) from None
    except (TypeError, IndexError):
        raise ValueError(
            "ground_truth must be a mapping {'target': int, 'numbers': [int, ...]}, "
            f"got {type(ground_truth).__name__}"
        ) from None
    return parse_puzzle(target, numbers)
