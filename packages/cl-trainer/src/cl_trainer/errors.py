"""The trainer's one error type: a message of one line that names the fix.

Raised by the checks and the engine; only ``cl_trainer.cli`` turns it into a click error.
"""


class TrainerError(Exception):
    """A condition the user can fix (bad option, missing data, config change, ...)."""


class UsageError(TrainerError):
    """A bad option or option combination (the CLI exits with click's usage status, 2)."""
