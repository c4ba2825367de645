"""Countdown puzzles per operator group: generator, solver, veRL-ready parquet and its manifest.

Also the curriculum's group list (``groups``), which every package of the workspace imports.
"""

from countdown_data.dataset import load_rows, read_manifest, split_path, write_dataset
from countdown_data.generate import GenConfig, GenerationError, generate
from countdown_data.groups import GROUPS, OPERATORS, check_group, data_source
from countdown_data.sft import sft_examples
from countdown_data.solver import solve

__all__ = [
    "GROUPS",
    "OPERATORS",
    "GenConfig",
    "GenerationError",
    "check_group",
    "data_source",
    "generate",
    "load_rows",
    "read_manifest",
    "sft_examples",
    "solve",
    "split_path",
    "write_dataset",
]
