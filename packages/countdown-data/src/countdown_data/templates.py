"""Prompt templates. Each names only the operators of the puzzle's group.

``base`` is TinyZero's completion-style prompt for base models, sent as one user message so veRL's
chat-template path works unchanged; ``chat`` splits it into system + user for instruct models;
``compact`` is a one-line prompt for the tiny character-level model of the local backend.
"""

from __future__ import annotations

import re
from collections.abc import Mapping, Sequence
from typing import Any

from countdown_data.groups import OPERATORS, check_group

TEMPLATES: tuple[str, ...] = ("base", "chat", "compact")
COMPLETION_TEMPLATES: frozenset[str] = frozenset({"base"})
"""Templates whose one message is the model's whole input (TinyZero's completion style, ending in
``<think>``): a trainer feeds it as it is, not inside the tokenizer's chat turn."""
PASS_THROUGH_CHAT_TEMPLATE = "{% for message in messages %}{{ message['content'] }}{% endfor %}"
"""A chat template that renders the messages' text only: how a completion-style prompt reaches
the model (veRL always applies a chat template; no ChatML turn, no default system prompt)."""

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


_OPS = re.compile(r"\bops ([+\-*/]+)\s|arithmetic operations \(([+\-*/, ]+)\)")


def prompt_operators(text: str) -> str | None:
    """The operators a rendered prompt announces (any template, inside a chat template or not)."""
    m = _OPS.search(text)
    return None if m is None else (m.group(1) or m.group(2)).replace(", ", "")


def group_of_prompt(text: str) -> str | None:
    """The group a rendered prompt asks for: what names a validation answer's group when only the
    prompt text was kept (veRL's validation dumps)."""
    ops = prompt_operators(text)
    return next((g for g, o in OPERATORS.items() if o == ops), None)


def model_input(messages: Sequence[Mapping[str, str]], template: str, tokenizer: Any) -> str:
    """The text a model is fed for a prompt of ``template``, as the trainer renders it."""
    chat_template = PASS_THROUGH_CHAT_TEMPLATE if template in COMPLETION_TEMPLATES else None
    return tokenizer.apply_chat_template(
        list(messages), chat_template=chat_template, add_generation_prompt=True, tokenize=False
    )
