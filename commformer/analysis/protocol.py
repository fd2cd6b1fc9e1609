"""The field's evaluation protocol over run folders (docs/studies.md, "Evaluation protocol"; Agarwal et al. 2021,
"Deep RL at the Edge of the Statistical Precipice"; marl-eval, Gorsane et al. 2022): which runs form one group, one
number per run, the IQM over runs with a 95% stratified bootstrap interval, curves on a common env-step grid, and the
probability of improvement between two groups of one task.

- Groups: runs whose configs agree on every key except the per-run ones (RUN_ONLY_KEYS, and keys pooled with
  --merge). A group's label is its algo preset plus the keys that set it apart from the other groups of its env and
  preset (algo.sparsity=0.2, algo.comm_cost=0.05, ...); what a preset or an env sets by itself is not repeated.
- One run per seed: a seed that appears twice in a group keeps its latest run (a warning names both).
- A run's number: its final evaluation of the metric; beside it comm/eval_messages_per_step of that evaluation.
- Curves: each run's evaluations, linearly interpolated onto one env-step grid per group (the runs' own evaluation
  steps when they all share them).
"""
from __future__ import annotations

import itertools
import logging
from collections import defaultdict
from dataclasses import dataclass, field
from typing import Any, Mapping, Sequence

import numpy as np

from commformer.analysis import stats
from commformer.analysis.runs import Run, curve, final_row, number
from commformer.analysis.tables import BOOT_SEED, CONFIDENCE, N_BOOT
from commformer.errors import UsageError
from envs.registry import family_note

log = logging.getLogger("commformer")

# groups with fewer runs than this are flagged (docs/studies.md, "Evaluation protocol": >= 5 seeds, 10 preferred)
MIN_SEEDS = 5
# the default metric is the first of these that a group's runs log
METRIC_PREFERENCE = ("eval/success", "eval/won", "eval/return")
# config keys that may differ between the seeds of one group without making them different experiments
RUN_ONLY_KEYS = ("seed", "run_dir", "resume", "device", "torch_threads", "eval_every", "eval_at_start", "eval_sampled",
                 "checkpoint_every", "logger")
# logged at every evaluation: messages sent per env step under the evaluation's graph and gate
MESSAGES = "comm/eval_messages_per_step"
# end-to-end training speed of one iteration (wall clock), logged by every run
THROUGHPUT = "perf/env_steps_per_s"
# episodes of an evaluation (the n of a success rate's binomial interval)
EPISODES = "eval/episodes"
# metrics that are a rate of 0/1 episode outcomes
RATE_METRICS = ("eval/success", "eval/won")
# evenly spaced grid points when a group's runs evaluated at different env steps
GRID_POINTS = 25


def _is(key: str, names: Sequence[str]) -> bool:
    return any(key == k or key.startswith(k + ".") for k in names)


def config_differences(configs: Sequence[Mapping[str, Any]], ignore: Sequence[str] = RUN_ONLY_KEYS) -> list[str]:
    """Flattened keys whose values differ between the configs, except keys in (or below) `ignore`, sorted."""
    keys = sorted({k for c in configs for k in c if not _is(k, ignore)})
    return [k for k in keys if len({repr(c.get(k)) for c in configs}) > 1]


@dataclass
class Group:
    """The runs of one experiment (one per seed) and what sets it apart from the other groups."""

    env: str
    family: str
    algo: str
    keys: dict[str, Any]
    """the keys shown in the label: those that differ between the groups of this env and algo preset"""
    runs: list[Run]
    notes: list[str] = field(default_factory=list)

    @property
    def label(self) -> str:
        """'commformer' or 'commformer algo.sparsity=0.2' (no commas: marl-eval splits algorithm names on them)."""
        return " ".join([self.algo] + [f"{k}={v}" for k, v in self.keys.items()])


def _seed_order(runs: Sequence[Run]) -> list[Run]:
    """Runs by seed (numerically when every seed is a number), else by folder."""
    if all(isinstance(r.seed, (int, float)) and not isinstance(r.seed, bool) for r in runs):
        return sorted(runs, key=lambda r: (r.seed, str(r.path)))
    return sorted(runs, key=lambda r: (str(r.seed), str(r.path)))


def _one_per_seed(runs: Sequence[Run], label: str) -> tuple[list[Run], list[str]]:
    """The latest run of each seed (by metrics.csv's modification time, then folder name) and a note per repeat."""
    by_seed: dict[str, list[Run]] = defaultdict(list)
    for r in runs:
        by_seed[repr(r.seed)].append(r)
    kept, notes = [], []
    for seed, members in by_seed.items():
        members = sorted(members, key=lambda r: (r.modified, str(r.path)))
        kept.append(members[-1])
        if len(members) > 1:
            dropped = ", ".join(str(r.path) for r in members[:-1])
            log.warning("%s: seed %s has %d runs; counted once, the latest (%s); left out: %s", label,
                        members[-1].seed, len(members), members[-1].path, dropped)
            notes.append(f"seed {members[-1].seed}: {len(members)} runs, the latest counted")
    return _seed_order(kept), notes


def group_runs(runs: Sequence[Run], merge: Sequence[str] = ()) -> list[Group]:
    """Split runs by every config key that differs between them (except RUN_ONLY_KEYS and `merge`), one run per
    seed; sorted by env, then label."""
    ignore = tuple(RUN_ONLY_KEYS) + tuple(merge)
    differ = config_differences([r.config for r in runs], ignore)
    buckets: dict[tuple, list[Run]] = defaultdict(list)
    for r in runs:
        buckets[(r.env, r.algo) + tuple(repr(r.config.get(k)) for k in differ)].append(r)
    by_preset: dict[tuple[str, str], list[list[Run]]] = defaultdict(list)
    for members in buckets.values():
        by_preset[(members[0].env, members[0].algo)].append(members)
    groups = []
    for (env, algo), sets in by_preset.items():
        # the keys that vary between the groups of this env and preset (empty when there is one group)
        shown = [k for k in differ if len({repr(s[0].config.get(k)) for s in sets}) > 1]
        for members in sets:
            g = Group(env, members[0].family, algo, {k: members[0].config.get(k) for k in shown}, [])
            g.runs, g.notes = _one_per_seed(members, f"{env} / {g.label}")
            groups.append(g)
    return sorted(groups, key=lambda g: (g.env, g.label))


def pick_metric(runs: Sequence[Run], requested: str | None) -> str | None:
    """The requested metric, else the first of METRIC_PREFERENCE that any of the runs logs (None if none does)."""
    if requested is not None:
        return requested
    for metric in METRIC_PREFERENCE:
        if any(r.logged(metric) for r in runs):
            return metric
    return None


def _steps_text(steps: Sequence[int]) -> str:
    low, high = min(steps), max(steps)
    return str(low) if low == high else f"{low}-{high}"


def _iqm_and_ci(values: Sequence[float], n_boot: int) -> tuple[float, list[float]]:
    return stats.iqm(values), list(stats.bootstrap_ci(values, stats.iqm, n_boot, CONFIDENCE, BOOT_SEED))


def median_throughput(rows: Sequence[Mapping[str, str]]) -> float | None:
    """The median over a run's iterations of its logged env steps per second (THROUGHPUT); None when none is
    logged. The median, not the mean: one iteration slowed by an evaluation or a checkpoint does not move it."""
    values = [v for row in rows if (v := number(row.get(THROUGHPUT))) is not None and np.isfinite(v)]
    return float(np.median(values)) if values else None


def summarise_group(group: Group, requested: str | None, n_boot: int = N_BOOT,
                    skipped: list[str] | None = None) -> dict[str, Any] | None:
    """The report row of one group: its runs' final values of the metric, their IQM with a 95% bootstrap interval,
    the mean, the messages per step beside them and one record per run (per_run). None when none of its runs logs
    the metric (the reason is appended to `skipped`, else logged as a warning)."""
    note = skipped.append if skipped is not None else (lambda text: log.warning("%s", text))
    where = f"{group.env} / {group.label}"
    metric = pick_metric(group.runs, requested)
    if metric is None:
        note(f"{where}: no run logs any of {', '.join(METRIC_PREFERENCE)}; skipped")
        return None
    per_run = []
    for r in group.runs:
        row = final_row(r.rows, metric)
        if row is None:
            continue
        steps, episodes = number(row.get("env_steps")), number(row.get(EPISODES))
        per_run.append({"seed": r.seed, "value": number(row.get(metric)), "env_steps": int(steps or -1),
                        "episodes": None if episodes is None else int(episodes),
                        "messages": number(row.get(MESSAGES)), "throughput": median_throughput(r.rows),
                        "run": str(r.path)})
    if not per_run:
        note(f"{where}: no run logs {metric}; skipped")
        return None
    values = [p["value"] for p in per_run]
    notes = []
    if len(per_run) < MIN_SEEDS:
        notes.append(f"fewer than {MIN_SEEDS} seeds")
    if len(per_run) < len(group.runs):
        notes.append(f"{len(group.runs) - len(per_run)} run(s) without {metric} left out")
    notes += group.notes
    used = [r for r in group.runs if final_row(r.rows, metric) is not None]
    differ = config_differences([r.config for r in used])
    if differ:
        notes.append(f"configs differ: {', '.join(differ[:3])}" + (", ..." if len(differ) > 3 else ""))
    family = family_note(group.family)
    if family:
        notes.append(family)
    messages = [p["messages"] for p in per_run if p["messages"] is not None]
    iqm, ci = _iqm_and_ci(values, n_boot)
    m_iqm, m_ci = _iqm_and_ci(messages, n_boot) if messages else (None, None)
    speeds = [p["throughput"] for p in per_run if p["throughput"] is not None]
    return {
        "env": group.env, "algo": group.algo, "label": group.label, "keys": dict(group.keys),
        "family": group.family, "metric": metric, "seeds": len(per_run), "iqm": iqm, "iqm_ci": ci,
        "mean": stats.mean(values), "env_steps": _steps_text([p["env_steps"] for p in per_run]),
        "messages": m_iqm, "messages_ci": m_ci, "throughput": float(stats.iqm(speeds)) if speeds else None,
        "values": values, "runs": [p["run"] for p in per_run],
        "per_run": per_run, "notes": notes,
    }


def aggregate_rows(rows: Sequence[Mapping[str, Any]], n_boot: int = N_BOOT) -> list[dict[str, Any]]:
    """Per group label present in >= 2 envs: IQM over all its runs, the bootstrap stratified by env (runs are
    resampled within each env, so every env keeps its weight). Scores are not normalised: mixing return scales is
    the reader's risk, and the row says which metrics it pools."""
    by_label: dict[str, list[Mapping[str, Any]]] = {}
    for row in rows:
        by_label.setdefault(row.get("label", row["algo"]), []).append(row)
    out = []
    for label, group in sorted(by_label.items()):
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
        notes += sorted({n for r in group if (n := family_note(r["family"]))})
        out.append({
            "env": f"all ({len(group)} envs)", "algo": group[0]["algo"], "label": label, "keys": {}, "family": "",
            "metric": ", ".join(metrics), "seeds": int(flat.size), "iqm": stats.iqm(flat),
            "iqm_ci": list(stats.bootstrap_ci(strata, stats.iqm, n_boot, CONFIDENCE, BOOT_SEED)),
            "mean": stats.mean(flat), "env_steps": "", "messages": None, "messages_ci": None,
            "values": flat.tolist(), "runs": [], "per_run": [], "notes": notes, "aggregate": True,
        })
    return out


# ---- curves on a common env-step grid -----------------------------------------------------------------------------

def common_grid(curves: Sequence[Sequence[tuple[int, float]]], points: int = GRID_POINTS) -> np.ndarray | None:
    """The env-step grid [G] of a group's curves: their evaluation steps when every curve has the same ones, else
    `points` evenly spaced steps from the latest first evaluation to the earliest last one (no extrapolation).
    None when the curves do not overlap."""
    steps = [tuple(s for s, _ in c) for c in curves if c]
    if not steps or len(steps) < len(curves):
        return None
    if len(set(steps)) == 1:
        return np.asarray(steps[0], dtype=np.float64)
    low, high = max(s[0] for s in steps), min(s[-1] for s in steps)
    if low > high:
        return None
    return np.unique(np.round(np.linspace(low, high, points)))


def on_grid(points: Sequence[tuple[int, float]], grid: np.ndarray) -> np.ndarray:
    """A curve [(env_steps, value)] linearly interpolated at the grid's steps: [G]."""
    steps, values = zip(*points)
    return np.interp(grid, np.asarray(steps, dtype=np.float64), np.asarray(values, dtype=np.float64))


def group_curves(runs: Sequence[Run], metrics: Sequence[str], points: int = GRID_POINTS,
                 ) -> tuple[np.ndarray, dict[str, np.ndarray]] | None:
    """(grid [G], {metric: values [n_runs, G]}) of the runs (in their order) on the grid of metrics[0]'s
    evaluations; every other metric is interpolated on the same grid, and left out when some run never logs it.
    None when a run lacks metrics[0] or the runs' curves do not overlap."""
    curves = {m: [curve(r.rows, m) for r in runs] for m in metrics}
    grid = common_grid(curves[metrics[0]], points)
    if grid is None:
        return None
    return grid, {m: np.stack([on_grid(c, grid) for c in cs]) for m, cs in curves.items() if all(cs)}


# ---- probability of improvement -------------------------------------------------------------------------------------

def compare(x: Mapping[str, Any], y: Mapping[str, Any], n_boot: int = N_BOOT) -> dict[str, Any]:
    """P(X > Y) between two report rows of one env (their runs' final values) with its 95% bootstrap interval, and
    for a metric that is never negative (success, won) the ratio of their IQMs with its interval."""
    out = {
        "env": x["env"], "x": x["label"], "y": y["label"], "metric": x["metric"],
        "p": stats.probability_of_improvement(x["values"], y["values"]),
        "ci": list(stats.probability_of_improvement_ci(x["values"], y["values"], n_boot, CONFIDENCE, BOOT_SEED)),
        "seeds_x": x["seeds"], "seeds_y": y["seeds"], "messages_x": x.get("messages"),
        "messages_y": y.get("messages"),
    }
    if min(min(x["values"]), min(y["values"])) >= 0:
        den = stats.iqm(y["values"])
        out["ratio"] = float(stats.iqm(x["values"]) / den) if den > 0 else float("inf")
        out["ratio_ci"] = list(stats.iqm_ratio_ci(x["values"], y["values"], n_boot, CONFIDENCE, BOOT_SEED))
    return out


def _find(rows: Sequence[Mapping[str, Any]], name: str) -> Mapping[str, Any] | None:
    """The row labelled `name`, else the one row of algo preset `name`."""
    exact = [r for r in rows if r["label"] == name]
    if exact:
        return exact[0]
    by_algo = [r for r in rows if r["algo"] == name]
    return by_algo[0] if len(by_algo) == 1 else None


def comparisons(rows: Sequence[Mapping[str, Any]], pairs: Sequence[Sequence[str]] | None = None,
                n_boot: int = N_BOOT) -> list[dict[str, Any]]:
    """P(X > Y) for each requested pair (labels or algo presets) in every env that has both, or, without pairs, for
    every pair of groups of one env and metric, X the one with the higher IQM. UsageError for a requested pair that
    no env has."""
    by_env: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
    for r in rows:
        if not r.get("aggregate"):
            by_env[r["env"]].append(r)
    out = []
    if pairs:
        for a, b in pairs:
            found = [(x, y) for members in by_env.values()
                     if (x := _find(members, a)) is not None and (y := _find(members, b)) is not None]
            if not found:
                labels = sorted({r["label"] for members in by_env.values() for r in members})
                raise UsageError(f"--compare {a!r} {b!r}: no env has both; groups: {', '.join(labels)}")
            out += [compare(x, y, n_boot) for x, y in found]
        return out
    for env in sorted(by_env):
        for x, y in itertools.combinations(by_env[env], 2):
            if x["metric"] != y["metric"]:
                continue
            if (y["iqm"], x["label"]) > (x["iqm"], y["label"]):
                x, y = y, x
            out.append(compare(x, y, n_boot))
    return out
