"""Run reports (`scripts/report.py`): collect run folders (a study's sweep folder, or any), group them by every
config key that differs, take each run's final evaluation and summarise every group by the IQM over runs with a 95%
stratified bootstrap interval, its messages per step beside it; the probability of improvement between groups of one
env; per-run success rates with Wilson intervals; sample-efficiency curves, performance profiles and performance vs
messages figures; markdown, LaTeX and marl-eval JSON files. The protocol: commformer.analysis.protocol.

Tables and files are the product of this command and go to stdout / the named files; diagnostics go through logging.
"""
from __future__ import annotations

import argparse
import json
import logging
import sys
from pathlib import Path
from typing import Any, Sequence

from commformer.analysis.export import (comparisons_markdown, eval_columns, latex_tables, marl_eval_entry,
                                        per_run_markdown, results_markdown)
# MIN_SEEDS, RUN_ONLY_KEYS, config_differences and pick_metric stay importable from here, as before protocol.py
from commformer.analysis.protocol import (GRID_POINTS, MESSAGES, METRIC_PREFERENCE, MIN_SEEDS,  # noqa: F401
                                          RUN_ONLY_KEYS, Group, aggregate_rows, comparisons, config_differences,
                                          group_curves, group_runs, pick_metric, summarise_group)
from commformer.analysis.runs import find_run_dirs, read_run
from commformer.analysis.tables import N_BOOT, write_text
from commformer.cli_args import OneLineParser, positive_int
from commformer.errors import UsageError, guarded
from commformer.log_setup import script_logging

log = logging.getLogger("commformer")

# file names under --out-dir
OUT_DIR_FILES = {"out": "report.md", "latex": "report.tex", "json": "marl_eval.json", "plot": "curves.png",
                 "profiles": "profiles.png", "messages_plot": "messages.png"}
FIGURE_OPTIONS = ("plot", "profiles", "messages_plot")


def report_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        description="Collect run folders (metrics.csv + config.yaml), group them by every config key that differs, "
                    "and print markdown tables: per group the IQM of the runs' final evaluations with a 95% "
                    "bootstrap interval and the messages per step; the probability of improvement between the "
                    "groups of each env; optionally every run with a Wilson interval for its success rate.")
    p.add_argument("roots", nargs="+", metavar="RUN_DIR_OR_PARENT",
                   help="run folders, or folders searched for them (a study's sweep folder)")
    p.add_argument("--metric", default=None,
                   help="metrics.csv column to report (default per group: eval/success if logged, else eval/won, "
                        "else eval/return)")
    p.add_argument("--merge", action="append", default=[], metavar="KEY",
                   help="config key (or prefix) whose values do not split groups (repeatable), e.g. a setting "
                        "changed between reruns; groups note it")
    p.add_argument("--compare", nargs=2, action="append", metavar=("X", "Y"), default=None,
                   help="only these probability-of-improvement pairs P(X > Y) (group labels or algo presets; "
                        "repeatable); default: every pair of groups of each env")
    p.add_argument("--per-run", action="store_true",
                   help="add a table of every run: final value, success rate with a Wilson interval, msgs/step")
    p.add_argument("--aggregate", action="store_true",
                   help="add one row per group label over all its envs (bootstrap stratified by env)")
    p.add_argument("--n-boot", type=positive_int, default=N_BOOT, help=f"bootstrap resamples (default {N_BOOT})")
    p.add_argument("--grid-points", type=positive_int, default=GRID_POINTS,
                   help="env-step grid points of the curves when a group's runs evaluated at different steps "
                        f"(default {GRID_POINTS})")
    p.add_argument("--out", default=None, metavar="report.md", help="also write the markdown to this file")
    p.add_argument("--latex", default=None, metavar="FILE.tex", help="also write the tables as LaTeX (booktabs)")
    p.add_argument("--json", default=None, metavar="FILE.json",
                   help="also write the runs' evaluations in marl-eval's JSON layout")
    p.add_argument("--plot", default=None, metavar="curves.png",
                   help="sample-efficiency curves: IQM vs env steps with 95%% bands (needs matplotlib)")
    p.add_argument("--profiles", default=None, metavar="profiles.png",
                   help="performance profiles: fraction of runs with final value > tau (needs matplotlib)")
    p.add_argument("--messages-plot", default=None, metavar="messages.png",
                   help="IQM of the metric vs IQM messages per step, per group (needs matplotlib)")
    p.add_argument("--out-dir", default=None, metavar="DIR",
                   help="write every file above into DIR: " + ", ".join(OUT_DIR_FILES.values()))
    return p


# the metrics.csv columns --metric may name: the logged metrics (not iteration, env_steps or perf/ timings)
METRIC_PREFIXES = ("eval/", "eval_sampled/", "train/", "comm/", "loss/")


def check_metric(metric: str | None) -> None:
    """--metric must name a metric column (METRIC_PREFIXES); UsageError naming them otherwise."""
    if metric is not None and not (metric.startswith(METRIC_PREFIXES) and metric not in METRIC_PREFIXES):
        raise UsageError(f"--metric={metric!r}: not a metric column; allowed: a metrics.csv column starting with "
                         f"{', '.join(METRIC_PREFIXES)} (e.g. eval/success, eval/return; default: "
                         f"{', else '.join(METRIC_PREFERENCE)})")


def check_merge(keys: Sequence[str], runs: Sequence) -> None:
    """Each --merge key must be a config key of the runs (or a prefix of some: algo, logger); UsageError naming the
    keys that split these runs' groups otherwise."""
    from commformer.hydra_glue import closest_hint

    known = {k for r in runs for k in r.config}
    prefixes = {k.rsplit(".", i)[0] for k in known for i in range(1, k.count(".") + 1)}
    for key in keys:
        if key not in known and key not in prefixes:
            differ = config_differences([r.config for r in runs])
            splitting = ", ".join(differ) if differ else "none (every key but the run-only ones agrees)"
            raise UsageError(f"--merge={key!r}: no run's config has this key{closest_hint(key, sorted(known | prefixes))}; "
                             f"keys that split these runs' groups: {splitting}")


def check_figure_format(option: str, path: str) -> None:
    """A figure file's ending must be a format matplotlib writes (UsageError naming them)."""
    from matplotlib.backend_bases import FigureCanvasBase

    formats = sorted(FigureCanvasBase.get_supported_filetypes())
    if Path(path).suffix.lower().lstrip(".") not in formats:
        raise UsageError(f"{option}={path!r}: the file's ending picks the format; allowed: "
                         f"{', '.join('.' + f for f in formats)}")


def check_output_path(option: str, path: str) -> None:
    """An output file's path must be writable as a file: not a folder, no file in place of a folder above it
    (UsageError naming the option)."""
    target = Path(path)
    if target.is_dir():
        raise UsageError(f"{option}={path!r} is a folder; give a file name")
    above = target.parent
    while not above.exists() and above != above.parent:
        above = above.parent
    if not above.is_dir():
        raise UsageError(f"{option}={path!r} cannot be written: {str(above)!r} is a file, not a folder")


def _fill_out_dir(args: argparse.Namespace) -> None:
    if args.out_dir is None:
        return
    if Path(args.out_dir).exists() and not Path(args.out_dir).is_dir():
        raise UsageError(f"--out-dir={args.out_dir!r} is a file; give a folder (it is made when missing)")
    for option, name in OUT_DIR_FILES.items():
        if getattr(args, option) is None:
            setattr(args, option, str(Path(args.out_dir) / name))


def read_runs(roots: Sequence[str]) -> list:
    """The readable run folders under `roots` (UsageError when there are none)."""
    dirs = find_run_dirs(roots)
    if not dirs:
        raise UsageError(f"no run folders (a folder with metrics.csv and config.yaml) under {', '.join(roots)}")
    problems: list[str] = []
    runs = [r for r in (read_run(d, problems) for d in dirs) if r is not None]
    if not runs:  # the first folder's reason in the error line, the others' in warnings above it
        for text in problems[1:]:
            log.warning("%s", text)
        others = f" (the other {len(problems) - 1} are named above)" if len(problems) > 1 else ""
        raise UsageError(f"none of the {len(dirs)} run folder(s) under {', '.join(roots)} could be read: "
                         f"{problems[0].removesuffix('; skipped')}{others}")
    for text in problems:
        log.warning("%s", text)
    return runs


def _used_runs(group: Group, row: dict[str, Any]) -> list:
    chosen = set(row["runs"])
    return [r for r in group.runs if str(r.path) in chosen]


def marl_eval_json(pairs: Sequence[tuple[Group, dict[str, Any]]], points: int) -> dict[str, Any]:
    """{env family: {env: {group label: marl_eval_entry}}} over the reported groups."""
    out: dict[str, Any] = {}
    for group, row in pairs:
        runs = _used_runs(group, row)
        columns = [row["metric"]] + [c for c in eval_columns(runs) if c != row["metric"]]
        found = group_curves(runs, columns, points)
        if found is None:
            log.warning("%s / %s: the runs' evaluations share no env-step range; left out of the JSON", row["env"],
                        row["label"])
            continue
        out.setdefault(group.family, {}).setdefault(group.env, {})[row["label"]] = marl_eval_entry(runs, *found)
    return out


def _report(args: argparse.Namespace) -> list[dict[str, Any]]:
    check_metric(args.metric)
    _fill_out_dir(args)
    for option in OUT_DIR_FILES:  # before any work
        if getattr(args, option) is not None:
            check_output_path("--" + option.replace("_", "-"), getattr(args, option))
    for option in FIGURE_OPTIONS:
        if getattr(args, option) is not None:
            from commformer.analysis.plots import require_matplotlib

            require_matplotlib("--" + option.replace("_", "-"))  # before any work
            check_figure_format("--" + option.replace("_", "-"), getattr(args, option))
    runs = read_runs(args.roots)
    check_merge(args.merge, runs)
    groups = group_runs(runs, args.merge)
    skipped: list[str] = []
    pairs = [(g, row) for g in groups if (row := summarise_group(g, args.metric, args.n_boot, skipped)) is not None]
    if not pairs:  # the error line says it all
        if args.metric is not None:
            raise UsageError(f"--metric={args.metric!r}: no run among {len(runs)} logs it")
        raise UsageError(f"no run among {len(runs)} logged an evaluation ({' / '.join(METRIC_PREFERENCE)}); "
                         "runs evaluate every eval_every iterations and at the end")
    for text in skipped:
        log.warning("%s", text)
    rows = [row for _, row in pairs]
    table = rows + (aggregate_rows(rows, args.n_boot) if args.aggregate else [])
    comps = comparisons(rows, args.compare, args.n_boot)
    parts = [results_markdown(table, args.n_boot), comparisons_markdown(comps, args.n_boot)]
    if args.per_run:
        parts.append(per_run_markdown(rows))
    text = "\n".join(p for p in parts if p)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.out is not None:
        write_text(Path(args.out), text)
        log.info("wrote %s", args.out)
    if args.latex is not None:
        write_text(Path(args.latex), latex_tables(table, comps, args.n_boot))
        log.info("wrote %s", args.latex)
    if args.json is not None:
        write_text(Path(args.json), json.dumps(marl_eval_json(pairs, args.grid_points), indent=1) + "\n")
        log.info("wrote %s", args.json)
    _figures(args, pairs, rows)
    for row in table:
        row["comparisons"] = [c for c in comps if c["env"] == row["env"] and row["label"] in (c["x"], c["y"])]
    return table


def _figures(args: argparse.Namespace, pairs: Sequence[tuple[Group, dict[str, Any]]], rows: list) -> None:
    if args.plot is not None:
        from commformer.analysis.plots import plot_curves

        curves = []
        for group, row in pairs:
            found = group_curves(_used_runs(group, row), [row["metric"], MESSAGES], args.grid_points)
            if found is None:
                log.warning("%s / %s: the runs' evaluations share no env-step range; no curve", row["env"],
                            row["label"])
            else:
                curves.append((row, *found))
        if curves:
            log.info("wrote %s", plot_curves(curves, args.plot, args.n_boot))
    if args.profiles is not None:
        from commformer.analysis.plots import plot_profiles

        log.info("wrote %s", plot_profiles(rows, args.profiles))
    if args.messages_plot is not None:
        from commformer.analysis.plots import plot_messages

        log.info("wrote %s", plot_messages(rows, args.messages_plot))


def report_main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`scripts/report.py RUN_DIR_OR_PARENT [...] [options]`; returns the table rows (each with its comparisons)."""
    args = guarded(lambda: report_parser().parse_args(argv))
    script_logging()
    return guarded(lambda: _report(args))  # type: ignore[return-value]
