"""argparse helpers shared by the command-line tools (evaluate, report, benchmark, claims, plot_graph): a parser
whose bad arguments end in one line (commformer.errors.UsageError; the usage stays with --help), and argument types
whose messages name the value and what is allowed."""
from __future__ import annotations

import argparse
import re
from typing import Callable

from commformer.errors import UsageError


def int_in(low: int, high: int | None = None, note: str = "") -> Callable[[str], int]:
    """argparse type: an integer in [low, high] (high None: no upper bound); `note` follows the allowed range."""
    allowed = f">= {low}" if high is None else f"in [{low}, {high}]"

    def parse(text: str) -> int:
        try:
            value = int(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r}; must be an integer {allowed}{note}") from None
        if value < low or (high is not None and value > high):
            raise argparse.ArgumentTypeError(f"{value}; must be {allowed}{note}")
        return value

    parse.__name__ = "integer"
    return parse


positive_int = int_in(1)
"""argparse type: an integer >= 1."""


def one_line_usage_error(message: str, prog: str = "") -> str:
    """argparse's error message as the project's one line: `--episodes=0; must be >= 1`, `--graph='foo'; allowed:
    auto, deterministic, ...`."""
    m = re.fullmatch(r"argument ([^:]+): (.*)", message.strip(), flags=re.S)
    if m is None:
        required = re.fullmatch(r"the following arguments are required: (.*)", message.strip())
        if required:
            return f"missing {required.group(1)} ({prog} --help shows the usage)".replace("  ", " ")
        return f"{message.strip()} ({prog} --help shows the usage)".replace("  ", " ")
    option, rest = m.group(1).split("/")[-1], " ".join(m.group(2).split())
    choice = re.fullmatch(r"invalid choice: (.*?) \(choose from (.*)\)", rest)
    if choice:
        allowed = ", ".join(c.strip().strip("'") for c in choice.group(2).split(","))
        return f"{option}={choice.group(1)}; allowed: {allowed}"
    invalid = re.fullmatch(r"invalid (\S+) value: (.*)", rest)
    if invalid:
        kind = {"int": "an integer", "float": "a number"}.get(invalid.group(1), f"a valid {invalid.group(1)}")
        return f"{option}={invalid.group(2)}; must be {kind}"
    if rest.startswith("expected ") or rest.startswith("not allowed") or rest.startswith("ignored "):
        return f"{option}: {rest}"
    return f"{option}={rest}"  # the project's argument types say "VALUE; what is allowed"


class OneLineParser(argparse.ArgumentParser):
    """An ArgumentParser whose errors raise UsageError with one line (the entry points print it as `error: ...`,
    exit status 2) instead of printing the usage; --help prints it as before."""

    def error(self, message: str):  # type: ignore[override]
        raise UsageError(one_line_usage_error(message, self.prog))
