#!/usr/bin/env python
"""Compare two groups of runs from a study's marl-eval JSON (the `--json` / `--out-dir` output of scripts/report.py):
`python scripts/ratio_from_marl_eval.py docs/results/c1c3_pp_easy/marl_eval.json commformer full [--metric success]
[--threshold 0.95] [--episodes 100]` (`--help` for all options). With `--evaluations X.json Y.json` instead, each group
is the checkpoints of one `scripts/evaluate.py --out X.json` (the paired re-evaluation: the same --seed and --episodes
for both files), named by the file's stem.

For each run it takes the final evaluation (the run's `absolute_metrics`, else its last `step_k`) and prints, with
commformer.analysis.stats: each group's final values and IQM, IQM(X) / IQM(Y) with its 95% percentile bootstrap
interval, the runs of X and of Y resampled separately (stats.iqm_ratio_ci), and P(X > Y) with its interval
(stats.probability_of_improvement_ci). With --threshold it also says whether "IQM(X) >= threshold x IQM(Y)" holds
(the interval's lower end >= threshold), does not hold (its upper end < threshold) or is undecided. With --episodes
(the episodes of each final evaluation) it prints, beside the variance between runs, the mean binomial variance
p (1 - p) / episodes of one run's final rate. This reads only the JSON, so it works where the run folders are gone.
"""
import json
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

import numpy as np  # noqa: E402

from commformer.analysis import stats  # noqa: E402
from commformer.analysis.tables import BOOT_SEED, CONFIDENCE, N_BOOT, fmt, fmt_ci  # noqa: E402
from commformer.cli_args import OneLineParser, positive_int  # noqa: E402
from commformer.errors import UsageError, guarded  # noqa: E402


def final_value(run: Mapping[str, Any], metric: str) -> float | None:
    """The run's final value of `metric`: absolute_metrics, else the step_k with the largest k; None if absent."""
    absolute = run.get("absolute_metrics", {})
    if metric in absolute:
        return float(absolute[metric][0])
    steps = [k for k in run if k.startswith("step_") and k[5:].isdigit() and metric in run[k]]
    if not steps:
        return None
    return float(run[max(steps, key=lambda k: int(k[5:]))][metric][0])


def group_values(data: Mapping[str, Any], algo: str, metric: str, task: str | None) -> tuple[str, list[float]]:
    """(task, the final values of algo's runs in run order); UsageError naming what is missing."""
    found = {t: algos[algo] for family in data.values() for t, algos in family.items()
             if (task is None or t == task) and algo in algos}
    if not found:
        known = sorted({a for family in data.values() for t, algos in family.items() if task is None or t == task
                        for a in algos})
        raise UsageError(f"algo {algo!r} not in the JSON{'' if task is None else f' under task {task!r}'}; "
                         f"allowed: {', '.join(known) or 'none'}")
    if len(found) > 1:
        raise UsageError(f"algo {algo!r} is in several tasks ({', '.join(sorted(found))}); pick one with --task")
    (name, runs), = found.items()
    values = [final_value(r, metric) for r in runs.values()]
    if not values or any(v is None for v in values):
        raise UsageError(f"--metric={metric!r}; not logged by every run of {algo!r}")
    return name, values  # type: ignore[return-value]


def read_json(path: Path) -> Any:
    """The parsed JSON file; UsageError (one line) when it cannot be read or parsed."""
    try:
        return json.loads(path.read_text())
    except (OSError, ValueError) as e:
        raise UsageError(f"{str(path)!r} cannot be read as JSON: {getattr(e, 'strerror', None) or e}") from None


def evaluation_values(path: Path, metric: str) -> list[float]:
    """The per-checkpoint means of `metric` in one scripts/evaluate.py JSON (its "results" list), in file order;
    UsageError (one line) when the file is not one or a checkpoint lacks the metric."""
    data = read_json(path)
    results = data.get("results") if isinstance(data, dict) else None
    if not isinstance(results, list) or not results:
        raise UsageError(f"{str(path)!r} is not a scripts/evaluate.py --out JSON (a non-empty \"results\" list)")
    values = []
    for r in results:
        m = r.get("metrics", {}).get(metric)
        if m is None:
            raise UsageError(f"--metric={metric!r}: not in {str(path)!r} for {r.get('checkpoint')!r}; allowed: "
                             f"{', '.join(sorted(r.get('metrics', {}))) or 'none'}")
        values.append(float(m["mean"]))
    return values


def verdict(ci: Sequence[float], threshold: float) -> str:
    """holds (low end >= threshold), does not hold (high end < threshold), else undecided."""
    if ci[0] >= threshold:
        return "holds"
    if ci[1] < threshold:
        return "does not hold"
    return "undecided"


def compare_lines(x_name: str, x: Sequence[float], y_name: str, y: Sequence[float], n_boot: int = N_BOOT,
                  threshold: float | None = None, episodes: int | None = None) -> list[str]:
    """The printed lines for X against Y (see the module docstring)."""
    lines = []
    for name, v in ((x_name, x), (y_name, y)):
        line = (f"{name}: {len(v)} runs, final {' '.join(fmt(a) for a in v)}; IQM {fmt(stats.iqm(v))}, "
                f"variance between runs {fmt(float(np.var(v, ddof=1))) if len(v) > 1 else '-'}")
        if episodes is not None:
            a = np.asarray(v, dtype=np.float64)
            line += f", mean binomial variance p(1-p)/{episodes} {fmt(float(np.mean(a * (1 - a)) / episodes))}"
        lines.append(line)
    den = stats.iqm(y)
    ratio = stats.iqm(x) / den if den > 0 else float("inf")
    ratio_ci = stats.iqm_ratio_ci(x, y, n_boot, CONFIDENCE, BOOT_SEED)
    lines.append(f"IQM({x_name}) / IQM({y_name}) = {fmt(ratio)} {fmt_ci(ratio_ci)} ({CONFIDENCE:.0%}, {n_boot} "
                 f"resamples, seed {BOOT_SEED}, both groups resampled)")
    if threshold is not None:
        lines.append(f"IQM({x_name}) >= {fmt(threshold)} x IQM({y_name}): {verdict(ratio_ci, threshold)}")
    p_ci = stats.probability_of_improvement_ci(x, y, n_boot, CONFIDENCE, BOOT_SEED)
    lines.append(f"P({x_name} > {y_name}) = {fmt(stats.probability_of_improvement(x, y))} {fmt_ci(p_ci)}")
    return lines


def parser() -> OneLineParser:
    p = OneLineParser(prog="ratio_from_marl_eval.py",
                      description="IQM(X) / IQM(Y) and P(X > Y), each with a 95%% bootstrap interval (both groups "
                                  "resampled), from the runs' final values in a marl-eval JSON.")
    p.add_argument("json", metavar="MARL_EVAL_JSON", nargs="?",
                   help="a study's marl_eval.json (scripts/report.py --json)")
    p.add_argument("x", metavar="X", nargs="?", help="algo label of the first group (as in the JSON, e.g. commformer)")
    p.add_argument("y", metavar="Y", nargs="?", help="algo label of the second group")
    p.add_argument("--evaluations", nargs=2, metavar=("X.json", "Y.json"), default=None,
                   help="instead of the three above: two scripts/evaluate.py --out JSON files, one per group (each "
                        "checkpoint's mean of --metric; the group is named by the file's stem)")
    p.add_argument("--metric", default="success", help="the metric (default success)")
    p.add_argument("--task", default=None, help="the task, when the JSON holds several with both labels")
    p.add_argument("--threshold", type=float, default=None,
                   help="also decide IQM(X) >= THRESHOLD x IQM(Y) from the ratio's interval")
    p.add_argument("--episodes", type=positive_int, default=None,
                   help="episodes of each final evaluation: also print p(1-p)/episodes")
    p.add_argument("--n-boot", type=positive_int, default=N_BOOT, help=f"bootstrap resamples (default {N_BOOT})")
    return p


def main(argv: Sequence[str] | None = None) -> list[str]:
    args = guarded(lambda: parser().parse_args(argv))

    def run() -> list[str]:
        if args.evaluations is not None:
            if args.json is not None:
                raise UsageError(f"--evaluations and {args.json!r} given together; allowed: a marl-eval JSON with X "
                                 f"and Y, or --evaluations X.json Y.json")
            fx, fy = (Path(f) for f in args.evaluations)
            x, y = evaluation_values(fx, args.metric), evaluation_values(fy, args.metric)
            lines = [f"{fx} against {fy} ({args.metric}, each checkpoint's re-evaluation)"]
            lines += compare_lines(fx.stem, x, fy.stem, y, args.n_boot, args.threshold, args.episodes)
            sys.stdout.write("\n".join(lines) + "\n")
            return lines
        if args.json is None or args.y is None:
            raise UsageError("give MARL_EVAL_JSON X Y, or --evaluations X.json Y.json")
        path = Path(args.json)
        data = read_json(path)
        if not isinstance(data, dict) or not all(isinstance(f, dict) for f in data.values()):
            raise UsageError(f"{str(path)!r} is not marl-eval's layout (env family -> task -> algo -> run)")
        task_x, x = group_values(data, args.x, args.metric, args.task)
        task_y, y = group_values(data, args.y, args.metric, args.task)
        if task_x != task_y:
            raise UsageError(f"{args.x!r} is in task {task_x!r}, {args.y!r} in {task_y!r}; pick one with --task")
        lines = [f"{path} ({task_x}, {args.metric}, each run's final evaluation)"]
        lines += compare_lines(args.x, x, args.y, y, args.n_boot, args.threshold, args.episodes)
        sys.stdout.write("\n".join(lines) + "\n")
        return lines

    return guarded(run)  # type: ignore[return-value]


if __name__ == "__main__":
    main(sys.argv[1:])
