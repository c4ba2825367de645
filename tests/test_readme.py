"""The README's two commands are the ones CI runs and the ones that exist."""

import re
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]


def _command(marker: str) -> str:
    readme = (ROOT / "README.md").read_text()
    match = re.search(rf"<!-- {marker} -->\n```bash\n(.+?)\n```", readme)
    assert match, f"README has no {marker} block"
    return match.group(1)


def test_ci_runs_the_readme_test_command_verbatim() -> None:
    ci = (ROOT / ".ci" / "run").read_text().splitlines()
    assert _command("test-command") in ci


def test_readme_commands_start_from_pip_only() -> None:
    for marker in ("main-command", "test-command"):
        command = _command(marker)
        assert command.startswith("pip install uv && uv run --locked "), command
