"""veRL 0.9.1's checkpoint layout, defined once for the stage engine and the local backend.

``<default_local_dir>/global_step_N/<role>/huggingface/`` is a role's HF export (``hf_model`` in
``checkpoint.save_contents``), and ``latest_checkpointed_iteration.txt`` names the newest complete
step (veRL writes it after the step's files).
"""

from __future__ import annotations

import contextlib
import re
import shutil
from pathlib import Path

TRACKER = "latest_checkpointed_iteration.txt"
STEP_DIR = re.compile(r"^global_step_(\d+)$")
WEIGHT_FILES = ("model.safetensors", "model.safetensors.index.json")
"""What makes an HF export complete: veRL writes ``config.json`` first, the weights after it."""


def step_dir(root: Path, step: int) -> Path:
    return Path(root) / f"global_step_{step}"


def hf_export(root: Path, step: int, role: str = "actor") -> Path:
    return step_dir(root, step) / role / "huggingface"


def has_weights(model_dir: Path) -> bool:
    """An HF model directory with its weights (not just the ``config.json`` written first)."""
    return any((Path(model_dir) / name).is_file() for name in WEIGHT_FILES)


def steps(root: Path) -> list[int]:
    """Every ``global_step_N`` directory's N, ascending."""
    root = Path(root)
    if not root.is_dir():
        return []
    return sorted(int(m.group(1)) for c in root.iterdir() if (m := STEP_DIR.match(c.name)))


def read_tracker(root: Path) -> int | None:
    with contextlib.suppress(OSError, ValueError):
        return int((Path(root) / TRACKER).read_text().strip())
    return None


def exported_steps(root: Path, role: str = "actor") -> list[int]:
    """Steps whose ``role`` export has its weights, ascending."""
    return [s for s in steps(root) if has_weights(hf_export(root, s, role))]


def latest_export(root: Path) -> int | None:
    """The tracker's step when its actor export is complete, else the newest complete export."""
    complete = exported_steps(root)
    step = read_tracker(root)
    if step in complete:
        return step
    return complete[-1] if complete else None


def prune(root: Path, keep: int) -> list[int]:
    """Delete all but the newest ``keep`` step directories; with none kept, the tracker too."""
    found = steps(root)
    doomed = found[: max(0, len(found) - keep)]
    for step in doomed:
        shutil.rmtree(step_dir(root, step))
    if keep == 0:
        (Path(root) / TRACKER).unlink(missing_ok=True)
    return doomed


def keep_resume_point(root: Path) -> list[int]:
    """Before a stage resumes: delete every step directory but the tracker's, the one veRL
    resumes from. Older ones would stay to the stage's end (veRL rotates out only what it wrote
    in the same process) and newer ones are half-written (the tracker is written last). Without
    a tracker, or with its step missing, nothing is deleted. Returns the steps deleted."""
    step = read_tracker(root)
    if step is None or not step_dir(root, step).is_dir():
        return []
    doomed = [s for s in steps(root) if s != step]
    for s in doomed:
        shutil.rmtree(step_dir(root, s))
    return doomed
