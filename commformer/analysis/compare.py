"""Same-run throughput comparison of two revisions (or two settings) of this project.

`python scripts/benchmark.py --compare REV [--pairs 3] [--preset authors_pp|smax_3m|default] [--overrides "k=v ..."]`
checks REV out into a temporary git worktree and runs each revision's own scripts/train.py (the one interface that
is stable across revisions: it puts its own checkout first on sys.path) as a subprocess with the same overrides,
interleaved A B A B under the same load. A is this checkout (working tree included), B is REV. Per run it records:

- wall-clock seconds of the whole process, and its CPU seconds (user + system) summed over the process tree
  (resource.getrusage(RUSAGE_CHILDREN) deltas: the child and every descendant it waited for, e.g. compile workers);
- env steps (the last env_steps of metrics.csv) and the sums of perf/rollout_s and perf/update_s over iterations;
- peak memory of the process tree: PSS summed over the tree (/proc/<pid>/smaps_rollup, sampled while it runs), or
  RSS where smaps_rollup cannot be read.

The table gives each side's median and the min and median over pairs of the per-pair speedup of A over B: a ratio of
throughputs (env steps per wall second, per CPU second, per rollout second) or the inverse ratio of times. Env steps
per CPU-second is far steadier under contention than wall time on a shared machine.
"""
from __future__ import annotations

import dataclasses
import csv
import datetime as _dt
import os
import platform
import resource
import shutil
import statistics
import subprocess
import sys
import tempfile
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Callable, Sequence

from commformer.analysis.process_tree import TreeMemorySampler, process_memory_kb, tree_pids  # noqa: F401 (re-exported)
from commformer.analysis.tables import md_table
from commformer.errors import UsageError
from commformer.overrides import override_key

ROOT = Path(__file__).resolve().parents[2]

# Overrides of the named presets (merged before --overrides; later keys win). The budgets are large enough that
# start-up (imports, env construction) and the evaluations are a small share of a run, small enough for 3 pairs.
PRESETS: dict[str, list[str]] = {
    # the CommFormer authors' Predator-Prey settings: B=8, T=200, 10 epochs, clip 0.05 (60 iterations: 10 of
    # warmup, 50 bi-level; evaluations of 100 episodes every 20)
    "authors_pp": ["num_envs=8", "rollout_length=200", "ppo_epochs=10", "algo.clip=0.05", "total_env_steps=96000"],
    # SMAX 3m (JaxMARL, no StarCraft II) at B=32, T=40, one minibatch, stated because later revisions give smax_3m
    # its own settings (conf/env_settings/smax_3m.yaml); 50 iterations
    "smax_3m": ["env=smax_3m", "num_envs=32", "rollout_length=40", "algo.minibatches=1", "total_env_steps=64000"],
    # the README's main job as it is: python scripts/train.py
    "default": [],
}
# Every run gets these first (the trainer's own defaults at both revisions, stated so a changed default cannot skew
# a comparison): quiet logging, one torch thread.
COMMON = ["logger=quiet", "torch_threads=1"]


# ---- pure parts: overrides, ratios, table ---------------------------------------------------------------------------

def merge_overrides(*groups: Sequence[str]) -> list[str]:
    """Concatenate override lists; a later value of the same key replaces the earlier one in place."""
    out: dict[str, str] = {}
    for group in groups:
        for item in group:
            if "=" not in item and not item.startswith("~"):
                raise UsageError(f"override {item!r}; expected key=value")
            key = override_key(item)
            out.pop(key, None)
            out[key] = item
    return list(out.values())


def ratio_stats(a: Sequence[float], b: Sequence[float], higher_is_better: bool = True) -> tuple[float, float]:
    """(min, median) over pairs of the speedup of A over B: a_i / b_i for throughputs, b_i / a_i for times.

    a, b: one value per run, pair i = (a[i], b[i]); both of the same length >= 1."""
    if len(a) != len(b) or not a:
        raise ValueError(f"ratio_stats: {len(a)} A values and {len(b)} B values; need the same number >= 1")
    ratios = [(x / y if higher_is_better else y / x) if min(x, y) > 0 else float("nan") for x, y in zip(a, b)]
    return min(ratios), statistics.median(ratios)


@dataclass
class RunResult:
    """One training run: wall and CPU seconds of the process tree, env steps, perf sums from metrics.csv, memory."""

    wall_s: float
    cpu_s: float
    env_steps: int
    iterations: int
    rollout_s: float
    update_s: float
    peak_mem_mb: float
    mem_kind: str  # "PSS" or "RSS"

    @property
    def steps_per_wall_s(self) -> float:
        return self.env_steps / self.wall_s

    @property
    def steps_per_cpu_s(self) -> float:
        return self.env_steps / self.cpu_s

    @property
    def rollout_steps_per_s(self) -> float:
        return self.env_steps / self.rollout_s if self.rollout_s > 0 else float("nan")

    @property
    def update_s_per_iter(self) -> float:
        return self.update_s / max(self.iterations, 1)


# (label, value of a run, higher is better, format)
METRICS: list[tuple[str, Callable[[RunResult], float], bool, str]] = [
    ("env steps / wall s (whole run)", lambda r: r.steps_per_wall_s, True, "{:,.0f}"),
    ("env steps / CPU s (process tree)", lambda r: r.steps_per_cpu_s, True, "{:,.0f}"),
    ("rollout env steps / s (sum of perf/rollout_s)", lambda r: r.rollout_steps_per_s, True, "{:,.0f}"),
    ("update s / iteration (mean perf/update_s)", lambda r: r.update_s_per_iter, False, "{:.3f}"),
    ("wall s per run", lambda r: r.wall_s, False, "{:.1f}"),
    ("CPU s per run (process tree)", lambda r: r.cpu_s, False, "{:.1f}"),
]


def comparison_rows(a: Sequence[RunResult], b: Sequence[RunResult]) -> list[list[str]]:
    """Table rows: metric | A median | B median | speedup min | speedup median, then the peak memory row."""
    rows = []
    for label, get, higher, f in METRICS:
        va, vb = [get(r) for r in a], [get(r) for r in b]
        lo, med = ratio_stats(va, vb, higher)
        rows.append([label, f.format(statistics.median(va)), f.format(statistics.median(vb)), f"{lo:.2f}x",
                     f"{med:.2f}x"])
    kinds = sorted({r.mem_kind for r in list(a) + list(b)})
    ma, mb = max(r.peak_mem_mb for r in a), max(r.peak_mem_mb for r in b)
    rows.append([f"peak memory of the process tree, MB ({'/'.join(kinds)}, max over runs)", f"{ma:,.0f}",
                 f"{mb:,.0f}", "", ""])
    return rows


def comparison_table(a: Sequence[RunResult], b: Sequence[RunResult], label_a: str, label_b: str) -> str:
    """The markdown table of a comparison (speedup = A over B; > 1 means A is faster or smaller)."""
    header = ["metric", f"A: {label_a} (median)", f"B: {label_b} (median)", "speedup A/B (min)",
              "speedup A/B (median)"]
    return md_table(header, comparison_rows(a, b))


# ---- reading a run ------------------------------------------------------------------------------------------------

def read_metrics(run_dir: Path) -> tuple[int, int, float, float]:
    """(env steps, iterations, sum of perf/rollout_s, sum of perf/update_s) from a run folder's metrics.csv."""
    path = Path(run_dir) / "metrics.csv"
    with path.open(newline="") as f:
        rows = [r for r in csv.DictReader(f) if r.get("perf/rollout_s") not in (None, "")]
    if not rows:
        raise RuntimeError(f"{path}: no iteration rows with perf/rollout_s")
    steps = int(float(rows[-1]["env_steps"]))
    return (steps, len(rows), sum(float(r["perf/rollout_s"]) for r in rows),
            sum(float(r["perf/update_s"]) for r in rows))


def flat_config(path: Path) -> dict[str, object]:
    """A run folder's config.yaml as {dotted key: value} (empty when it cannot be read)."""
    import yaml

    try:
        data = yaml.safe_load(Path(path).read_text()) or {}
    except (OSError, yaml.YAMLError):
        return {}
    out: dict[str, object] = {}

    def walk(prefix: str, node: object) -> None:
        if isinstance(node, dict):
            for k, v in node.items():
                walk(f"{prefix}{k}.", v)
        else:
            out[prefix[:-1]] = node

    walk("", data)
    return out


# keys that do not change what a run computes
CONFIG_IGNORED = ("run_dir", "resume", "logger.", "checkpoint_every")


def config_differences(a: dict[str, object], b: dict[str, object]) -> list[str]:
    """'key: A=.. B=..' for keys both resolved configs hold with different values, then one line naming the keys
    only one side has (a newer schema), ignoring CONFIG_IGNORED."""
    keep = lambda k: not any(k == p or k.startswith(p) for p in CONFIG_IGNORED)  # noqa: E731
    lines = [f"{k}: A={a[k]!r} B={b[k]!r}" for k in sorted(a.keys() & b.keys()) if keep(k) and a[k] != b[k]]
    for side, mine, other in (("A", a, b), ("B", b, a)):
        only = sorted(k for k in mine.keys() - other.keys() if keep(k))
        if only:
            shown = ", ".join(f"{k}={mine[k]!r}" for k in only[:12])
            lines.append(f"only {side} has {len(only)} keys: {shown}" + (", ..." if len(only) > 12 else ""))
    return lines


# ---- running a revision ---------------------------------------------------------------------------------------------

@dataclass
class Side:
    """One side of a comparison: a checkout (its scripts/train.py runs) and the overrides of its runs."""

    label: str
    root: Path
    overrides: list[str] = field(default_factory=list)


def children_cpu_s() -> float:
    ru = resource.getrusage(resource.RUSAGE_CHILDREN)
    return ru.ru_utime + ru.ru_stime


def run_once(side: Side, run_dir: Path, env: dict[str, str] | None = None) -> RunResult:
    """Run side's scripts/train.py once into run_dir (its Hydra folder too) and measure it; RuntimeError with the
    tail of its log when it fails."""
    run_dir.mkdir(parents=True, exist_ok=True)
    cmd = [sys.executable, str(side.root / "scripts" / "train.py"), *side.overrides, f"run_dir={run_dir}",
           f"hydra.run.dir={run_dir}"]
    log_path = run_dir / "stdout.log"
    cpu0, t0 = children_cpu_s(), time.perf_counter()
    with log_path.open("wb") as log:
        proc = subprocess.Popen(cmd, cwd=side.root, stdout=log, stderr=subprocess.STDOUT, env=env)
        sampler = TreeMemorySampler(proc.pid).start()
        try:
            rc = proc.wait()
        finally:
            sampler.stop()
    wall, cpu = time.perf_counter() - t0, children_cpu_s() - cpu0
    if rc != 0:
        tail = "\n".join(log_path.read_text(errors="replace").splitlines()[-15:])
        raise RuntimeError(f"{side.label}: {' '.join(cmd)} exited with {rc}:\n{tail}")
    steps, iters, rollout_s, update_s = read_metrics(run_dir)
    return RunResult(wall, cpu, steps, iters, rollout_s, update_s, sampler.peak_mb, sampler.kind)


def git(*args: str, cwd: Path = ROOT) -> str:
    out = subprocess.run(["git", *args], cwd=cwd, capture_output=True, text=True)
    if out.returncode != 0:
        raise UsageError(f"git {' '.join(args)}: {out.stderr.strip().splitlines()[-1] if out.stderr.strip() else out.returncode}")
    return out.stdout.strip()


def describe_checkout(root: Path) -> str:
    """'<short sha>' of a checkout, with '+uncommitted' when its tracked files differ from it."""
    try:
        sha = git("rev-parse", "--short", "HEAD", cwd=root)
        dirty = bool(git("status", "--porcelain", "--untracked-files=no", cwd=root))
    except UsageError:
        return str(root)
    return sha + ("+uncommitted" if dirty else "")


class Worktree:
    """A detached git worktree of `rev` in a temporary folder, removed on exit."""

    def __init__(self, rev: str) -> None:
        self.sha = git("rev-parse", "--verify", f"{rev}^{{commit}}")
        self.tmp = Path(tempfile.mkdtemp(prefix="commformer-bench-"))
        self.path = self.tmp / self.sha[:12]

    def __enter__(self) -> Path:
        git("worktree", "add", "--detach", "--quiet", str(self.path), self.sha)
        return self.path

    def __exit__(self, *exc: object) -> None:
        subprocess.run(["git", "worktree", "remove", "--force", str(self.path)], cwd=ROOT, capture_output=True)
        subprocess.run(["git", "worktree", "prune"], cwd=ROOT, capture_output=True)
        shutil.rmtree(self.tmp, ignore_errors=True)


@dataclass
class Comparison:
    """Results of an interleaved comparison: per-side run results, in run order."""

    a: Side
    b: Side
    runs_a: list[RunResult]
    runs_b: list[RunResult]
    load_before: tuple[float, float, float]
    load_after: tuple[float, float, float]
    started: str
    seconds: float
    config_diff: list[str] = field(default_factory=list)


def warm_up(side: Side, run_dir: Path) -> None:
    """One short untimed run of side (byte-compiles a fresh worktree, fills compile caches, warms the file cache)."""
    run_once(dataclasses.replace(side, overrides=merge_overrides(
        side.overrides, ["total_env_steps=1", "eval_episodes=1", "eval_envs=1"])), run_dir)


def say(message: str) -> None:
    """A progress line on stderr (the tables go to stdout)."""
    sys.stderr.write(message + "\n")
    sys.stderr.flush()


def interleaved(a: Side, b: Side, pairs: int, work_dir: Path, warmup: bool = True,
                progress: Callable[[str], None] | None = None) -> Comparison:
    """Run A B A B ... (`pairs` pairs) under the same load; with warmup, one short untimed run of each side first
    (byte-compiles a fresh worktree, fills compile caches, warms the file cache)."""
    say = progress or (lambda _m: None)
    started = _dt.datetime.now().astimezone().strftime("%Y-%m-%d %H:%M %Z")
    load0, t0 = os.getloadavg(), time.perf_counter()
    if warmup:
        for side, tag in ((a, "A"), (b, "B")):
            say(f"warm-up {tag} ({side.label})")
            warm_up(side, work_dir / f"warmup_{tag}")
    runs_a, runs_b = [], []
    for i in range(pairs):
        for side, tag, runs in ((a, "A", runs_a), (b, "B", runs_b)):
            say(f"pair {i + 1}/{pairs}: {tag} ({side.label})")
            r = run_once(side, work_dir / f"pair{i}_{tag}")
            say(f"  {r.env_steps} env steps, {r.wall_s:.1f} s wall, {r.cpu_s:.1f} s CPU, rollout {r.rollout_s:.2f} s, "
                f"update {r.update_s:.2f} s, peak {r.mem_kind} {r.peak_mem_mb:.0f} MB")
            runs.append(r)
    diff = config_differences(flat_config(work_dir / "pair0_A" / "config.yaml"),
                              flat_config(work_dir / "pair0_B" / "config.yaml"))
    return Comparison(a, b, runs_a, runs_b, load0, os.getloadavg(), started, time.perf_counter() - t0, diff)


def report(c: Comparison, preset: str | None, extra: Sequence[str]) -> str:
    """Markdown: what ran, under what load, and the table."""
    import torch

    loads = lambda t: "/".join(f"{x:.2f}" for x in t)  # noqa: E731
    same = c.a.overrides == c.b.overrides
    lines = [
        f"### {c.a.label} vs {c.b.label}" + (f" ({preset})" if preset else ""),
        "",
        f"- date: {c.started}; {len(c.runs_a)} pair(s) run interleaved A B A B ({c.seconds / 60:.1f} min)"
        + ("" if len(c.runs_a) >= 3 else "; FEWER THAN 3 PAIRS: a smoke run, not a measurement"),
        f"- machine: {os.cpu_count()} CPUs ({platform.processor() or platform.machine()}), Python "
        f"{platform.python_version()}, torch {torch.__version__}; load average (1/5/15 min) before "
        f"{loads(c.load_before)}, after {loads(c.load_after)}",
        f"- command: `python scripts/train.py {' '.join(c.a.overrides)}`"
        + ("" if same else f" (B: `python scripts/train.py {' '.join(c.b.overrides)}`)")
        + ", each revision its own scripts/train.py",
    ]
    if extra:
        lines.append(f"- overrides given: `{' '.join(extra)}`")
    if c.config_diff:
        lines.append("- resolved configs differ (each run folder's config.yaml): " + "; ".join(c.config_diff))
    else:
        lines.append("- resolved configs: the same values for every key both revisions have")
    lines += ["", comparison_table(c.runs_a, c.runs_b, c.a.label, c.b.label), ""]
    return "\n".join(lines)


def compare_main(rev: str, pairs: int, preset: str | None, overrides: Sequence[str], b_overrides: Sequence[str],
                 out: Path | None, warmup: bool = True, a_overrides: Sequence[str] = ()) -> str:
    """The --compare mode of scripts/benchmark.py: returns (and writes to `out`) the markdown report."""
    if preset is not None and preset not in PRESETS:
        raise UsageError(f"--preset {preset!r}; allowed: {sorted(PRESETS)}")
    extra = list(overrides)
    common = merge_overrides(COMMON, PRESETS[preset] if preset else [], extra)
    ov, ov_b = merge_overrides(common, a_overrides), merge_overrides(common, b_overrides)

    with tempfile.TemporaryDirectory(prefix="commformer-bench-runs-") as tmp:
        local = Path(rev)
        if local.is_dir() and (local / "scripts" / "train.py").is_file():  # another checkout on disk
            b_root, b_label, wt = local.resolve(), describe_checkout(local.resolve()), None
        else:
            wt = Worktree(rev)
            b_root, b_label = None, wt.sha[:7]
        a = Side(f"this checkout ({describe_checkout(ROOT)})", ROOT, ov)
        if wt is None:
            c = interleaved(a, Side(b_label, b_root, ov_b), pairs, Path(tmp), warmup, say)
        else:
            with wt as path:
                c = interleaved(a, Side(b_label, path, ov_b), pairs, Path(tmp), warmup, say)
    text = report(c, preset, extra)
    if out is not None:
        out.parent.mkdir(parents=True, exist_ok=True)
        out.write_text(text)
    return text
