"""A curriculum run directory: the contract between cl-trainer (writes it) and cl-eval (reads it).

Stage names, the file layout and veRL's console metric-line format are defined here once, so the
two sides cannot drift. It lives in countdown-data because both packages depend on it and neither
may depend on the other.
"""

from __future__ import annotations

import json
import math
import re
from dataclasses import dataclass
from pathlib import Path

from countdown_data.groups import data_source

WARM_START_RECORD = "tiny_model.json"
"""Written last into a base model that cl-trainer builds and warm-starts itself (the CPU presets):
how it was trained. Its ``completion_style`` (``countdown_data.sft.COMPLETION_STYLES``) is the
answer text the model learned, which cl-eval's soft accuracy scores."""

PROJECT = "ContinualCountdown"
"""veRL's ``trainer.project_name``; also the prefix of every stage's experiment name."""
MANIFEST = "run.json"


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
    """One stage of the curriculum; every path is relative to the run directory (as in run.json)."""

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
        return f"logs/{self.experiment_name}.log"

    @property
    def initial_model(self) -> str:
        """The HF model the stage started from."""
        return f"metrics/initial_{self.round}_{self.group}"

    @property
    def final_model(self) -> str:
        """The HF model at the stage's end: the next stage starts from it."""
        return f"metrics/final_{self.round}_{self.group}"

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
        """The stage's training file when earlier groups are replayed into it."""
        return f"replay/{self.name}/train.parquet"

    @property
    def hydra_dir(self) -> str:
        """Hydra's run directory for the stage process (its ``.hydra/`` config record)."""
        return f"hydra/{self.name}"

    @property
    def data_source(self) -> str:
        return data_source(self.group)


ROLLOUT_COLUMNS = ("step", "score", "correct", "response_chars")
""":attr:`Stage.rollouts`' columns: the training step, the reward, whether the answer is correct
(the verifier's ``acc``, undiluted by the format reward) and the response's length in characters;
``input``, ``output`` and ``gts`` (the samples' text) follow only when the user keeps them."""

LOG_FILE = re.compile(rf"{PROJECT}_R(\d+)_(.+)\.log$")
"""Matches :attr:`Stage.log`'s file name: (round, group)."""
MODEL_DIR = re.compile(r"(initial|final)_(\d+)_(.+)$")
"""Matches :attr:`Stage.initial_model` / :attr:`Stage.final_model`'s name: (kind, round, group)."""


# ---------------------------------------------------------------------------- metric lines
#
# veRL 0.9.1 prints metrics with ``verl.utils.logger.aggregate_logger.concat_dict_to_str``:
# ``f"step:{step}"`` then ``f"{key}:{pprint.pformat(value)}"`` per numeric value, joined by
# ``" - "``. With numpy>=2 a numpy scalar prints as its repr (``np.float64(0.5)``); floats print as
# ``0.5``, ``nan``, ``inf``; bools as ``True``. Under Ray the line carries a prefix
# (``(TaskRunner pid=123) step:3 - ...``), possibly with ANSI colours.

_ANSI = re.compile(r"\x1b\[[0-9;?]*[A-Za-z]")
_STEP = re.compile(r"(?:^|[\s)\]])step:(\d+)(?= - |$)")
_NUMBER = re.compile(r"[-+]?(?:\d+\.?\d*|\.\d+)(?:[eE][-+]?\d+)?|[-+]?(?:nan|inf)")
_NP_SCALAR = re.compile(r"np\.(?:float|int|uint)\d*\((.*)\)")
_SPECIAL = {"True": 1.0, "False": 0.0}
VAL_PREFIXES = ("val-core/", "val-aux/")
VAL_KEY = re.compile(r"val-(core|aux)/(.+)/(acc|reward)/mean@(\d+)$")
"""veRL's per-data-source validation means: (core|aux, data source, acc|reward, N)."""
TOTAL_STEPS = re.compile(r"Total training steps: (\d+)")
"""What veRL's trainer (and the local backend) print once the dataloader is built."""


def parse_value(text: str) -> float | None:
    """One pformat'ed number (``0.5``, ``nan``, ``np.float64(0.5)``, ``True``) as a float."""
    text = text.strip()
    if text in _SPECIAL:
        return _SPECIAL[text]
    m = _NP_SCALAR.fullmatch(text)
    if m:
        text = m.group(1)
    if not _NUMBER.fullmatch(text):
        return None
    return float(text)


def parse_metric_line(line: str) -> tuple[int, dict[str, float]] | None:
    """``(step, metrics)`` of a veRL metric line, or None for any other line.

    Fields whose value does not parse (e.g. cut off by a crash) are dropped, not guessed.
    """
    line = _ANSI.sub("", line).rstrip("\r\n")
    m = _STEP.search(line)
    if not m:
        return None
    metrics: dict[str, float] = {}
    rest = line[m.end() :]
    for part in rest.split(" - ")[1:] if rest else []:
        key, sep, raw = part.partition(":")
        if not sep or not key or " " in key:
            continue
        value = parse_value(raw)
        if value is not None:
            metrics[key] = value
    return int(m.group(1)), metrics


def is_validation_key(key: str) -> bool:
    return key.startswith(VAL_PREFIXES)


def data_sources(metrics: dict[str, float]) -> list[str]:
    """The data sources named by validation keys, in order of appearance."""
    return list(dict.fromkeys(m.group(2) for k in metrics if (m := VAL_KEY.match(k))))


def group_accuracy(metrics: dict[str, float], source: str) -> tuple[float, str] | None:
    """Accuracy of one data source in a validation record, with the key it came from.

    Preference: ``acc`` (fraction fully correct) over ``reward`` (mean reward, with format
    credit), ``val-core`` over ``val-aux``, and the smallest N of ``mean@N``.
    """
    best: tuple[tuple[bool, bool, int], float, str] | None = None
    for key, value in metrics.items():
        m = VAL_KEY.match(key)
        if not m or m.group(2) != source or math.isnan(value):
            continue
        rank = (m.group(3) != "acc", m.group(1) != "core", int(m.group(4)))
        if best is None or rank < best[0]:
            best = (rank, value, key)
    return None if best is None else (best[1], best[2])
