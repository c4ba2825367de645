"""The README's two commands are the ones CI runs and the ones that exist."""

import fnmatch
import re
from pathlib import Path

import wandb

from cl_trainer.config import resolve_config
from cl_trainer.sizing import disk_needed, run_size
from cl_trainer.stages import plan_stages
from cl_trainer.tracking import wandb_env

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


def test_the_disk_table_is_what_the_trainer_asks_for(tmp_path: Path) -> None:
    readme = (ROOT / "README.md").read_text()
    table = dict(re.findall(r"^\| (0\.5b|1\.5b) \| (\d+ GB \| \d+ GB) \|$", readme, re.M))
    assert set(table) == {"0.5b", "1.5b"}
    for size, cells in table.items():
        for algo, cell in zip(("ppo", "grpo"), cells.split(" | "), strict=True):
            cfg = resolve_config(size, algo=algo, data_dir=tmp_path / "defaults")
            need = disk_needed(run_size(cfg, plan_stages(cfg)))
            assert cell == f"{need / 1e9:.0f} GB", (size, algo)


def test_wandb_sync_in_the_readmes_finds_the_offline_runs() -> None:
    """W&B writes offline runs under ``<WANDB_DIR>/wandb/``, and cl-trainer sets WANDB_DIR."""
    written = []
    for size in ("0.5b", "1.5b"):
        cfg = resolve_config(size, out=ROOT / "runs" / size)
        root = Path(wandb.Settings(root_dir=wandb_env(cfg)["WANDB_DIR"]).wandb_dir)
        written.append(str((root / "offline-run-20260101_000000-abc123").relative_to(ROOT)))
    for readme in (ROOT / "README.md", ROOT / "packages" / "cl-trainer" / "README.md"):
        synced = re.findall(r"wandb sync (\S+?)`", readme.read_text())
        assert synced, readme
        for pattern in synced:
            assert any(fnmatch.fnmatch(path, pattern) for path in written), (readme, pattern)
