"""Supervised warm-start pairs (prompt -> worked solution) from the reference solutions.

The tiny local model starts from random weights; fine-tuning it on these pairs first gives RL a
non-zero reward to work with. The completion spells out the reference solution's steps in
evaluation order, then the equation, in the tags the reward function reads.
"""

from __future__ import annotations

import json
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from cl_rundir.atomic import writing
from countdown_data.dataset import load_rows, read_manifest
from countdown_data.groups import check_group
from countdown_data.solver import equation_steps
from countdown_data.templates import render_prompt

THINK = "<think>"
COMPLETION_STYLES = ("worked", "compact")
"""How a reference solution is written out: ``worked`` (its steps, then the equation) or
``compact`` (the equation alone, no spaces: what the CPU presets' character-level model learns)."""


def sft_completion(solution: str, *, open_think: bool = True) -> str:
    """``<think>3*7=21, 25+21=46</think><answer>25 + 3 * 7</answer>`` for ``25 + 3 * 7``.

    With ``open_think=False`` the leading ``<think>`` is left out, for prompts (the ``base``
    template) that already end with it.
    """
    _, steps, _ = equation_steps(solution)
    thought = ", ".join(str(s) for s in steps)
    head = THINK if open_think else ""
    return f"{head}{thought}</think><answer>{solution}</answer>"


def compact_completion(solution: str, nums: Iterable[int], *, open_think: bool = True) -> str:
    """``<think></think><answer>25+3*7</answer>`` for ``25 + 3 * 7``: no steps, no spaces, and a
    pure sum written in the prompt's number order (a copy, not a sort): the short, copy-like
    target a character-level model of 625K parameters can learn in a minute."""
    answer = solution.replace(" ", "")
    if set(answer) <= set("0123456789+"):
        answer = "+".join(str(n) for n in nums)
    head = THINK if open_think else ""
    return f"{head}</think><answer>{answer}</answer>"


def prompt_text(messages: list[Mapping[str, str]]) -> str:
    """A message list as one string: the contents joined by newlines (one message: its content)."""
    return "\n".join(m["content"] for m in messages)


def sft_examples(
    source: Path | str | Iterable[Mapping[str, Any]],
    *,
    split: str = "train",
    groups: Iterable[str] | None = None,
    template: str | None = None,
    limit: int | None = None,
    style: str = "worked",
) -> list[dict[str, Any]]:
    """Prompt/completion pairs for supervised warm-starting.

    ``source`` is a data directory written by ``gen`` (its ``split`` of every manifest group, or of
    ``groups``) or rows as read from the parquet files. ``template`` re-renders prompts (e.g.
    ``"compact"`` for a tiny model) instead of using the stored ones; ``limit`` caps rows per group;
    ``style`` is one of ``COMPLETION_STYLES``.
    Each example: ``prompt`` (str), ``completion`` (str), ``group``, ``target``, ``nums``.
    """
    if style not in COMPLETION_STYLES:
        raise ValueError(f"style {style!r}: use one of {', '.join(COMPLETION_STYLES)}")
    if isinstance(source, str | Path):
        names = list(groups) if groups is not None else read_manifest(Path(source))["groups"]
        rows: Iterable[Mapping[str, Any]] = [
            row for g in names for row in load_rows(Path(source), check_group(g), split)[:limit]
        ]
        limit = None
    else:
        rows = source
    wanted = set(groups) if groups is not None else None
    taken: dict[str, int] = {}
    out = []
    for row in rows:
        info = row["extra_info"]
        group = info["group"]
        if (wanted is not None and group not in wanted) or taken.get(group, 0) == limit:
            continue
        taken[group] = taken.get(group, 0) + 1
        messages = (
            render_prompt(template, row["nums"], row["target"], group)
            if template is not None
            else row["prompt"]
        )
        prompt = prompt_text(messages)
        open_think = not prompt.endswith(THINK)
        out.append(
            {
                "prompt": prompt,
                "completion": (
                    sft_completion(info["solution"], open_think=open_think)
                    if style == "worked"
                    else compact_completion(info["solution"], row["nums"], open_think=open_think)
                ),
                "group": group,
                "target": row["target"],
                "nums": list(row["nums"]),
            }
        )
    return out


def write_sft_jsonl(examples: list[dict[str, Any]], path: Path) -> None:
    """One JSON object per line, written atomically."""
    with writing(Path(path)) as tmp, open(tmp, "w") as f:
        for ex in examples:
            f.write(json.dumps(ex) + "\n")
