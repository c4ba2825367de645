"""Exact Countdown solving: a memoised rational solver and a vectorised integer enumerator.

Two engines, because they answer different questions:

* :func:`solve` / :func:`reachable` search every expression over exact rationals (what the
  verifier accepts) for one multiset — used by ``countdown-data solve`` and as ground truth.
* :func:`expression_table` + :func:`evaluate_table` evaluate *every* expression shape for a
  whole batch of multisets at once with numpy, restricted to exact integer division. The
  generator and ``validate`` use it: for division-free operator sets (every "previous group"
  of the curriculum) integer and rational reachability coincide, so it is exact there too.
"""

from __future__ import annotations

import ast
import itertools
from dataclasses import dataclass
from fractions import Fraction
from functools import lru_cache

import numpy as np

ALL_OPS = "+-*/"
_PREC = {"+": 1, "-": 1, "*": 2, "/": 2}
_LEAF_PREC = 3
_COMMUTATIVE = frozenset("+*")


def check_ops(ops: str) -> str:
    """Return the canonical operator string (``+-*/`` order) or raise on anything else."""
    bad = sorted(set(ops) - set(ALL_OPS))
    if bad or not ops:
        raise ValueError(f"operators must be a non-empty subset of '{ALL_OPS}', got {ops!r}")
    return "".join(op for op in ALL_OPS if op in ops)


def _join(left: tuple[str, int], op: str, right: tuple[str, int]) -> tuple[str, int]:
    """Render ``left op right`` with only the parentheses the precedence rules need."""
    prec = _PREC[op]
    ltxt = left[0] if left[1] >= prec else f"({left[0]})"
    rneeds = right[1] < prec or (right[1] == prec and op not in _COMMUTATIVE)
    rtxt = f"({right[0]})" if rneeds else right[0]
    return f"{ltxt} {op} {rtxt}", prec


def _splits(items: tuple[int, ...]) -> list[tuple[tuple[int, ...], tuple[int, ...]]]:
    """Unordered two-way splits of an index tuple (each once: the first part holds items[0])."""
    rest = items[1:]
    out = []
    for r in range(len(rest)):
        for extra in itertools.combinations(rest, r):
            left = (items[0], *extra)
            right = tuple(i for i in items if i not in left)
            out.append((left, right))
    return out


# --------------------------------------------------------------------------- rational solver


def _combine(op: str, a, b, integer_only: bool):
    if op == "+":
        return a + b
    if op == "-":
        return a - b
    if op == "*":
        return a * b
    if b == 0:
        return None
    if integer_only:
        return a // b if a % b == 0 else None
    return Fraction(a) / b


@lru_cache(maxsize=65536)
def _reachable(nums: tuple[int, ...], ops: str, integer_only: bool) -> dict:
    """All values of ``nums`` (sorted) using each number exactly once; value -> (text, prec)."""
    if len(nums) == 1:
        return {nums[0]: (str(nums[0]), _LEAF_PREC)}
    out: dict = {}
    seen_parts = set()
    for left_idx, right_idx in _splits(tuple(range(len(nums)))):
        left = tuple(nums[i] for i in left_idx)
        right = tuple(nums[i] for i in right_idx)
        if (left, right) in seen_parts:
            continue
        seen_parts.add((left, right))
        lv = _reachable(left, ops, integer_only)
        rv = _reachable(right, ops, integer_only)
        for op in ops:
            orders = [(lv, rv)] if op in _COMMUTATIVE else [(lv, rv), (rv, lv)]
            for xs, ys in orders:
                for x, xt in xs.items():
                    for y, yt in ys.items():
                        v = _combine(op, x, y, integer_only)
                        if v is not None and v not in out:
                            out[v] = _join(xt, op, yt)
    return out


def reachable(
    numbers: list[int] | tuple[int, ...], ops: str = ALL_OPS, *, integer_only: bool = False
) -> dict[Fraction, str]:
    """Every value reachable with each number exactly once, mapped to one equation for it."""
    ops = check_ops(ops)
    table = _reachable(tuple(sorted(numbers)), ops, integer_only)
    return {Fraction(v): text for v, (text, _) in table.items()}


def solve(numbers: list[int] | tuple[int, ...], target: int, ops: str = ALL_OPS) -> str | None:
    """One equation using every number once and only ``ops`` that equals ``target``, or None.

    Integer-only paths are preferred (readable, and what the generator writes); a rational path
    such as ``8 / (3 - 8 / 3)`` is returned only when no integer one exists.
    """
    ops = check_ops(ops)
    key = tuple(sorted(numbers))
    for integer_only in (True, False):
        if not integer_only and "/" not in ops:
            break
        hit = _reachable(key, ops, integer_only).get(target)
        if hit is not None:
            return hit[0]
    return None


# ------------------------------------------------------------------ parsing our own equations


Number = int | Fraction
"""Exact values: ``int`` while every intermediate is whole, ``Fraction`` once one is not."""


@dataclass(frozen=True)
class Step:
    """One binary operation of an equation, in evaluation order."""

    left: Number
    op: str
    right: Number
    result: Number

    def __str__(self) -> str:
        return f"{_fmt(self.left)}{self.op}{_fmt(self.right)}={_fmt(self.result)}"


def _fmt(v: Number) -> str:
    if isinstance(v, int) or v.denominator == 1:
        return str(int(v))
    return f"{v.numerator}/{v.denominator}"


_AST_OPS = {ast.Add: "+", ast.Sub: "-", ast.Mult: "*", ast.Div: "/"}


def equation_steps(equation: str) -> tuple[Number, list[Step], list[int]]:
    """Evaluate an equation made of integers, ``+-*/`` and parentheses, without ``eval``.

    Returns (value, steps in post-order, leaf numbers in order); a step's result is a
    ``Fraction`` exactly when the path has left the integers. Raises ValueError on anything else
    (other syntax, division by zero).
    """
    try:
        tree = ast.parse(equation.strip(), mode="eval").body
    except SyntaxError as exc:
        raise ValueError(f"not an equation: {equation!r}") from exc
    steps: list[Step] = []
    leaves: list[int] = []

    def walk(node: ast.AST) -> Number:
        if isinstance(node, ast.Constant) and type(node.value) is int:
            leaves.append(node.value)
            return node.value
        if isinstance(node, ast.BinOp) and type(node.op) in _AST_OPS:
            a, b = walk(node.left), walk(node.right)
            op = _AST_OPS[type(node.op)]
            if op == "+":
                r = a + b
            elif op == "-":
                r = a - b
            elif op == "*":
                r = a * b
            elif b == 0:
                raise ValueError(f"division by zero in {equation!r}")
            elif isinstance(a, int) and isinstance(b, int) and a % b == 0:
                r = a // b
            else:
                r = Fraction(a) / b
            steps.append(Step(a, op, b, r))
            return r
        raise ValueError(f"unsupported syntax in {equation!r}")

    value = walk(tree)
    return value, steps, leaves


# -------------------------------------------------------------- vectorised integer enumerator


@dataclass(frozen=True)
class ExpressionTable:
    """Every expression over ``k`` sorted leaves with operators ``ops``, as format templates.

    ``templates[c].format(*sorted_numbers)`` renders column ``c``; ``opmask[c]`` has bit i set
    when the column uses ``ALL_OPS[i]``, so sub-groups' columns can be selected without
    recomputing anything.
    """

    k: int
    ops: str
    templates: tuple[str, ...]
    opmask: np.ndarray
    plan: dict

    def columns_within(self, ops: str) -> np.ndarray:
        """Boolean mask of the columns that use only operators from ``ops``."""
        allowed = sum(1 << ALL_OPS.index(op) for op in ops)
        return (self.opmask & np.uint8(0xF ^ allowed)) == 0


@lru_cache(maxsize=64)
def expression_table(k: int, ops: str) -> ExpressionTable:
    """Build (once per ``k``/``ops``) the column layout that :func:`evaluate_table` fills."""
    ops = check_ops(ops)
    plan: dict[tuple[int, ...], list[tuple[str, tuple[int, ...], tuple[int, ...]]]] = {}
    texts: dict[tuple[int, ...], list[tuple[str, int]]] = {}
    masks: dict[tuple[int, ...], np.ndarray] = {}

    def build(subset: tuple[int, ...]) -> None:
        if subset in texts:
            return
        if len(subset) == 1:
            texts[subset] = [(f"{{{subset[0]}}}", _LEAF_PREC)]
            masks[subset] = np.zeros(1, dtype=np.uint8)
            return
        parts, txt, msk = [], [], []
        for left, right in _splits(subset):
            build(left)
            build(right)
            for op in ops:
                bit = np.uint8(1 << ALL_OPS.index(op))
                orders = [(left, right)] if op in _COMMUTATIVE else [(left, right), (right, left)]
                for a, b in orders:
                    parts.append((op, a, b))
                    txt.extend(_join(x, op, y) for x in texts[a] for y in texts[b])
                    msk.append((masks[a][:, None] | masks[b][None, :] | bit).ravel())
        plan[subset] = parts
        texts[subset] = txt
        masks[subset] = np.concatenate(msk)

    full = tuple(range(k))
    build(full)
    return ExpressionTable(
        k=k,
        ops=ops,
        templates=tuple(t for t, _ in texts[full]),
        opmask=masks[full],
        plan=plan,
    )


def evaluate_table(table: ExpressionTable, nums: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Values and validity of every column for each row of ``nums`` (shape (N, k), int64).

    Division is kept only where exact (so values stay integers); invalid cells hold 0.
    """
    nums = np.asarray(nums, dtype=np.int64)
    n = nums.shape[0]
    cache: dict[tuple[int, ...], tuple[np.ndarray, np.ndarray]] = {}

    def get(subset: tuple[int, ...]) -> tuple[np.ndarray, np.ndarray]:
        if subset in cache:
            return cache[subset]
        if len(subset) == 1:
            res = (nums[:, subset[0] : subset[0] + 1], np.ones((n, 1), dtype=bool))
        else:
            vals, oks = [], []
            for op, a, b in table.plan[subset]:
                va, oa = get(a)
                vb, ob = get(b)
                x, y = va[:, :, None], vb[:, None, :]
                ok = oa[:, :, None] & ob[:, None, :]
                if op == "+":
                    v = x + y
                elif op == "-":
                    v = x - y
                elif op == "*":
                    v = x * y
                else:
                    nz = y != 0
                    safe = np.where(nz, y, 1)
                    ok = ok & nz & (x % safe == 0)
                    v = np.where(ok, x // safe, 0)
                vals.append(v.reshape(n, -1))
                oks.append(np.broadcast_to(ok, v.shape).reshape(n, -1))
            res = (np.concatenate(vals, axis=1), np.concatenate(oks, axis=1))
        cache[subset] = res
        return res

    return get(tuple(range(table.k)))
