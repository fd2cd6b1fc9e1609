"""User-facing errors, shared by every entry point (train, evaluate, report, benchmark).

Bad input (an override, a config file, a checkpoint, a missing external dependency) exits with status 2 and one
line on stderr naming the key, the value and what is allowed; no traceback.
"""
from __future__ import annotations

import argparse
import logging
import sys
from typing import Callable, NoReturn

log = logging.getLogger("commformer")


def fail(message: str) -> NoReturn:
    """One error line on stderr, exit status 2."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(2)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input rather than a bug."""
    from commformer.config import ConfigError
    from commformer.training.checkpoint import CheckpointError
    from envs.core import EnvUnavailableError

    return (ConfigError, CheckpointError, EnvUnavailableError, ValueError, TypeError, ImportError,
            FileNotFoundError)


def guarded(fn: Callable[[], object]) -> object:
    """Run fn, turning user errors into one line and exit status 2."""
    try:
        return fn()
    except user_errors() as e:
        text = str(e).strip().splitlines()
        fail(text[0] if text else type(e).__name__)


def positive_int(text: str) -> int:
    """argparse type: an integer >= 1."""
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}; must be >= 1")
    return value


def script_logging() -> None:
    """Diagnostics of the command-line tools go to stderr (their tables go to stdout)."""
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)
