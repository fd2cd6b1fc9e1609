"""Run folders as data: find them, read their config.yaml and metrics.csv, and read metrics off their rows."""
from __future__ import annotations

import csv
import logging
import math
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Mapping, Sequence

import yaml

from commformer.errors import UsageError

log = logging.getLogger("commformer")


@dataclass
class Run:
    """One run folder: its config (flattened to dotted keys) and its metrics.csv rows (strings, as written)."""

    path: Path
    env: str
    family: str
    algo: str
    seed: Any
    config: dict[str, Any]
    rows: list[dict[str, str]] = field(default_factory=list)
    modified: float = 0.0
    """when its metrics.csv was last written (seconds since the epoch): the latest of two runs of one seed wins"""

    def logged(self, metric: str) -> bool:
        return any(number(r.get(metric)) is not None for r in self.rows)


def number(text: Any) -> float | None:
    """A metrics.csv cell as a float; None for empty, unparsable or NaN cells."""
    if text is None or text == "":
        return None
    try:
        value = float(text)
    except (TypeError, ValueError):
        return None
    return None if math.isnan(value) else value


def flatten(d: Mapping[str, Any], prefix: str = "") -> dict[str, Any]:
    """{'algo': {'lr': 1}} -> {'algo.lr': 1}."""
    out: dict[str, Any] = {}
    for k, v in d.items():
        key = f"{prefix}{k}"
        if isinstance(v, Mapping):
            out.update(flatten(v, key + "."))
        else:
            out[key] = v
    return out


def find_run_dirs(roots: Sequence[str | Path]) -> list[Path]:
    """Every folder at or below the roots that holds both metrics.csv and config.yaml, sorted, without repeats."""
    found: set[Path] = set()
    for root in roots:
        root = Path(root)
        if root.exists() and not root.is_dir():
            raise UsageError(f"{str(root)!r} is a file, not a folder (give a run folder or a folder of runs)")
        if not root.is_dir():
            raise UsageError(f"run folder {str(root)!r} does not exist (give a run folder or a folder of runs)")
        for csv_path in [root / "metrics.csv", *root.rglob("metrics.csv")]:
            if csv_path.is_file() and (csv_path.parent / "config.yaml").is_file():
                found.add(csv_path.parent.resolve())
    return sorted(found)


def read_run(path: Path, problems: list[str] | None = None) -> Run | None:
    """Parse a run folder; None when its config.yaml is not a YAML mapping with env.name, env.family and algo.name,
    or when its metrics.csv is not a CSV text file as the trainer writes it (a header with iteration and env_steps,
    no NUL bytes, no row longer than the header). Why, naming the file, goes to `problems` when given, else to a
    warning."""

    def skip(text: str) -> None:
        if problems is None:
            log.warning("%s", text)
        else:
            problems.append(text)

    config_file, metrics_file = path / "config.yaml", path / "metrics.csv"
    try:
        config = yaml.safe_load(config_file.read_text()) or {}
    except (yaml.YAMLError, UnicodeDecodeError, OSError) as e:
        skip(f"{config_file}: not a readable YAML file ({str(e).splitlines()[0]}); skipped")
        return None
    if not isinstance(config, Mapping):
        skip(f"{config_file}: holds a YAML {type(config).__name__}, not a run's config (a mapping); skipped")
        return None
    env, algo = config.get("env") or {}, config.get("algo") or {}
    if not isinstance(env, Mapping) or not isinstance(algo, Mapping) or not all(
            (env.get("name"), env.get("family"), algo.get("name"))):
        skip(f"{config_file}: lacks env.name, env.family or algo.name; skipped")
        return None
    try:
        with metrics_file.open(newline="") as f:
            reader = csv.DictReader(f)
            rows = list(reader)
            header = list(reader.fieldnames or [])
    except (UnicodeDecodeError, csv.Error, OSError) as e:
        skip(f"{metrics_file}: not a readable CSV text file ({type(e).__name__}); skipped")
        return None
    why = metrics_problem(header, rows)
    if why is not None:
        skip(f"{metrics_file}: not a metrics file as the trainer writes it ({why}); skipped")
        return None
    return Run(path, str(env["name"]), str(env["family"]), str(algo["name"]), config.get("seed"),
               flatten(config), rows, metrics_file.stat().st_mtime)


def metrics_problem(header: Sequence[str], rows: Sequence[Mapping[Any, Any]]) -> str | None:
    """Why a metrics.csv's header and rows are not the trainer's (NUL bytes, no iteration / env_steps column, a row
    with more fields than the header), or None."""
    if any("\x00" in str(name) for name in header) or any(
            "\x00" in str(v) for r in rows for v in r.values() if isinstance(v, str)):
        return "NUL bytes"
    if rows and not {"iteration", "env_steps"} <= set(header):
        return "its header lacks the iteration and env_steps columns"
    long = next((i for i, r in enumerate(rows, start=2) if None in r), None)
    if long is not None:
        return f"line {long} has more fields than the header"
    return None


def final_row(rows: Sequence[Mapping[str, str]], metric: str) -> Mapping[str, str] | None:
    """The last row that has the metric (the run's final evaluation); None when no row has it."""
    for row in reversed(rows):
        if number(row.get(metric)) is not None:
            return row
    return None


def curve(rows: Sequence[Mapping[str, str]], metric: str) -> list[tuple[int, float]]:
    """[(env_steps, value)] of every row that has the metric (the run's evaluations), in increasing env steps; a
    step logged twice (e.g. around a resume) keeps its last value."""
    by_step: dict[int, float] = {}
    for row in rows:
        value, steps = number(row.get(metric)), number(row.get("env_steps"))
        if value is not None and steps is not None:
            by_step[int(steps)] = value
    return sorted(by_step.items())
