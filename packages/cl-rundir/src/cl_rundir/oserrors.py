"""What a failed read or write tells its user: one line, for every package's command line.

A full disk, a read-only mount or a missing permission is the user's to fix, not a bug: each
command line turns an ``OSError`` that reaches it into ``Error: <this line>`` instead of a
traceback, and the trainer records it in run.json with the same words.
"""

from __future__ import annotations

import errno
import sys
from typing import Any

FIXES = {
    errno.ENOSPC: "free space, then rerun",
    errno.EFBIG: "a file size limit (ulimit -f) stopped the write: raise it, then rerun",
    errno.EDQUOT: "free space within your quota, then rerun",
    errno.EROFS: "write somewhere writable instead",
    errno.EACCES: "check its permissions, or write somewhere else",
    errno.EPERM: "check its permissions, or write somewhere else",
    errno.EEXIST: "it is in the way: remove it, or give another path",
    errno.ENOTDIR: "a file stands where a directory is needed: give another path",
    errno.EISDIR: "a directory stands where a file is needed: give another path",
    errno.ENOENT: "check the path",
}
"""The fix each common cause names (others get none: their reason is all we know)."""


FULL = (errno.ENOSPC, errno.EDQUOT, errno.EFBIG)
"""The errors a write gets when there is no room for it (the disk, a quota, a size limit)."""


def is_disk_full(exc: BaseException) -> bool:
    return isinstance(exc, OSError) and exc.errno in FULL


def describe(exc: OSError, doing: str | None = None) -> str:
    """``no space left on device (writing /runs/x/run.json); free space, then rerun``.

    ``doing`` says what failed when the error itself names no file (a ``write`` to an open
    file carries no path)."""
    reason = exc.strerror or str(exc) or type(exc).__name__
    reason = reason[0].lower() + reason[1:] if reason else reason
    where = [doing] if doing else []
    if exc.filename is not None:
        where.append(str(exc.filename))
    if exc.filename2 is not None:
        where.append(f"-> {exc.filename2}")
    line = reason + (f" ({' '.join(where)})" if where else "")
    fix = FIXES.get(exc.errno) if exc.errno is not None else None
    return f"{line}; {fix}" if fix else line


class OneLineOSErrors:
    """Mix into a ``click.Group``: an ``OSError`` from any command ends it with ``Error: <line>``
    on stderr and exit status 1, as a ``click.ClickException`` would (without making this
    package depend on click). A broken pipe (``| head``) stays click's to handle."""

    def invoke(self, ctx: Any) -> Any:
        try:
            return super().invoke(ctx)  # type: ignore[misc]
        except OSError as exc:
            if exc.errno == errno.EPIPE:
                raise
            print(f"Error: {describe(exc)}", file=sys.stderr)
            raise SystemExit(1) from None
