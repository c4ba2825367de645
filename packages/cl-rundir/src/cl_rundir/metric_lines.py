"""veRL's console metric lines and its validation keys: how a stage's log says what it measured.

cl-trainer's console reads them live, cl-eval reads them from the stage logs; both parse them
here. veRL 0.9.1 prints metrics with ``verl.utils.logger.aggregate_logger.concat_dict_to_str``:
``f"step:{step}"`` then ``f"{key}:{pprint.pformat(value)}"`` per numeric value, joined by
``" - "``. With numpy>=2 a numpy scalar prints as its repr (``np.float64(0.5)``); floats print as
``0.5``, ``nan``, ``inf``; bools as ``True``. Under Ray the line carries a prefix
(``(TaskRunner pid=123) step:3 - ...``), possibly with ANSI colours.
"""

from __future__ import annotations

import math
import re

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
