"""SIGINT / SIGTERM during training: routed to a callback that asks the loop to stop after the current iteration."""
from __future__ import annotations

import signal
import threading
from typing import Any, Callable


def catch_stop_signals(callback: Callable[[int], None]) -> dict[int, Any]:
    """Route SIGINT and SIGTERM to callback(signum) (main thread only; elsewhere nothing changes); returns the old
    handlers for restore_signals."""
    if threading.current_thread() is not threading.main_thread():
        return {}
    return {s: signal.signal(s, lambda signum, frame: callback(signum)) for s in (signal.SIGINT, signal.SIGTERM)}


def restore_signals(previous: dict[int, Any]) -> None:
    """Put back the handlers catch_stop_signals replaced."""
    for s, h in previous.items():
        signal.signal(s, h)
