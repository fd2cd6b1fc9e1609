"""The report's products: markdown tables (results, probability of improvement, per run), the same tables in LaTeX,
and the raw data as marl-eval's JSON (its README, "Data Structure for Raw Experiment data": environment -> task ->
algorithm -> run -> step_k {step_count, metric: [values]} plus absolute_metrics per run)."""
from __future__ import annotations

from typing import Any, Mapping, Sequence

import numpy as np

from commformer.analysis import stats
from commformer.analysis.protocol import MESSAGES, MIN_SEEDS, RATE_METRICS, RUN_ONLY_KEYS, THROUGHPUT
from commformer.analysis.runs import Run, final_row, number
from commformer.analysis.tables import BOOT_SEED, CONFIDENCE, fmt, fmt_ci, md_table


def _messages_cell(value: float | None, ci: Sequence[float] | None) -> str:
    return "" if value is None else f"{fmt(value)} {fmt_ci(ci)}" if ci is not None else fmt(value)


def _speed_cell(value: float | None) -> str:
    """Env steps per second as an integer with thousands separators ('-' when not logged)."""
    return "-" if value is None else f"{value:,.0f}"


def run_interval(metric: str, p: Mapping[str, Any]) -> tuple[int, int, tuple[float, float]] | None:
    """(successes, episodes, Wilson 95% interval) of one run's final evaluation when the metric is a rate of 0/1
    episode outcomes and the run logged its episode count; else None."""
    if metric not in RATE_METRICS or p.get("episodes") is None or p["episodes"] < 1:
        return None
    n = int(p["episodes"])
    k = int(round(p["value"] * n))
    return k, n, stats.wilson_interval(k, n, CONFIDENCE)


# ---- markdown -----------------------------------------------------------------------------------------------------

def results_markdown(rows: Sequence[Mapping[str, Any]], n_boot: int) -> str:
    """The results table (one row per group; msgs/step beside the numbers) and a paragraph stating the protocol."""
    lines = [
        "| env | algo | metric | seeds | IQM | 95% CI | mean | env steps | msgs/step [95% CI] | env steps/s | notes |",
        "|---|---|---|---|---|---|---|---|---|---|---|",
    ]
    for r in rows:
        lines.append(f"| {r['env']} | {r.get('label', r['algo'])} | {r['metric']} | {r['seeds']} | {fmt(r['iqm'])} | "
                     f"{fmt_ci(r['iqm_ci'])} | {fmt(r['mean'])} | {r['env_steps']} | "
                     f"{_messages_cell(r.get('messages'), r.get('messages_ci'))} | {_speed_cell(r.get('throughput'))} | "
                     f"{'; '.join(r['notes'])} |")
    lines += ["", f"Each run's final evaluation; IQM over runs (drop floor(n/4) at each end) with a "
                  f"{CONFIDENCE:.0%} percentile bootstrap interval over runs ({n_boot} resamples, seed {BOOT_SEED}). "
                  f"The field's protocol asks for >= {MIN_SEEDS} seeds, 10 preferred. A group is the runs whose "
                  f"configs agree on every key but {', '.join(RUN_ONLY_KEYS)}; keys that set groups of one env and "
                  f"algo apart follow the algo's name; each seed counts once (its latest run). msgs/step: "
                  f"{MESSAGES} at the same evaluation, IQM over runs. env steps/s: the median over each run's "
                  f"iterations of {THROUGHPUT} (wall clock, end to end), IQM over runs; with one torch thread and "
                  f"one run per free core it is env steps per CPU-second, under other load it is not."]
    return "\n".join(lines) + "\n"


def comparisons_markdown(comps: Sequence[Mapping[str, Any]], n_boot: int) -> str:
    """The probability-of-improvement table and its protocol line ('' when there is nothing to compare)."""
    if not comps:
        return ""
    body = [[c["env"], c["x"], c["y"], c["metric"], fmt(c["p"]), fmt_ci(c["ci"]),
             fmt(c["ratio"]) if "ratio" in c else "-", fmt_ci(c["ratio_ci"]) if "ratio_ci" in c else "-",
             f"{c['seeds_x']} / {c['seeds_y']}",
             f"{_messages_cell(c['messages_x'], None) or '-'} / {_messages_cell(c['messages_y'], None) or '-'}"]
            for c in comps]
    table = md_table(["env", "X", "Y", "metric", "P(X > Y)", "95% CI", "IQM X / IQM Y", "95% CI", "seeds X / Y",
                      "msgs/step X / Y"], body)
    return (f"### Probability of improvement\n\n{table}\n\nP(X > Y): the fraction of (X run, Y run) pairs whose "
            f"final value is higher for X, a tie counting 1/2; IQM X / IQM Y: the ratio of the groups' IQMs. Both "
            f"with {CONFIDENCE:.0%} percentile bootstrap intervals, the runs of X and of Y resampled separately "
            f"({n_boot} resamples, seed {BOOT_SEED}). With complete separation P's interval collapses to [1, 1] "
            f"whatever the number of runs: read it with the seed counts.\n")


def per_run_markdown(rows: Sequence[Mapping[str, Any]]) -> str:
    """One line per run: its final value, for success / won rates the Wilson interval over its evaluation's
    episodes, and its messages per step."""
    body = []
    for r in rows:
        for p in r.get("per_run", []):
            interval = run_interval(r["metric"], p)
            body.append([r["env"], r["label"], str(p["seed"]), str(p["env_steps"]), r["metric"], fmt(p["value"]),
                         "" if interval is None else f"{interval[0]}/{interval[1]}",
                         "" if interval is None else fmt_ci(interval[2]),
                         "" if p["messages"] is None else fmt(p["messages"]), _speed_cell(p.get("throughput")),
                         p["run"]])
    if not body:
        return ""
    table = md_table(["env", "algo", "seed", "env steps", "metric", "final", "successes", "95% CI (Wilson)",
                      "msgs/step", "env steps/s", "run"], body)
    return (f"### Per run\n\n{table}\n\nSuccess / won rates: Wilson score interval ({CONFIDENCE:.0%}) over the "
            "episodes of the run's final evaluation.\n")


# ---- LaTeX --------------------------------------------------------------------------------------------------------

_LATEX = {"\\": r"\textbackslash{}", "&": r"\&", "%": r"\%", "$": r"\$", "#": r"\#", "_": r"\_", "{": r"\{",
          "}": r"\}", "~": r"\textasciitilde{}", "^": r"\textasciicircum{}"}


def latex_escape(text: Any) -> str:
    return "".join(_LATEX.get(ch, ch) for ch in str(text))


def _tabular(header: Sequence[str], body: Sequence[Sequence[str]], align: str) -> list[str]:
    lines = [f"\\begin{{tabular}}{{{align}}}", "\\toprule", " & ".join(header) + r" \\", "\\midrule"]
    lines += [" & ".join(latex_escape(c) for c in row) + r" \\" for row in body]
    return lines + ["\\bottomrule", "\\end{tabular}"]


def latex_tables(rows: Sequence[Mapping[str, Any]], comps: Sequence[Mapping[str, Any]], n_boot: int) -> str:
    """The results table and the probability-of-improvement table as booktabs tabulars (\\usepackage{booktabs}),
    numbers as in the markdown tables."""
    body = [[r["env"], r.get("label", r["algo"]), r["metric"], str(r["seeds"]), fmt(r["iqm"]), fmt_ci(r["iqm_ci"]),
             _messages_cell(r.get("messages"), None) or "-"] for r in rows]
    lines = [f"% scripts/report.py: IQM over runs, {CONFIDENCE:.0%} percentile bootstrap interval ({n_boot} "
             f"resamples, seed {BOOT_SEED}); msgs/step = {latex_escape(MESSAGES)} (IQM over runs)"]
    lines += _tabular(["env", "algo", "metric", "seeds", "IQM", r"95\% CI", "msgs/step"], body, "lllrrlr")
    if comps:
        body = [[c["env"], c["x"], c["y"], c["metric"], fmt(c["p"]), fmt_ci(c["ci"]),
                 f"{c['seeds_x']} / {c['seeds_y']}"] for c in comps]
        lines += ["", "% probability of improvement P(X > Y) (ties count 1/2), percentile bootstrap interval"]
        lines += _tabular(["env", "X", "Y", "metric", "$P(X > Y)$", r"95\% CI", "seeds"], body, "llllrlr")
    return "\n".join(lines) + "\n"


# ---- marl-eval JSON -----------------------------------------------------------------------------------------------

def metric_name(column: str) -> str:
    """metrics.csv column -> marl-eval metric name: eval/success -> success, the messages column ->
    messages_per_step."""
    return "messages_per_step" if column == MESSAGES else column.split("/", 1)[-1]


def eval_columns(runs: Sequence[Run]) -> list[str]:
    """The evaluation columns every one of the runs logs (eval/* but eval/episodes, then the messages column)."""
    def logged(r: Run) -> set[str]:
        return {k for row in r.rows for k, v in row.items() if k and number(v) is not None}

    common = set.intersection(*(logged(r) for r in runs)) if runs else set()
    cols = sorted(c for c in common if c.startswith("eval/") and c != "eval/episodes")
    return cols + ([MESSAGES] if MESSAGES in common else [])


def marl_eval_entry(runs: Sequence[Run], grid: np.ndarray, curves: Mapping[str, np.ndarray]) -> dict[str, Any]:
    """One algorithm's runs in marl-eval's layout: {"run_<seed>": {"step_<k>": {"step_count": grid[k], name:
    [value]}, "absolute_metrics": {name: [final value]}}}. Values are one number per evaluation (the mean over its
    episodes, as marl-eval allows for rates), interpolated on the group's grid; absolute_metrics holds the final
    evaluation (re-evaluate with scripts/evaluate.py for the 10x-episode absolute score)."""
    out: dict[str, Any] = {}
    for i, r in enumerate(runs):
        steps = {f"step_{k}": {"step_count": int(step),
                               **{metric_name(c): [float(v[i, k])] for c, v in curves.items()}}
                 for k, step in enumerate(grid)}
        absolute = {metric_name(c): [number(final_row(r.rows, c)[c])] for c in curves}  # type: ignore[index]
        out[f"run_{r.seed}"] = {**steps, "absolute_metrics": absolute}
    return out
