"""Prompt templates: each names only its group's operators, and the group can be read back."""

from __future__ import annotations

import pytest

from countdown_data.groups import GROUPS
from countdown_data.templates import TEMPLATES, group_of_prompt, render_prompt


@pytest.mark.parametrize("template", TEMPLATES)
@pytest.mark.parametrize("group", GROUPS)
def test_the_group_reads_back_from_any_rendering(template: str, group: str) -> None:
    messages = render_prompt(template, [12, 7, 3], 19, group)
    text = "\n".join(m["content"] for m in messages)
    assert group_of_prompt(text) == group
    chatml = f"<|im_start|>user\n{text}<|im_end|>\n<|im_start|>assistant\n"
    assert group_of_prompt(chatml) == group
    assert group_of_prompt("no operators named here") is None
