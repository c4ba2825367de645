"""The workspace's packages depend on each other one way, as the lock resolves them: the reward
stands alone, the run directory's contract sits between the trainer and the evaluator (neither
needs the other), and the evaluator runs without torch (the CPU image)."""

from __future__ import annotations

import tomllib
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
LOCK = {p["name"]: p for p in tomllib.loads((ROOT / "uv.lock").read_text())["package"]}
MEMBERS = sorted(p.name for p in (ROOT / "packages").iterdir() if (p / "pyproject.toml").is_file())


def requires(name: str, extras: tuple[str, ...] = ()) -> set[str]:
    """What installing ``name[extras]`` installs, by the lock (its dependencies' extras too)."""
    visited: set[tuple[str, tuple[str, ...]]] = set()
    todo = [(name, extras)]
    while todo:
        pkg, wanted = todo.pop()
        entry = LOCK[pkg]
        deps = list(entry.get("dependencies", []))
        for extra in wanted:
            deps += entry.get("optional-dependencies", {}).get(extra, [])
        for dep in deps:
            key = (dep["name"], tuple(dep.get("extra", ())))
            if key not in visited:
                visited.add(key)
                todo.append(key)
    return {n for n, _ in visited}


def test_every_member_is_locked() -> None:
    assert MEMBERS == ["cl-eval", "cl-rundir", "cl-trainer", "countdown-data", "countdown-reward"]
    for name in MEMBERS:
        assert LOCK[name]["source"] == {"editable": f"packages/{name}"}


def test_the_dependency_arrows_point_one_way() -> None:
    assert requires("countdown-reward") == set()  # the standalone wheel
    assert "countdown-reward" in requires("countdown-data")
    assert requires("cl-rundir") == {"numpy"}
    for side in ("cl-trainer", "cl-eval"):
        assert "cl-rundir" in requires(side)
    assert "cl-eval" not in requires("cl-trainer")
    assert "cl-trainer" not in requires("cl-eval", ("probe",))


def test_the_evaluator_and_the_data_need_no_torch() -> None:
    for name in ("cl-eval", "countdown-data", "cl-rundir"):
        assert not {"torch", "verl", "ray"} & requires(name), name
    assert "torch" in requires("cl-eval", ("probe",))
