"""Phase lines: what a run is doing while there is no progress to show yet (connecting to Ray,
starting actors, resuming), and the few events a user must hear of mid-run (an actor that died).

The engine says them through the standard `logging` module (logger `latentmill.phase`) and does not
know who listens: the command line's live display (pipelines/observe/progress.py) shows them; with
no display attached (`--quiet`, tests, library use) warnings still reach stderr through logging's
last-resort handler and the rest stays silent.
"""

from __future__ import annotations

import logging

LOGGER_NAME = "latentmill.phase"
_log = logging.getLogger(LOGGER_NAME)


def phase(text: str) -> None:
    """A step of the run begins (the display shows it until the next one)."""
    _log.info(text)


def warn(text: str) -> None:
    """Something a user must hear of, said in one line (shown even with --quiet)."""
    _log.warning(text)
