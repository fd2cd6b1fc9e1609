"""User-facing errors, shared by every entry point (train, evaluate, report, benchmark).

Bad input (an override, a config file, a checkpoint, a missing external dependency) exits with status 2 and one
line on stderr naming the key, the value and what is allowed; no traceback.
"""
from __future__ import annotations

import sys
from typing import Callable, NoReturn


class UserError(Exception):
    """Bad input, or a fault outside the program that the user can fix (a full disk, a missing extra). Its message is
    one line naming the key or file, the value and what is allowed; the entry points print it without a traceback.
    Everything else is a bug and keeps its traceback."""

    exit_code = 2


class UsageError(UserError, ValueError):
    """A bad command-line argument of evaluate / report / benchmark."""


class MissingExtraError(UserError, ImportError):
    """An optional dependency is not installed; the message names the extra to install."""


class TrainingStopped(UserError):
    """Training stopped on purpose (a non-finite loss, gradient or parameter; a signal); the message says what was
    kept."""

    def __init__(self, message: str, exit_code: int = 2) -> None:
        super().__init__(message)
        self.exit_code = exit_code


def fail(message: str, code: int = 2) -> NoReturn:
    """One error line on stderr, exit status `code` (2: bad input)."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(code)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input or an outside fault rather than a bug: the project's own types only (library
    errors that mean bad input are converted where they arise)."""
    from envs.core import EnvConfigError, EnvUnavailableError

    return (UserError, EnvUnavailableError, EnvConfigError)


def one_line(e: BaseException) -> str:
    """The first line of an exception's message (its type name when empty)."""
    text = str(e).strip().splitlines()
    return text[0] if text else type(e).__name__


def guarded(fn: Callable[[], object]) -> object:
    """Run fn, turning user errors into one line and their exit status (2 unless stated)."""
    try:
        return fn()
    except user_errors() as e:
        fail(one_line(e), getattr(e, "exit_code", 2))
