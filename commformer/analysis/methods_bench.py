"""`scripts/benchmark.py --methods`: several methods on one task in one run. Each method's scripts/train.py runs once
per round, the methods interleaved within each round so each sees the same load; the table gives env steps per CPU
second of each run's process tree and the ratio to the first method of the same round."""
from __future__ import annotations

import datetime as _dt
import os
import platform
import statistics
import tempfile
import time
from pathlib import Path
from typing import Sequence

from commformer.analysis.compare import (COMMON, PRESETS, ROOT, RunResult, Side, describe_checkout, merge_overrides,
                                         run_once, say, warm_up)
from commformer.analysis.tables import md_table
from commformer.errors import UsageError


def methods_rows(runs: dict[str, Sequence[RunResult]]) -> list[list[str]]:
    """Table rows, one per method in the given order: median env steps per CPU s and per wall s, CPU s per run,
    update s per iteration, and the median over rounds of the ratio of its env steps per CPU s to the first method's
    of the same round."""
    first = next(iter(runs.values()))
    rows = []
    for name, rs in runs.items():
        cpu_rate = statistics.median(r.steps_per_cpu_s for r in rs)
        ratio = statistics.median(r.steps_per_cpu_s / f.steps_per_cpu_s for r, f in zip(rs, first))
        rows.append([name, f"{cpu_rate:,.0f}", f"{statistics.median(r.steps_per_wall_s for r in rs):,.0f}",
                     f"{statistics.median(r.cpu_s for r in rs):.1f}",
                     f"{statistics.median(r.update_s_per_iter for r in rs):.3f}", f"{ratio:.2f}x"])
    return rows


def methods_main(methods: Sequence[str], rounds: int, preset: str | None, overrides: Sequence[str],
                 out: Path | None, warmup: bool = True) -> str:
    """The --methods mode of scripts/benchmark.py: this checkout's scripts/train.py once per method and round, the
    methods interleaved within each round (so each sees the same load), env steps per CPU second of the process tree
    per method; returns (and writes to `out`) the markdown report."""
    import torch

    if preset is not None and preset not in PRESETS:
        raise UsageError(f"--preset {preset!r}; allowed: {sorted(PRESETS)}")
    if len(set(methods)) != len(methods) or not methods:
        raise UsageError(f"--methods {','.join(methods)!r}; name each method once, separated by commas")
    common = merge_overrides(COMMON, PRESETS[preset] if preset else [], list(overrides))
    sides = {m: Side(m, ROOT, merge_overrides(common, [f"algo={m}"])) for m in methods}

    started = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load0, t0 = os.getloadavg(), time.perf_counter()
    runs: dict[str, list[RunResult]] = {m: [] for m in methods}
    with tempfile.TemporaryDirectory(prefix="commformer-bench-runs-") as tmp:
        if warmup:
            for m, side in sides.items():
                say(f"warm-up {m}")
                warm_up(side, Path(tmp) / f"warmup_{m}")
        for i in range(rounds):
            for m, side in sides.items():
                say(f"round {i + 1}/{rounds}: {m}")
                r = run_once(side, Path(tmp) / f"round{i}_{m}")
                say(f"  {r.env_steps} env steps, {r.wall_s:.1f} s wall, {r.cpu_s:.1f} s CPU")
                runs[m].append(r)
    loads = lambda t: "/".join(f"{x:.2f}" for x in t)  # noqa: E731
    lines = [
        f"### Methods on one task ({describe_checkout(ROOT)})",
        "",
        f"- date: {started}; {rounds} round(s), each method once per round, in the order of the table "
        f"({(time.perf_counter() - t0) / 60:.1f} min)" + ("" if rounds >= 3 else "; FEWER THAN 3 ROUNDS"),
        f"- machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, torch {torch.__version__}; load average (1/5/15 min) before "
        f"{loads(load0)}, after {loads(os.getloadavg())}",
        f"- command: `python scripts/train.py {' '.join(common)} algo=<method>`",
        "",
        md_table(["method", "env steps / CPU s (process tree)", "env steps / wall s", "CPU s per run",
                  "update s / iteration", f"env steps / CPU s, ratio to {methods[0]}"], methods_rows(runs)),
        "",
        "Medians over rounds. CPU seconds are those of the run's whole process tree (start-up and evaluations "
        "included); they hold up under shared load better than wall time.",
        "",
    ]
    text = "\n".join(lines)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text
