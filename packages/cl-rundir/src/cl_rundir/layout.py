"""Where everything of a run lives, relative to its run directory: one declaration of every name
and path that cl-trainer writes and cl-eval finds (also from the file names alone, when a run has
no run.json: the original experiments' layout)."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from pathlib import Path

PROJECT = "ContinualCountdown"
"""veRL's ``trainer.project_name``; also the prefix of every stage's experiment name."""
RUN_JSON = "run.json"
"""The run's record (``cl_rundir.record``)."""
LOGS_DIR = "logs"
"""Every stage's console output (:attr:`Stage.log`)."""
MODELS_DIR = "metrics"
"""Every stage's initial and final HF model (the original experiments' name); cl-eval writes its
metrics JSON beside them."""
BASE_MODEL_DIR = "base_model"
"""Where cl-trainer builds a base model itself (the CPU presets)."""
WARM_START_RECORD = "tiny_model.json"
"""Written last into a base model that cl-trainer builds and warm-starts itself: how it was
trained. Its ``completion_style`` (``countdown_data.sft.COMPLETION_STYLES``) is the answer text
the model learned, which cl-eval's soft accuracy scores."""


GREEDY_GENERATIONS = "greedy_generations.pt"
"""Beside the stages' validation directories (in ``validation/``): the local backend's last greedy
validation answers with the hash of what decided them, which the next stage's first validation
reuses on the same weights (``cl_trainer.local.val_cache``)."""


def completion_style(model_dir: Path) -> str:
    """The completion style a base model was warm-started on (its record's), else ``worked``: the
    SFT export's text, the closest thing to a real model's answers."""
    try:
        record = json.loads((Path(model_dir) / WARM_START_RECORD).read_text())
    except (OSError, ValueError):
        return "worked"
    style = record.get("completion_style") if isinstance(record, dict) else None
    return style if isinstance(style, str) else "worked"


def stage_name(round_: int, group: str) -> str:
    """``R<round>_<group>``: how every table, plot and directory names a stage."""
    return f"R{round_}_{group}"


@dataclass(frozen=True)
class Stage:
    """One stage of the curriculum and its files; every path is relative to the run directory."""

    index: int
    round: int
    group: str

    @property
    def name(self) -> str:
        return stage_name(self.round, self.group)

    @property
    def experiment_name(self) -> str:
        """veRL's ``trainer.experiment_name`` (one W&B run per stage)."""
        return f"{PROJECT}_{self.name}"

    @property
    def log(self) -> str:
        """The stage process's whole console output (the original experiments' name)."""
        return f"{LOGS_DIR}/{self.experiment_name}.log"

    @property
    def initial_model(self) -> str:
        """The HF model the stage started from."""
        return f"{MODELS_DIR}/initial_{self.round}_{self.group}"

    @property
    def final_model(self) -> str:
        """The HF model at the stage's end: the next stage starts from it."""
        return f"{MODELS_DIR}/final_{self.round}_{self.group}"

    @property
    def final_critic(self) -> str:
        """PPO's critic export at the stage's end."""
        return f"critics/final_{self.round}_{self.group}"

    @property
    def checkpoint_dir(self) -> str:
        """veRL's ``trainer.default_local_dir``: resumable ``global_step_N`` checkpoints."""
        return f"checkpoints/{self.name}"

    @property
    def validation_dir(self) -> str:
        """veRL's ``trainer.validation_data_dir``: every validation answer, one JSONL per step."""
        return f"validation/{self.name}"

    @property
    def rollout_dir(self) -> str:
        """veRL's ``trainer.rollout_data_dir``: every training sample, one JSONL per step, until
        the stage ends and they are compacted into :attr:`rollouts`."""
        return f"rollouts/{self.name}"

    @property
    def rollouts(self) -> str:
        """The stage's training samples, one row each (:data:`ROLLOUT_COLUMNS`)."""
        return f"rollouts/{self.name}.parquet"

    @property
    def replay_file(self) -> str:
        """The stage's training file when a remedy that acts on data rewrote it (replay)."""
        return f"replay/{self.name}/train.parquet"

    @property
    def joint_file(self) -> str:
        """The stage's training file in a joint curriculum (``record.CURRICULA``): an equal
        mixture of every group's training puzzles, as many as the stage's own group has."""
        return f"joint/{self.name}/train.parquet"

    @property
    def hydra_dir(self) -> str:
        """Hydra's run directory for the stage process (its ``.hydra/`` config record)."""
        return f"hydra/{self.name}"


ROLLOUT_COLUMNS = ("step", "prompt", "score", "correct", "response_chars")
""":attr:`Stage.rollouts`' columns: the training step, the prompt answered (numbered within its
step: ``rollout.n`` answers share one), the reward, whether the answer is correct (the verifier's
``acc``, undiluted by the format reward) and the response's length in characters;
``input``, ``output`` and ``gts`` (the samples' text) follow only when the user keeps them."""

LOG_FILE = re.compile(rf"{PROJECT}_R(\d+)_(.+)\.log$")
"""Matches :attr:`Stage.log`'s file name: (round, group)."""
MODEL_DIR = re.compile(r"(initial|final)_(\d+)_(.+)$")
"""Matches :attr:`Stage.initial_model` / :attr:`Stage.final_model`'s name: (kind, round, group)."""
