"""Atomic writes for every package: a reader sees the old file (or directory) or the new one.

One helper for data sets, manifests, run.json, checkpoints, reports and plots. A temp file is made
beside its target (same filesystem, so the rename is atomic) and named ``.<target>.<random>.tmp``,
so a later run recognises, and removes, what a killed one left behind. It gets the mode an
ordinary ``open()`` would give (0666 less the umask): ``mkstemp``'s 0600 would survive the rename
and hide the file from the other users of a shared filesystem. The file is fsynced before the
rename and its directory after it, so a crash cannot leave a renamed but empty file.
"""

from __future__ import annotations

import os
import shutil
import tempfile
from collections.abc import Callable, Iterable, Iterator
from contextlib import contextmanager, suppress
from pathlib import Path

TEMP_SUFFIX = ".tmp"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _fsync(path: Path) -> None:
    """fsync a file or a directory (a directory's fsync makes a rename inside it durable)."""
    fd = os.open(path, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _fsync_tree(root: Path) -> None:
    for path in sorted(root.rglob("*")):
        if path.is_file() and not path.is_symlink():
            _fsync(path)
    _fsync(root)


def _temp_prefix(target: Path) -> str:
    return f".{target.name}."


def new_temp_file(target: Path) -> Path:
    """An empty temp file beside ``target``, readable as a plain ``open()`` would make it."""
    target.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=_temp_prefix(target), suffix=TEMP_SUFFIX, dir=target.parent)
    os.close(fd)
    os.chmod(tmp, 0o666 & ~_umask())
    return Path(tmp)


def _publish(tmp: Path, target: Path) -> None:
    """Rename a finished temp file or directory over ``target`` and make the rename durable."""
    if tmp.is_dir():
        _fsync_tree(tmp)
    else:
        _fsync(tmp)
    os.replace(tmp, target)
    _fsync(target.parent)


@contextmanager
def writing(target: Path) -> Iterator[Path]:
    """Yield a temp path to write ``target``'s content to; it replaces ``target`` on success.

    For writers that take a path (``pyarrow.parquet.write_table``, ``Path.write_text``); on any
    error, or a KeyboardInterrupt, the temp file is removed and ``target`` is untouched.
    """
    target = Path(target)
    tmp = new_temp_file(target)
    try:
        yield tmp
        _publish(tmp, target)
    finally:
        tmp.unlink(missing_ok=True)


def write_atomic(target: Path, data: str | bytes) -> None:
    """Replace ``target`` with ``data`` (text is UTF-8)."""
    with writing(target) as tmp:
        tmp.write_bytes(data.encode() if isinstance(data, str) else data)


@contextmanager
def building_dir(final: Path) -> Iterator[Path]:
    """Yield a temp directory beside ``final``; on success it replaces ``final``, else vanishes."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=_temp_prefix(final), suffix=TEMP_SUFFIX, dir=final.parent))
    os.chmod(tmp, 0o777 & ~_umask())
    old = final.parent / f"{_temp_prefix(final)}old{TEMP_SUFFIX}"
    try:
        yield tmp
        if final.exists() or final.is_symlink():
            _remove(old)
            os.replace(final, old)  # moved aside, not deleted, until the new one is in place
        _publish(tmp, final)
        _remove(old)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


class StagedWrites:
    """Several files that appear together: each is written to a temp file now, and all are renamed
    into place on :meth:`commit`. Leaving the ``with`` block without committing (an error, Ctrl-C)
    deletes the temporaries, so the existing files stay exactly as they were."""

    def __init__(self) -> None:
        self._staged: list[tuple[Path, Path]] = []

    def write(self, target: Path, writer: Callable[[Path], None]) -> Path:
        """Stage ``target``: ``writer(temp_path)`` writes it. Returns the (fsynced) temp path."""
        target = Path(target)
        tmp = new_temp_file(target)
        self._staged.append((tmp, target))
        writer(tmp)
        _fsync(tmp)
        return tmp

    def commit(self) -> list[Path]:
        """Rename every staged file into place (in staging order); returns the targets."""
        done = []
        for tmp, target in self._staged:
            os.replace(tmp, target)
            done.append(target)
        for parent in dict.fromkeys(t.parent for t in done):
            _fsync(parent)
        self._staged.clear()
        return done

    def __enter__(self) -> StagedWrites:
        return self

    def __exit__(self, *exc: object) -> None:
        for tmp, _ in self._staged:
            tmp.unlink(missing_ok=True)
        self._staged.clear()


def stale_temps(targets: Iterable[Path]) -> list[Path]:
    """Temp files and directories that a killed writer of ``targets`` left behind (a target's name
    may be a glob pattern, e.g. ``global_step_*``)."""
    found = []
    for target in targets:
        target = Path(target)
        if target.parent.is_dir():
            found += sorted(target.parent.glob(f"{_temp_prefix(target)}*{TEMP_SUFFIX}"))
    return found


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with suppress(FileNotFoundError):
            path.unlink()


def remove_stale_temps(targets: Iterable[Path]) -> list[Path]:
    """Delete :func:`stale_temps` of ``targets``; call only while no other writer of them runs."""
    removed = stale_temps(targets)
    for path in removed:
        _remove(path)
    return removed
