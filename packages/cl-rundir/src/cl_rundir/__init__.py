"""The run directory of a continual-countdown curriculum: the contract between cl-trainer, which
writes it, and cl-eval, which reads it (neither depends on the other).

- ``layout``: every name and path in a run directory (stages, logs, models, checkpoints);
- ``record``: run.json as typed records, with its one reader, writer and schema check;
- ``metric_lines``: veRL's console metric lines and its per-group validation keys;
- ``dormant``: what a dormant MLP unit is (the ReDo remedy resets them, cl-eval counts them);
- ``atomic``: atomic writes, used by every package for every file it writes.
"""

from cl_rundir.layout import PROJECT, RUN_JSON, Stage, stage_name
from cl_rundir.record import (
    RecordError,
    RemedyRecord,
    RunRecord,
    StageRecord,
    read_record,
    write_record,
)

__all__ = [
    "PROJECT",
    "RUN_JSON",
    "RecordError",
    "RemedyRecord",
    "RunRecord",
    "Stage",
    "StageRecord",
    "read_record",
    "stage_name",
    "write_record",
]
