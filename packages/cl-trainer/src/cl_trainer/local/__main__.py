"""``python -m cl_trainer.local key=value ...``: exit 0 on success, 2 on a bad configuration."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from hydra.errors import HydraException
from omegaconf.errors import OmegaConfBaseException

from cl_trainer.local.config import LocalConfigError, compose
from cl_trainer.local.loop import run


def main(argv: Sequence[str] | None = None) -> int:
    try:
        cfg = compose(sys.argv[1:] if argv is None else argv)
    except (LocalConfigError, HydraException, OmegaConfBaseException) as exc:
        print(f"error: {str(exc).splitlines()[0]}", file=sys.stderr)
        return 2
    try:
        run(cfg)
    except LocalConfigError as exc:
        print(f"error: {exc}", file=sys.stderr)
        return 2
    return 0


if __name__ == "__main__":
    sys.exit(main())
