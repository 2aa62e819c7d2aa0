"""The project's log lines, "[llm-tuning] message" on stdout, through Python's `logging`.

`log(msg)` says one line (INFO). It is printed on the main process only (under torchrun or `accelerate launch`
the other processes would repeat every line), and only while the level allows: `quiet()` (train's --quiet)
raises it to WARNING for as long as its block runs, so one run's setting never reaches the next.
"""

from __future__ import annotations

import contextlib
import logging
import os

logger = logging.getLogger(__name__)


class _MainProcessPrint(logging.Handler):
    """Prints each record as print() does (to the sys.stdout of the moment, which a caller may have redirected
    or captured), flushed at once, on the main process only."""

    def filter(self, record) -> bool:
        # RANK as torchrun / `accelerate launch` export it (train.processes reads it too; this module sits below train)
        return int(os.environ.get("RANK") or 0) == 0 and super().filter(record)

    def emit(self, record):
        try:
            print(self.format(record), flush=True)
        except Exception:  # noqa: BLE001 - logging's own way: report the failure, never raise into the caller
            self.handleError(record)


_handler = _MainProcessPrint()
_handler.setFormatter(logging.Formatter("[llm-tuning] %(message)s"))
logger.addHandler(_handler)
logger.setLevel(logging.INFO)
logger.propagate = False  # the lines are the command's output: not passed on to the application's own handlers


def log(msg: str) -> None:
    logger.info(msg)


def warn(msg: str) -> None:
    """One line "[llm-tuning] warning: msg", shown under quiet() too."""
    logger.warning(f"warning: {msg}")


@contextlib.contextmanager
def quiet(on: bool = True):
    """Warnings and errors only while the block runs (when `on`); the level before it comes back after."""
    before = logger.level
    if on:
        logger.setLevel(logging.WARNING)
    try:
        yield
    finally:
        logger.setLevel(before)


def is_quiet() -> bool:
    """True while the log lines are off: what else says nothing then (train's progress bar)."""
    return not logger.isEnabledFor(logging.INFO)
