"""``cl-trainer`` on a disk that fills up mid-stage: ``python tests/full_disk.py MODE <args>``.

The trainer's file writes (the stage's log, run.json) go through ``io.open``. From the first
stage log line that reports a step, every write fails as a full disk's does (``OSError: [Errno
28] No space left on device``) beyond the room that deleting a file gives back: ``reserve``
counts the deleted file's size as room (a real disk's behaviour), ``hopeless`` gives none (the
room went to another process at once). The stage process itself writes normally.
"""

from __future__ import annotations

import errno
import io
import os
import sys
from typing import Any

MODE = sys.argv.pop(1)
STATE = {"full": False, "room": 0}
_open, _unlink = io.open, os.unlink


class _File:
    def __init__(self, f: Any) -> None:
        self._f = f

    def write(self, data: Any) -> int:
        if not STATE["full"] and b"step:" in bytes(data):
            STATE["full"] = True
        if STATE["full"]:
            if len(data) > STATE["room"]:
                raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
            STATE["room"] -= len(data)
        return self._f.write(data)

    def __enter__(self) -> _File:
        return self

    def __exit__(self, *exc: object) -> None:
        self._f.close()

    def __getattr__(self, name: str) -> Any:
        return getattr(self._f, name)


def _full_open(file: Any, mode: str = "r", *args: Any, **kw: Any) -> Any:
    f = _open(file, mode, *args, **kw)
    return _File(f) if ("w" in mode or "a" in mode) and "b" in mode else f


def _full_unlink(path: Any, *args: Any, **kw: Any) -> None:
    size = os.stat(path).st_size if STATE["full"] and os.path.isfile(path) else 0
    _unlink(path, *args, **kw)
    if MODE == "reserve":
        STATE["room"] += size


io.open = _full_open
os.unlink = _full_unlink

from cl_trainer.cli import main  # noqa: E402  (after the patch: pathlib binds io.open late)

main()
