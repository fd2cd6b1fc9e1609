"""Run reports (`scripts/report.py`): collect run folders, take each run's final evaluation and summarise every
(env, algo) group by the IQM over runs with a 95% stratified bootstrap interval (>= 5 seeds, 10 preferred; fewer are
flagged).

Tables and files are the product of this command and go to stdout / --out; diagnostics go through logging.
"""
from __future__ import annotations

import argparse
import logging
import sys
from collections import Counter
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from commformer.analysis import stats
from commformer.analysis.tables import BOOT_SEED, CONFIDENCE, N_BOOT, fmt, fmt_ci, write_text
from commformer.analysis.runs import Run, final_value, find_run_dirs, read_run
from commformer.errors import UsageError, guarded, positive_int, script_logging
from envs.registry import family_note

log = logging.getLogger("commformer")

# groups with fewer runs than this are flagged (REFERENCE.md 7: >= 5 seeds, 10 preferred)
MIN_SEEDS = 5
# the default metric is the first of these that a group's runs log
METRIC_PREFERENCE = ("eval/success", "eval/won", "eval/return")
# config keys that may differ between the seeds of one group without making them different experiments
RUN_ONLY_KEYS = ("seed", "run_dir", "resume", "device", "torch_threads", "eval_every", "checkpoint_every", "logger")


def pick_metric(runs: Sequence[Run], requested: str | None) -> str | None:
    """The requested metric, else the first of METRIC_PREFERENCE that any of the runs logs (None if none does)."""
    if requested is not None:
        return requested
    for metric in METRIC_PREFERENCE:
        if any(r.logged(metric) for r in runs):
            return metric
    return None


def config_differences(configs: Sequence[Mapping[str, Any]], ignore: Sequence[str] = RUN_ONLY_KEYS) -> list[str]:
    """Flattened keys whose values differ between the configs, except keys in (or below) `ignore`, sorted."""
    def ignored(key: str) -> bool:
        return any(key == k or key.startswith(k + ".") for k in ignore)

    keys = sorted({k for c in configs for k in c if not ignored(k)})
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


def group_runs(runs: Sequence[Run]) -> dict[tuple[str, str], list[Run]]:
    """(env name, algo name) -> its runs, in sorted key order."""
    groups: dict[tuple[str, str], list[Run]] = {}
    for run in runs:
        groups.setdefault((run.env, run.algo), []).append(run)
    return dict(sorted(groups.items()))


def _steps_text(steps: Sequence[int]) -> str:
    low, high = min(steps), max(steps)
    return str(low) if low == high else f"{low}-{high}"


def summarise_group(key: tuple[str, str], runs: Sequence[Run], requested: str | None,
                    n_boot: int = N_BOOT, skipped: list[str] | None = None) -> dict[str, Any] | None:
    """The report row of one (env, algo) group; None when none of its runs logs the metric (the reason is appended
    to `skipped`, else logged as a warning)."""
    note = skipped.append if skipped is not None else (lambda text: log.warning("%s", text))
    metric = pick_metric(runs, requested)
    if metric is None:
        note(f"{key[0]} / {key[1]}: no run logs any of {', '.join(METRIC_PREFERENCE)}; skipped")
        return None
    finals = [(r, final_value(r.rows, metric)) for r in runs]
    used = [(r, f) for r, f in finals if f is not None]
    if not used:
        note(f"{key[0]} / {key[1]}: no run logs {metric}; skipped")
        return None
    values = np.array([f[0] for _, f in used])
    notes = []
    if len(used) < MIN_SEEDS:
        notes.append(f"fewer than {MIN_SEEDS} seeds")
    if len(used) < len(runs):
        notes.append(f"{len(runs) - len(used)} run(s) without {metric} left out")
    repeated = sorted(str(s) for s, c in Counter(r.seed for r, _ in used).items() if c > 1)
    if repeated:
        notes.append(f"seed(s) {', '.join(repeated)} repeated")
    differ = config_differences([r.config for r, _ in used])
    if differ:
        shown = ", ".join(differ[:3]) + (", ..." if len(differ) > 3 else "")
        notes.append(f"configs differ: {shown}")
    note = family_note(used[0][0].family)
    if note:
        notes.append(note)
    return {
        "env": key[0], "algo": key[1], "family": used[0][0].family, "metric": metric, "seeds": len(used),
        "iqm": stats.iqm(values), "iqm_ci": list(stats.bootstrap_ci(values, stats.iqm, n_boot, CONFIDENCE, BOOT_SEED)),
        "mean": stats.mean(values), "env_steps": _steps_text([f[1] for _, f in used]),
        "values": values.tolist(), "runs": [str(r.path) for r, _ in used], "notes": notes,
    }


def aggregate_rows(rows: Sequence[Mapping[str, Any]], n_boot: int = N_BOOT) -> list[dict[str, Any]]:
    """Per algo present in >= 2 envs: IQM over all its runs, the bootstrap stratified by env (runs are resampled
    within each env, so every env keeps its weight). Scores are not normalised: mixing return scales is the
    reader's risk, and the row says which metrics it pools."""
    by_algo: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_algo.setdefault(row["algo"], []).append(row)
    out = []
    for algo, group in sorted(by_algo.items()):
        if len(group) < 2:
            continue
        strata = [np.asarray(r["values"]) for r in group]
        flat = np.concatenate(strata)
        metrics = sorted({r["metric"] for r in group})
        notes = ["bootstrap stratified by env"]
        if "eval/return" in metrics:
            notes.append("returns are not normalised across envs")
        if any(r["seeds"] < MIN_SEEDS for r in group):
            notes.append(f"fewer than {MIN_SEEDS} seeds in some envs")
        families = sorted({n for r in group if (n := family_note(r["family"]))})
        notes += families
        out.append({
            "env": f"all ({len(group)} envs)", "algo": algo, "family": "", "metric": ", ".join(metrics),
            "seeds": int(flat.size), "iqm": stats.iqm(flat),
            "iqm_ci": list(stats.bootstrap_ci(strata, stats.iqm, n_boot, CONFIDENCE, BOOT_SEED)),
            "mean": stats.mean(flat), "env_steps": "", "values": flat.tolist(), "runs": [], "notes": notes,
        })
    return out


def report_markdown(rows: Sequence[Mapping[str, Any]], n_boot: int = N_BOOT) -> str:
    """The report table plus a line stating the protocol."""
    lines = [
        "| env | algo | metric | seeds | IQM | 95% CI | mean | env steps | notes |",
        "|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['env']} | {r['algo']} | {r['metric']} | {r['seeds']} | {fmt(r['iqm'])} | "
                     f"{fmt_ci(r['iqm_ci'])} | {fmt(r['mean'])} | {r['env_steps']} | {'; '.join(r['notes'])} |")
    lines += ["", f"Each run's final evaluation; IQM over runs (drop floor(n/4) at each end) with a "
                  f"{CONFIDENCE:.0%} percentile bootstrap interval over runs ({n_boot} resamples, seed {BOOT_SEED}). "
                  f"The field's protocol asks for >= {MIN_SEEDS} seeds, 10 preferred."]
    return "\n".join(lines) + "\n"



def report_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Collect run folders (metrics.csv + config.yaml), take each run's final evaluation and print a "
                    "markdown table per (env, algo): seeds, IQM with a 95% bootstrap interval over runs, mean, "
                    "env steps.")
    p.add_argument("roots", nargs="+", metavar="RUN_DIR_OR_PARENT", help="run folders, or folders searched for them")
    p.add_argument("--metric", default=None,
                   help="metrics.csv column to report (default per group: eval/success if logged, else eval/won, "
                        "else eval/return)")
    p.add_argument("--aggregate", action="store_true",
                   help="add one row per algo over all its envs (bootstrap stratified by env)")
    p.add_argument("--n-boot", type=positive_int, default=N_BOOT, help=f"bootstrap resamples (default {N_BOOT})")
    p.add_argument("--out", default=None, metavar="report.md", help="also write the table to this file")
    p.add_argument("--plot", default=None, metavar="curves.png", help="also plot learning curves (needs matplotlib)")
    return p


def _report(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.plot is not None:
        from commformer.analysis.plots import require_matplotlib

        require_matplotlib()  # before any work
    dirs = find_run_dirs(args.roots)
    if not dirs:
        raise UsageError(f"no run folders (a folder with metrics.csv and config.yaml) under "
                         f"{', '.join(map(str, args.roots))}")
    runs = [r for r in (read_run(d) for d in dirs) if r is not None]
    if not runs:
        raise UsageError(f"none of the {len(dirs)} run folder(s) under {', '.join(map(str, args.roots))} could be "
                         "read (each is named in a warning above)")
    groups = group_runs(runs)
    skipped: list[str] = []
    rows = [row for key, members in groups.items()
            if (row := summarise_group(key, members, args.metric, args.n_boot, skipped)) is not None]
    if not rows:  # the error line says it all
        if args.metric is not None:
            raise UsageError(f"--metric={args.metric!r}: no run among {len(runs)} logs it")
        raise UsageError(f"no run among {len(runs)} logged an evaluation ({' / '.join(METRIC_PREFERENCE)}); "
                         "runs evaluate every eval_every iterations and at the end")
    for text in skipped:
        log.warning("%s", text)
    table = rows + (aggregate_rows(rows, args.n_boot) if args.aggregate else [])
    text = report_markdown(table, args.n_boot)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.out is not None:
        write_text(Path(args.out), text)
        log.info("wrote %s", args.out)
    if args.plot is not None:
        from commformer.analysis.plots import plot_curves

        log.info("wrote %s", plot_curves(groups, rows, args.plot, args.n_boot))
    return table


def report_main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`scripts/report.py RUN_DIR_OR_PARENT [...] [options]`; returns the table rows."""
    args = report_parser().parse_args(argv)
    script_logging()
    return guarded(lambda: _report(args))  # type: ignore[return-value]
