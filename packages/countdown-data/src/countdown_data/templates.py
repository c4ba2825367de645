"""Prompt templates. Each names only the operators of the puzzle's group.

``base`` is TinyZero's completion-style prompt for base models, sent as one user message so veRL's
chat-template path works unchanged; ``chat`` splits it into system + user for instruct models;
``compact`` is a one-line prompt for the tiny character-level model of the local backend.
"""

from __future__ import annotations

from collections.abc import Sequence

from countdown_data.groups import OPERATORS, check_group

TEMPLATES: tuple[str, ...] = ("base", "chat", "compact")

_SYSTEM = (
    "You are a helpful assistant. You first think about the reasoning process in the mind "
    "and then provide the user with the answer."
)


def _example(ops: str) -> str:
    """A format example that uses only the group's operators (``(1 + 2) / 3`` for all four)."""
    return f"(1 + 2) {ops[-1]} 3"


def _task(numbers: Sequence[int], target: int, ops: str) -> str:
    listed = ", ".join(ops)
    return (
        f"Using the numbers {list(numbers)}, create an equation that equals {target}. "
        f"You can use basic arithmetic operations ({listed}) and each number must be used "
        "exactly once. Show your work in <think> </think> tags. And return the final answer "
        f"in <answer> </answer> tags, for example <answer> {_example(ops)} </answer>."
    )


def render_prompt(
    template: str, numbers: Sequence[int], target: int, group: str
) -> list[dict[str, str]]:
    """The chat messages for one puzzle (the ``prompt`` column)."""
    ops = OPERATORS[check_group(group)]
    if template == "base":
        content = (
            "A conversation between User and Assistant. The user asks a question, and the "
            "Assistant solves it. The assistant first thinks about the reasoning process in "
            "the mind and then provides the user with the answer.\n"
            f"User: {_task(numbers, target, ops)}\n"
            "Assistant: Let me solve this step by step.\n<think>"
        )
        return [{"role": "user", "content": content}]
    if template == "chat":
        return [
            {"role": "system", "content": _SYSTEM},
            {"role": "user", "content": _task(numbers, target, ops)},
        ]
    if template == "compact":
        nums = " ".join(str(n) for n in numbers)
        return [{"role": "user", "content": f"nums {nums} target {target} ops {ops}\n"}]
    raise ValueError(f"unknown template {template!r}; choose from {', '.join(TEMPLATES)}")


def operators_named(content: str, template: str) -> str:
    """The operator list a rendered prompt announces (what ``validate`` compares with the group)."""
    if template == "compact":
        return content.rsplit(" ops ", 1)[1].strip()
    start = content.index("arithmetic operations (") + len("arithmetic operations (")
    return content[start : content.index(")", start)].replace(", ", "")
