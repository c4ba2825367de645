"""The operator groups of the continual curriculum: one definition, imported by every package."""

from __future__ import annotations

GROUPS: tuple[str, ...] = ("plus", "plus_minus", "plus_minus_mul", "plus_minus_mul_div")
"""Curriculum order: each group adds one operator to the previous one."""

OPERATORS: dict[str, str] = {
    "plus": "+",
    "plus_minus": "+-",
    "plus_minus_mul": "+-*",
    "plus_minus_mul_div": "+-*/",
}


def data_source(group: str) -> str:
    """veRL reports validation per ``data_source``; one per group gives per-group accuracy."""
    return f"countdown_{group}"


def group_of(source: str) -> str:
    """The group a ``data_source`` names (inverse of :func:`data_source`; others unchanged)."""
    return source.removeprefix("countdown_")


def check_group(group: str) -> str:
    """Return ``group`` unchanged, or raise a one-line error listing the valid names."""
    if group not in OPERATORS:
        raise ValueError(f"unknown group {group!r}; choose from {', '.join(GROUPS)}")
    return group
