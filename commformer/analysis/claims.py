"""CommFormer's claims (C1-C4, docs/results.md, "The claims, measured") decided from the studies' run folders, in one
command: `python scripts/claims.py [--studies runs/studies] [--out docs/results/claims.md]`.

Each study's latest sweep folder (runs/studies/<study>/<date>_<time>) is read with the report protocol
(commformer.analysis.protocol: groups by every differing key, one run per seed, each run's final evaluation, IQM
over runs with a 95% bootstrap interval, P(X > Y) with its interval). The verdict rule, the same for every claim:
a claim holds when its quantity's 95% interval lies on the right side of its threshold, does not hold when the
interval lies on the wrong side, and is undecided when the interval straddles the threshold.

- communication-critical task: P(full > nocomm) >= 0.9
- C1: IQM(commformer) / IQM(full) >= 0.95
- C2: P(commformer > random) >= 0.75 and P(random > nocomm) >= 0.75  (each by its own interval; both must hold)
- C3: commformer_gated sends <= 50% of commformer's messages per step (IQMs) and IQM(gated) / IQM(commformer) >= 0.95
- C4: IQM(split) / IQM(alternate) >= 0.95

A ratio claim is decided on the 95% percentile bootstrap interval of the ratio IQM(X) / IQM(Y) in which the runs of
both groups are resampled (stats.iqm_ratio_ci, as scripts/ratio_from_marl_eval.py): it holds when the interval's
lower end is >= 0.95, does not hold when its upper end is < 0.95, and is undecided otherwise; Y's own spread counts,
so Y's IQM is not taken as exact. The ratio needs values >= 0 (success rates); with a negative value it is undecided.
A P(X > Y) interval of [1, 1] (or [0, 0]) with every run of X above (below) every run of Y is complete separation:
every resample then gives the same P, so the interval collapses whatever the number of runs; the page says so.
The page also says how many comparisons it decides, each by its own 95% interval with no correction for their number.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from commformer.analysis import stats
from commformer.analysis.protocol import compare, group_runs, summarise_group
from commformer.analysis.report import read_runs
from commformer.analysis.tables import BOOT_SEED, CONFIDENCE, N_BOOT, write_text
from commformer.cli_args import OneLineParser
from commformer.errors import UsageError, guarded
from commformer.log_setup import script_logging

# the studies of conf/study/ that the claims read, with what each measures
C1C3 = ("c1c3_pcp", "c1c3_pp_easy")
C4 = "c4_split_pcp"
SPARSITY = "sparsity_pcp_medium"
GATE = "gate_cost_pcp"
CRITICAL_P, C1_RATIO, C2_P, C3_MESSAGES, C3_RATIO, C4_RATIO = 0.9, 0.95, 0.75, 0.5, 0.95, 0.95


def verdict(lo: float, hi: float, threshold: float) -> str:
    """'holds' when the interval [lo, hi] is at or above threshold, 'does not hold' when below, else 'undecided'."""
    if lo >= threshold:
        return "holds"
    if hi < threshold:
        return "does not hold"
    return "undecided"


def ratio_verdict(x: Sequence[float], y: Sequence[float], threshold: float,
                  n_boot: int = N_BOOT) -> dict[str, Any]:
    """IQM(x) / IQM(y) with its 95% percentile bootstrap interval, the runs of x and of y resampled separately
    (stats.iqm_ratio_ci), and the verdict of "IQM(x) >= threshold x IQM(y)" on that interval: {'ratio', 'ci',
    'verdict'}. With a negative value the ratio is not defined: ratio and ci None, 'undecided'."""
    if min(min(x), min(y)) < 0:
        return {"ratio": None, "ci": None, "verdict": "undecided"}
    num, den = stats.iqm(x), stats.iqm(y)
    ratio = float(num / den) if den > 0 else float("inf") if num > 0 else float("nan")
    ci = list(stats.iqm_ratio_ci(x, y, n_boot, CONFIDENCE, BOOT_SEED))
    return {"ratio": ratio, "ci": ci, "verdict": verdict(*ci, threshold)}


def both(*verdicts: str) -> str:
    """All hold -> holds; any does not hold -> does not hold; else undecided."""
    if all(v == "holds" for v in verdicts):
        return "holds"
    return "does not hold" if "does not hold" in verdicts else "undecided"


def latest_sweep(studies: Path, name: str) -> Path | None:
    """runs/studies/<name>/<latest date_time>, or None when the study has not run."""
    folder = studies / name
    sweeps = sorted(p for p in folder.iterdir() if p.is_dir()) if folder.is_dir() else []
    return sweeps[-1] if sweeps else None


def study_rows(sweep: Path) -> list[dict[str, Any]]:
    """The report rows (one per group) of one sweep folder."""
    return [row for g in group_runs(read_runs([str(sweep)])) if (row := summarise_group(g, None)) is not None]


def find(rows: Sequence[Mapping[str, Any]], algo: str, **keys: Any) -> Mapping[str, Any] | None:
    """The row of algo preset `algo` whose label keys include `keys` (None if absent)."""
    for r in rows:
        if r["algo"] == algo and all(str(r["keys"].get(k)) == str(v) for k, v in keys.items()):
            return r
    return None


def revisions(sweep: Path) -> list[str]:
    """The short commits the sweep's runs ran on (their git_revision.txt)."""
    return sorted({p.read_text().strip()[:7] for p in sweep.rglob("git_revision.txt")})


def _num(x: float | None) -> str:
    return "-" if x is None else f"{x:.3g}"


def _ci(ci: Sequence[float] | None) -> str:
    return "-" if not ci else f"[{ci[0]:.3g}, {ci[1]:.3g}]"


def _row_line(label: str, r: Mapping[str, Any]) -> str:
    return (f"| {label} | {r['seeds']} | {_num(r['iqm'])} | {_ci(r['iqm_ci'])} | {_num(r['messages'])} | "
            f"{r['env_steps']} |")


TABLE_HEAD = ("| group | seeds | IQM | 95% CI | msgs/step (IQM) | env steps |\n"
              "|---|---|---|---|---|---|")


# a P interval of [1, 1] or [0, 0] on complete separation: every resample gives the same P, whatever the runs' number
SEPARATION = "complete separation, every run of {a} above every run of {b}: {ci} whatever the number of runs"


def _p_line(c: Mapping[str, Any]) -> str:
    """P(X > Y) with its interval, and a note when the interval is [1, 1] or [0, 0] from complete separation."""
    line = f"P({c['x']} > {c['y']}) = {c['p']:.2f} {_ci(c['ci'])}"
    if c["p"] == 1.0 and list(c["ci"]) == [1.0, 1.0]:
        line += f" ({SEPARATION.format(a=c['x'], b=c['y'], ci='[1, 1]')})"
    elif c["p"] == 0.0 and list(c["ci"]) == [0.0, 0.0]:
        line += f" ({SEPARATION.format(a=c['y'], b=c['x'], ci='[0, 0]')})"
    return line


def _ratio_line(x: Mapping[str, Any], y: Mapping[str, Any], r: Mapping[str, Any], threshold: float) -> str:
    """IQM(X) / IQM(Y) with its interval (both groups resampled) against the threshold, and the two IQMs."""
    if r["ratio"] is None:
        head = f"IQM({x['label']}) / IQM({y['label']}) not defined (a value below 0)"
    else:
        head = f"IQM({x['label']}) / IQM({y['label']}) = {r['ratio']:.3f} {_ci(r['ci'])}"
    return (f"{head} against {threshold} (IQM({x['label']}) {x['iqm']:.3f} {_ci(x['iqm_ci'])}, "
            f"IQM({y['label']}) {y['iqm']:.3f} {_ci(y['iqm_ci'])})")


# the comparisons each section decides by a 95% interval against a threshold (the counted ones on the page)
C1C3_COMPARISONS = 5  # P(full > nocomm), C1's ratio, C2's two P, C3's ratio (C3's message check compares two IQMs)
C4_COMPARISONS = 1  # C4's ratio


def c1c3_section(name: str, rows: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Markdown of one C1-C3 study (the table, the critical check and the verdicts of C1, C2, C3) and the number of
    interval comparisons it decides (0 when a preset is missing)."""
    out = [f"### {name}: C1-C3 on `{rows[0]['env']}` ({rows[0]['metric']})", "", TABLE_HEAD]
    out += [_row_line(r["label"], r) for r in rows]
    get = {a: find(rows, a) for a in ("nocomm", "random", "commformer", "commformer_gated", "full")}
    missing = [a for a, r in get.items() if r is None]
    if missing:
        return out + ["", f"Missing presets: {', '.join(missing)}; no verdicts."], 0
    full, nocomm, rnd, cf, gated = (get[a] for a in ("full", "nocomm", "random", "commformer", "commformer_gated"))
    crit = compare(full, nocomm)
    crit_v = verdict(*crit["ci"], CRITICAL_P)
    c1 = ratio_verdict(cf["values"], full["values"], C1_RATIO)
    p_cr, p_rn = compare(cf, rnd), compare(rnd, nocomm)
    c2 = both(verdict(*p_cr["ci"], C2_P), verdict(*p_rn["ci"], C2_P))
    fewer = (gated["messages"] is not None and cf["messages"] is not None
             and gated["messages"] <= C3_MESSAGES * cf["messages"])
    c3_ratio = ratio_verdict(gated["values"], cf["values"], C3_RATIO)
    c3 = both("holds" if fewer else "does not hold", c3_ratio["verdict"])
    saved = 1.0 - gated["messages"] / cf["messages"] if cf["messages"] else float("nan")
    out += ["",
            f"- Communication-critical (P(full > nocomm) >= {CRITICAL_P}): {_p_line(crit)}: "
            f"{'yes' if crit_v == 'holds' else 'no' if crit_v == 'does not hold' else 'undecided'}.",
            f"- **C1 {c1['verdict']}**: {_ratio_line(cf, full, c1, C1_RATIO)}.",
            f"- **C2 {c2}**: {_p_line(p_cr)}; {_p_line(p_rn)} (each must reach {C2_P}).",
            f"- **C3 {c3}**: commformer_gated sends {_num(gated['messages'])} messages per step against "
            f"{_num(cf['messages'])} ({saved:.0%} fewer; needs >= {C3_MESSAGES:.0%}); "
            f"{_ratio_line(gated, cf, c3_ratio, C3_RATIO)}."]
    return out, C1C3_COMPARISONS


def c4_section(rows: list[dict[str, Any]]) -> tuple[list[str], int]:
    """Markdown of the C4 study and the number of interval comparisons it decides (0 when an arm is missing)."""
    split, alt = find(rows, "commformer", **{"algo.bilevel": "split"}), find(rows, "commformer",
                                                                           **{"algo.bilevel": "alternate"})
    out = [f"### {C4}: C4, split vs alternate bi-level on `{rows[0]['env']}` ({rows[0]['metric']})", "", TABLE_HEAD]
    out += [_row_line(r["label"], r) for r in rows]
    if split is None or alt is None:
        return out + ["", "Missing algo.bilevel=split or alternate; no verdict."], 0
    c4 = ratio_verdict(split["values"], alt["values"], C4_RATIO)
    return out + ["", f"- **C4 {c4['verdict']}**: {_ratio_line(split, alt, c4, C4_RATIO)}; "
                      f"{_p_line(compare(split, alt))} (shown, not decided)."], C4_COMPARISONS


def curve_section(name: str, title: str, rows: list[dict[str, Any]], key: str) -> list[str]:
    """A table of one swept key (algo.sparsity, algo.comm_cost): IQM and messages per step per value."""
    out = [f"### {name}: {title} on `{rows[0]['env']}` ({rows[0]['metric']})", "",
           f"| {key} | seeds | IQM | 95% CI | msgs/step (IQM) | env steps |", "|---|---|---|---|---|---|"]
    ordered = sorted(rows, key=lambda r: float(r["keys"].get(key, "nan")))
    out += [_row_line(str(r["keys"].get(key)), r) for r in ordered]
    few = [r for r in rows if r["seeds"] < 5]
    if few:
        out += ["", f"Fewer than 5 seeds per cell ({min(r['seeds'] for r in rows)}): the compute plan's exception."]
    return out


def claims_markdown(studies: Path) -> str:
    """The whole claims page for the studies under `studies` (UsageError when none has run)."""
    parts: list[list[str]] = []
    used: list[str] = []
    decided = 0  # interval comparisons against a threshold, over the whole page
    for name in C1C3 + (C4, SPARSITY, GATE):
        sweep = latest_sweep(studies, name)
        if sweep is None:
            parts.append([f"### {name}", "", f"Not run: `python scripts/train.py -m +study={name}`."])
            continue
        rows = study_rows(sweep)
        used.append(f"`{name}`: {sweep} (commit {', '.join(revisions(sweep)) or 'unknown'})")
        if name in C1C3:
            lines, n = c1c3_section(name, rows)
            parts.append(lines)
            decided += n
        elif name == C4:
            lines, n = c4_section(rows)
            parts.append(lines)
            decided += n
        elif name == SPARSITY:
            parts.append(curve_section(name, "IQM against the sparsity S", rows, "algo.sparsity"))
        else:
            parts.append(curve_section(name, "IQM against the gate's comm_cost", rows, "algo.comm_cost"))
    if not used:
        raise UsageError(f"no study has run under {studies} (expected runs/studies/<study>/<date>_<time>)")
    head = ["Made by `python scripts/claims.py` from these sweep folders:", ""] + [f"- {u}" for u in used]
    rule = ["", f"Each run's final evaluation; IQM over runs with a {CONFIDENCE:.0%} percentile bootstrap interval; "
                "P(X > Y) over (run, run) pairs with its bootstrap interval. A ratio claim (C1, C3's IQM side, C4) "
                f"is decided on the {CONFIDENCE:.0%} interval of IQM(X) / IQM(Y) with the runs of both groups "
                f"resampled ({N_BOOT} resamples, seed {BOOT_SEED}): it holds when the interval's lower end is >= "
                f"{C1_RATIO}, does not hold when its upper end is < {C1_RATIO}, and is undecided otherwise. A P(X > Y) "
                "claim holds when its interval lies at or above its threshold, does not hold when it lies below, "
                "and is undecided when it straddles it.",
            "", f"This page makes {decided} comparisons, each decided by its own {CONFIDENCE:.0%} interval with no "
                "correction for their number (per C1-C3 study: P(full > nocomm), C1's ratio, C2's two P(X > Y), "
                "C3's ratio; C4's ratio). C3's message check compares two IQMs without an interval."]
    return "\n".join(head + rule + [""] + ["\n".join(p) + "\n" for p in parts])


def claims_parser() -> argparse.ArgumentParser:
    p = OneLineParser(description=__doc__.split("\n\n")[0],
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--studies", default="runs/studies", help="the folder holding <study>/<date>_<time> sweeps")
    p.add_argument("--out", default=None, help="also write the markdown to this file")
    return p


def claims_main(argv: Sequence[str] | None = None) -> str:
    args = guarded(lambda: claims_parser().parse_args(argv))
    script_logging()

    def run() -> str:
        text = claims_markdown(Path(args.studies))
        sys.stdout.write(text + "\n")  # the page is this command's product (as report.py's tables); logs go to logging
        sys.stdout.flush()
        if args.out:
            write_text(Path(args.out), text)
        return text

    return guarded(run)  # type: ignore[return-value]
