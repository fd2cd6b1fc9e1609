"""Logging set-up of the command-line tools (evaluate, report, benchmark, claims, plot_graph): their diagnostics go
to stderr through the "commformer" logger (their tables go to stdout)."""
from __future__ import annotations

import logging
import sys

log = logging.getLogger("commformer")


class _CurrentStderr(logging.StreamHandler):
    """A handler that writes to whatever sys.stderr is at the time of each record (so a redirected or captured
    stderr gets the lines, never a closed stream)."""

    @property  # type: ignore[override]
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value) -> None:
        pass


def script_logging() -> None:
    """Diagnostics of the command-line tools go to stderr as `LEVEL: message` (their tables go to stdout)."""
    if not any(isinstance(h, _CurrentStderr) for h in log.handlers):
        handler = _CurrentStderr()
        handler.setFormatter(logging.Formatter("%(levelname)s: %(message)s"))
        log.addHandler(handler)
    log.setLevel(logging.INFO)
