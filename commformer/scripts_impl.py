"""The logic of scripts/evaluate.py and scripts/report.py: checkpoints and run folders -> tables with intervals.

evaluate_main: re-evaluate checkpoints with the field's "absolute" protocol (REFERENCE.md 7: 10x the training
evaluation's episodes, argmax actions, a fresh seed) and summarise every per-episode metric by its mean and IQM, each
with a 95% percentile bootstrap interval over episodes.
report_main: collect run folders, take each run's final evaluation and summarise every (env, algo) group by the IQM
over runs with a 95% stratified bootstrap interval (>= 5 seeds, 10 preferred; fewer are flagged).

Tables and files are the product of these commands and go to stdout / --out; diagnostics go through logging.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import math
import sys
from collections import Counter
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch
import yaml

from commformer import stats
from commformer.checkpoint import CheckpointError, load_checkpoint
from commformer.cli import guarded

log = logging.getLogger("commformer")

# evaluate: the field's "absolute" score uses this many times the training evaluation's episodes (REFERENCE.md 7)
ABSOLUTE_FACTOR = 10
# evaluate: at most this many env copies at once (evaluate() runs one episode per copy)
MAX_CHUNK = 1000
# evaluate: default seed = the run's seed + this; training evaluates at seed + EVAL_SEED_OFFSET (1,000,000)
EVALUATE_SEED_OFFSET = 2_000_000
# bootstrap resamples and the bootstrap's own seed (fixed, so a table is reproducible)
N_BOOT = 2000
BOOT_SEED = 0
CONFIDENCE = 0.95
# report: groups with fewer runs than this are flagged (REFERENCE.md 7: >= 5 seeds, 10 preferred)
MIN_SEEDS = 5
# report: the default metric is the first of these that a group's runs log
METRIC_PREFERENCE = ("eval/success", "eval/won", "eval/return")
# env families whose numbers must never be read as SMAC numbers (REFERENCE.md 6)
NOT_SMAC_FAMILIES = {"smax": "SMAX numbers are not comparable to SMAC"}
# config keys that may differ between the seeds of one group without making them different experiments
RUN_ONLY_KEYS = ("seed", "run_dir", "resume", "device", "torch_threads", "eval_every", "checkpoint_every", "logger")
GRAPH_OPTIONS = ("auto", "deterministic", "sample", "full")
GATE_OPTIONS = ("auto", "threshold", "open", "sample")


def _fmt(x: float) -> str:
    return f"{x:.4g}"


def _fmt_ci(ci: Sequence[float]) -> str:
    return f"[{_fmt(ci[0])}, {_fmt(ci[1])}]"


def _positive_int(text: str) -> int:
    try:
        value = int(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not an integer") from None
    if value < 1:
        raise argparse.ArgumentTypeError(f"{value}; must be >= 1")
    return value


def _write_text(path: Path, text: str) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(text)


# ======================================================================================================================
# evaluate
# ======================================================================================================================

def evaluate_parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        description="Re-evaluate checkpoints with argmax actions (the 'absolute' score: 10x the training "
                    "evaluation's episodes on a fresh seed) and print, per checkpoint, a markdown table of mean "
                    "return, success/won rate and steps, each with its IQM and 95% bootstrap intervals over "
                    "episodes.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT_OR_RUN_DIR",
                   help="a checkpoint .pt file, or a run folder (its checkpoints/last.pt is used)")
    p.add_argument("--episodes", type=_positive_int, default=None,
                   help=f"episodes per checkpoint (default: {ABSOLUTE_FACTOR}x the run's evaluation episodes)")
    p.add_argument("--seed", type=int, default=None,
                   help=f"env seed of the first {MAX_CHUNK} episodes; chunk i uses seed + i (default: the run's "
                        f"seed + {EVALUATE_SEED_OFFSET:,}, never the seed training evaluated on)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:<index> (default: cpu)")
    p.add_argument("--graph", choices=GRAPH_OPTIONS, default="auto",
                   help="communication graph: deterministic (top-k of alpha), sample (Gumbel top-k), full; auto "
                        "(default): what training's evaluation used at the checkpoint (full during warmup, "
                        "else deterministic)")
    p.add_argument("--gate", choices=GATE_OPTIONS, default="auto",
                   help="temporal gate (gated runs only): threshold (p > 0.5), open, sample; auto (default): open "
                        "during warmup, else threshold")
    p.add_argument("--n-boot", type=_positive_int, default=N_BOOT, help=f"bootstrap resamples (default {N_BOOT})")
    p.add_argument("--out", default=None, metavar="FILE.json|FILE.csv",
                   help="also write the results (JSON keeps the per-episode values; CSV one row per metric)")
    return p


def chunk_sizes(episodes: int, max_chunk: int = MAX_CHUNK) -> list[int]:
    """Env-copy counts of the evaluation chunks: full chunks of max_chunk, then the rest (2500 -> 1000, 1000, 500)."""
    if episodes < 1 or max_chunk < 1:
        raise ValueError(f"episodes={episodes}, max_chunk={max_chunk}; both must be >= 1")
    full, rest = divmod(episodes, max_chunk)
    return [max_chunk] * full + ([rest] if rest else [])


def training_eval_episodes(cfg) -> int:
    """Episodes of the run's own evaluations (as the trainer picks them: eval_episodes, else the env's)."""
    return int(cfg.eval_episodes or cfg.env.get("eval_episodes", 32))


def default_episodes(cfg) -> int:
    return ABSOLUTE_FACTOR * training_eval_episodes(cfg)


def default_seed(train_seed: int) -> int:
    return train_seed + EVALUATE_SEED_OFFSET


def resolve_choices(graph: str, gate: str, cfg, iteration: int) -> tuple[str, str]:
    """(graph_how, gate_how) for policy.Agent.act; 'auto' follows the trainer's evaluation at `iteration`."""
    from commformer.bilevel import phase

    warmup = phase(max(iteration - 1, 0), cfg.iterations, cfg.algo) == "warmup"
    graph_how = ("full" if warmup else "deterministic") if graph == "auto" else graph
    gate_how = ("open" if warmup else "threshold") if gate == "auto" else gate
    return graph_how, gate_how


def checkpoint_file(arg: str | Path) -> Path:
    """The checkpoint a command-line argument names: the file itself, or a run folder's checkpoints/last.pt."""
    path = Path(arg)
    if path.is_file():
        return path
    for candidate in (path / "checkpoints" / "last.pt", path / "last.pt"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"checkpoint {str(arg)!r}: no such file, nor a run folder with checkpoints/last.pt "
                          "(give a .pt file or a run folder)")


def parse_device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise ValueError(f"--device={text!r}; allowed: cpu, cuda, cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise ValueError(f"--device={text!r}: CUDA is not available here; allowed: cpu")
    return device


class EpisodeRecorder:
    """A VecEnv that forwards to `env` and keeps every env copy's first finished episode (evaluate() itself only
    returns means). After an evaluation, `episodes` maps each episode key (return, length, task metrics) to a
    [B] float64 numpy array."""

    def __init__(self, env) -> None:
        self.env = env
        self.num_envs, self.device, self.spec = env.num_envs, env.device, env.spec
        self.episodes: dict[str, np.ndarray] = {}
        self._got = torch.zeros(env.num_envs, dtype=torch.bool)

    def reset(self, seed: int | None = None):
        self.episodes, self._got = {}, torch.zeros(self.num_envs, dtype=torch.bool)
        return self.env.reset(seed=seed)

    def step(self, actions: torch.Tensor):
        step = self.env.step(actions)
        new = ((step.terminated | step.truncated).cpu() & ~self._got).numpy()
        if new.any():
            for key, value in step.episode.items():
                store = self.episodes.setdefault(key, np.full(self.num_envs, np.nan))
                store[new] = value.detach().double().cpu().numpy()[new]
            self._got |= torch.from_numpy(new)
        return step

    def close(self) -> None:
        close = getattr(self.env, "close", None)
        if close is not None:
            close()


@dataclass
class LoadedRun:
    """A checkpoint rebuilt for evaluation."""

    path: Path
    cfg: Any  # commformer.config.Config
    state: dict[str, Any]

    @property
    def iteration(self) -> int:
        return int(self.state.get("iteration", 0))

    @property
    def env_steps(self) -> int:
        return int(self.state.get("env_steps", 0))


def load_run(arg: str | Path) -> LoadedRun:
    """Load a checkpoint and parse its config; CheckpointError (one line) when either is unusable."""
    from commformer.config import from_yaml

    path = checkpoint_file(arg)
    state = load_checkpoint(path, map_location="cpu")
    for key in ("config", "model", "graph"):
        if key not in state:
            raise CheckpointError(f"checkpoint {str(path)!r} has no {key!r} entry; expected a file written by "
                                  "commformer's trainer")
    try:
        cfg = from_yaml(state["config"])
    except (ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} holds no valid config ({first})") from None
    return LoadedRun(path, cfg, state)


def build_eval_agent(run: LoadedRun, spec, device: torch.device):
    """The run's agent with the checkpoint's weights, in eval mode."""
    from commformer.trainer import build_agent

    agent = build_agent(run.cfg, spec.n_agents, spec.obs_dim, spec.n_actions, device)
    try:
        agent.model.load_state_dict(run.state["model"])
        agent.graph.load_state_dict(run.state["graph"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).splitlines()[0][:200]
        raise CheckpointError(f"checkpoint {str(run.path)!r} does not match the model of its own config "
                              f"({first})") from None
    return agent.eval()


def episode_metric_name(key: str) -> str:
    """Episode key -> table name (the env's 'length' is reported as 'steps', as in training's eval/steps)."""
    return "steps" if key == "length" else key


def order_metrics(names: Iterable[str]) -> list[str]:
    """return first, steps last, task metrics (success, won, ...) between them in name order."""
    names = list(names)
    middle = sorted(n for n in names if n not in ("return", "steps"))
    return [n for n in ("return",) if n in names] + middle + [n for n in ("steps",) if n in names]


def evaluate_run(run: LoadedRun, episodes: int | None, seed: int | None, device: torch.device, graph: str,
                 gate: str, n_boot: int = N_BOOT, max_chunk: int | None = None) -> dict[str, Any]:
    """Evaluate one checkpoint; returns the result record (see write_results for its fields).

    Chunk i of chunk_sizes(episodes) runs on an env of that many copies reset with seed + i. Global torch RNG is
    seeded with the chunk's seed too (only --graph sample / --gate sample draw from it)."""
    from commformer.evaluation import EVAL_SEED_OFFSET, evaluate
    from envs.registry import make_env

    cfg = run.cfg
    torch.set_num_threads(cfg.torch_threads)
    episodes = episodes or default_episodes(cfg)
    seed = default_seed(cfg.seed) if seed is None else seed
    if seed == cfg.seed + EVAL_SEED_OFFSET:
        log.warning("--seed=%d is the seed training evaluated on: these are its evaluation episodes again, "
                    "not fresh ones", seed)
    graph_how, gate_how = resolve_choices(graph, gate, cfg, run.iteration)
    sizes = chunk_sizes(episodes, max_chunk or MAX_CHUNK)
    envs: dict[int, EpisodeRecorder] = {}
    agent = None
    values: dict[str, list[np.ndarray]] = {}
    messages = weight = 0.0
    try:
        for i, size in enumerate(sizes):
            if size not in envs:
                envs[size] = EpisodeRecorder(make_env(cfg.env, size, device))
            env = envs[size]
            if agent is None:
                agent = build_eval_agent(run, env.spec, device)
            log.info("%s: chunk %d/%d, %d episodes, seed %d", run.path, i + 1, len(sizes), size, seed + i)
            torch.manual_seed(seed + i)
            out = evaluate(agent, env, seed + i, device, graph_how, gate_how)
            for key, v in env.episodes.items():
                values.setdefault(episode_metric_name(key), []).append(v)
            lengths = float(env.episodes["length"].sum())
            messages += out["comm/eval_messages_per_step"] * lengths
            weight += lengths
    finally:
        for env in envs.values():
            env.close()
    per_episode = {k: np.concatenate(v) for k, v in values.items()}
    metrics = {k: stats.summarize(per_episode[k], n_boot, CONFIDENCE, BOOT_SEED) for k in order_metrics(per_episode)}
    return {
        "checkpoint": str(run.path), "env": cfg.env["name"], "family": cfg.env["family"], "algo": cfg.algo.name,
        "train_seed": cfg.seed, "iteration": run.iteration, "env_steps": run.env_steps,
        "eval_seed": seed, "episodes": episodes, "chunks": sizes, "graph": graph_how, "gate": gate_how,
        "gated": bool(cfg.algo.gate),
        "messages_per_step": messages / max(weight, 1.0), "n_boot": n_boot, "confidence": CONFIDENCE,
        "metrics": metrics, "per_episode": {k: per_episode[k].tolist() for k in metrics},
    }


def evaluation_markdown(result: Mapping[str, Any]) -> str:
    """One checkpoint's heading, settings line and table (metric | mean | 95% CI | IQM | 95% CI)."""
    gate = f", gate {result['gate']}" if result.get("gated") else ""
    lines = [
        f"### {result['checkpoint']}",
        "",
        f"env {result['env']} ({result['family']}), algo {result['algo']}, training seed {result['train_seed']}, "
        f"iteration {result['iteration']}, env steps {result['env_steps']}: {result['episodes']} episodes from "
        f"seed {result['eval_seed']}, argmax actions, graph {result['graph']}{gate}, "
        f"{_fmt(result['messages_per_step'])} messages per step.",
        "",
        "| metric | mean | 95% CI (mean) | IQM | 95% CI (IQM) |",
        "|---|---|---|---|---|",
    ]
    for name, s in result["metrics"].items():
        lines.append(f"| {name} | {_fmt(s['mean'])} | {_fmt_ci(s['mean_ci'])} | {_fmt(s['iqm'])} | "
                     f"{_fmt_ci(s['iqm_ci'])} |")
    note = NOT_SMAC_FAMILIES.get(result["family"])
    if note:
        lines += ["", f"Note: {note}."]
    return "\n".join(lines) + "\n"


EVAL_CSV_FIELDS = ("checkpoint", "env", "family", "algo", "train_seed", "iteration", "env_steps", "eval_seed",
                   "episodes", "graph", "gate", "metric", "mean", "mean_low", "mean_high", "iqm", "iqm_low",
                   "iqm_high")


def evaluation_csv_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (checkpoint, metric) with the fields of EVAL_CSV_FIELDS."""
    rows = []
    for r in results:
        for name, s in r["metrics"].items():
            row = {k: r[k] for k in EVAL_CSV_FIELDS[:11]}
            row.update(metric=name, mean=s["mean"], mean_low=s["mean_ci"][0], mean_high=s["mean_ci"][1],
                       iqm=s["iqm"], iqm_low=s["iqm_ci"][0], iqm_high=s["iqm_ci"][1])
            rows.append(row)
    return rows


def output_format(out: str) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in (".json", ".csv"):
        raise ValueError(f"--out={out!r}; must end in .json or .csv")
    return suffix[1:]


def write_results(results: Sequence[Mapping[str, Any]], out: str | Path) -> Path:
    """JSON: {"results": [record, ...]}, each record with checkpoint, env, family, algo, train_seed, iteration,
    env_steps, eval_seed, episodes, chunks, graph, gate, gated, messages_per_step, n_boot, confidence, metrics
    ({name: {n, mean, mean_ci, iqm, iqm_ci}}) and per_episode ({name: [episodes values]}). CSV: evaluation_csv_rows."""
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    if output_format(str(out)) == "json":
        path.write_text(json.dumps({"results": list(results)}, indent=1) + "\n")
    else:
        with path.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=EVAL_CSV_FIELDS)
            w.writeheader()
            w.writerows(evaluation_csv_rows(results))
    return path


def _evaluate(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.out is not None:
        output_format(args.out)
    device = parse_device(args.device)
    runs = [load_run(c) for c in args.checkpoints]  # every file is checked before any evaluation starts
    results = []
    for run in runs:
        result = evaluate_run(run, args.episodes, args.seed, device, args.graph, args.gate, args.n_boot)
        sys.stdout.write(evaluation_markdown(result) + "\n")
        sys.stdout.flush()
        results.append(result)
    if args.out is not None:
        log.info("wrote %s", write_results(results, args.out))
    return results


def _setup_logging() -> None:
    logging.basicConfig(level=logging.WARNING, format="%(levelname)s: %(message)s", stream=sys.stderr)
    log.setLevel(logging.INFO)


def evaluate_main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`scripts/evaluate.py CHECKPOINT_OR_RUN_DIR [...] [options]`; returns the result records."""
    args = evaluate_parser().parse_args(argv)
    _setup_logging()
    return guarded(lambda: _evaluate(args))  # type: ignore[return-value]


# ======================================================================================================================
# report
# ======================================================================================================================

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

    def logged(self, metric: str) -> bool:
        return any(_number(r.get(metric)) is not None for r in self.rows)


def _number(text: Any) -> float | None:
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
        if not root.is_dir():
            raise FileNotFoundError(f"run folder {str(root)!r} does not exist (give a run folder or a folder of runs)")
        for csv_path in [root / "metrics.csv", *root.rglob("metrics.csv")]:
            if csv_path.is_file() and (csv_path.parent / "config.yaml").is_file():
                found.add(csv_path.parent.resolve())
    return sorted(found)


def read_run(path: Path) -> Run | None:
    """Parse a run folder; None (with a warning) when its config lacks env.name, env.family or algo.name."""
    try:
        config = yaml.safe_load((path / "config.yaml").read_text()) or {}
    except yaml.YAMLError as e:
        log.warning("%s: config.yaml is not valid YAML (%s); skipped", path, str(e).splitlines()[0])
        return None
    env, algo = config.get("env") or {}, config.get("algo") or {}
    if not isinstance(env, Mapping) or not isinstance(algo, Mapping) or not all(
            (env.get("name"), env.get("family"), algo.get("name"))):
        log.warning("%s: config.yaml lacks env.name, env.family or algo.name; skipped", path)
        return None
    with (path / "metrics.csv").open(newline="") as f:
        rows = list(csv.DictReader(f))
    return Run(path, str(env["name"]), str(env["family"]), str(algo["name"]), config.get("seed"),
               flatten(config), rows)


def pick_metric(runs: Sequence[Run], requested: str | None) -> str | None:
    """The requested metric, else the first of METRIC_PREFERENCE that any of the runs logs (None if none does)."""
    if requested is not None:
        return requested
    for metric in METRIC_PREFERENCE:
        if any(r.logged(metric) for r in runs):
            return metric
    return None


def final_value(rows: Sequence[Mapping[str, str]], metric: str) -> tuple[float, int] | None:
    """(value, env_steps) of the last row that has the metric; None when no row has it."""
    for row in reversed(rows):
        value = _number(row.get(metric))
        if value is not None:
            steps = _number(row.get("env_steps"))
            return value, int(steps) if steps is not None else -1
    return None


def curve(rows: Sequence[Mapping[str, str]], metric: str) -> list[tuple[int, float]]:
    """[(env_steps, value)] of every row that has the metric (the run's evaluations)."""
    out = []
    for row in rows:
        value, steps = _number(row.get(metric)), _number(row.get("env_steps"))
        if value is not None and steps is not None:
            out.append((int(steps), value))
    return out


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
                    n_boot: int = N_BOOT) -> dict[str, Any] | None:
    """The report row of one (env, algo) group; None when none of its runs logs the metric."""
    metric = pick_metric(runs, requested)
    if metric is None:
        log.warning("%s / %s: no run logs any of %s; skipped", key[0], key[1], ", ".join(METRIC_PREFERENCE))
        return None
    finals = [(r, final_value(r.rows, metric)) for r in runs]
    used = [(r, f) for r, f in finals if f is not None]
    if not used:
        log.warning("%s / %s: no run logs %s; skipped", key[0], key[1], metric)
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
    family_note = NOT_SMAC_FAMILIES.get(used[0][0].family)
    if family_note:
        notes.append(family_note)
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
        families = sorted({NOT_SMAC_FAMILIES[r["family"]] for r in group if r["family"] in NOT_SMAC_FAMILIES})
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
        lines.append(f"| {r['env']} | {r['algo']} | {r['metric']} | {r['seeds']} | {_fmt(r['iqm'])} | "
                     f"{_fmt_ci(r['iqm_ci'])} | {_fmt(r['mean'])} | {r['env_steps']} | {'; '.join(r['notes'])} |")
    lines += ["", f"Each run's final evaluation; IQM over runs (drop floor(n/4) at each end) with a "
                  f"{CONFIDENCE:.0%} percentile bootstrap interval over runs ({n_boot} resamples, seed {BOOT_SEED}). "
                  f"The field's protocol asks for >= {MIN_SEEDS} seeds, 10 preferred."]
    return "\n".join(lines) + "\n"


def require_matplotlib():
    """The matplotlib module, or an ImportError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise ImportError("--plot needs matplotlib: pip install -e '.[plot]' (or pip install matplotlib)") from None
    return matplotlib


def plot_curves(groups: Mapping[tuple[str, str], Sequence[Run]], rows: Sequence[Mapping[str, Any]], out: str | Path,
                n_boot: int = N_BOOT) -> Path:
    """Learning curves: one panel per env, one line per algo: the IQM over runs of the reported metric at every
    env-step count where at least one run evaluated, shaded by its 95% bootstrap interval."""
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric_of = {(r["env"], r["algo"]): r["metric"] for r in rows}
    envs = sorted({env for env, _ in metric_of})
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for (g_env, algo), runs in groups.items():
            if g_env != env or (g_env, algo) not in metric_of:
                continue
            metric = metric_of[(g_env, algo)]
            by_step: dict[int, list[float]] = {}
            for run in runs:
                for step, value in curve(run.rows, metric):
                    by_step.setdefault(step, []).append(value)
            steps = sorted(by_step)
            centre = [stats.iqm(by_step[s]) for s in steps]
            bands = [stats.bootstrap_ci(by_step[s], stats.iqm, n_boot, CONFIDENCE, BOOT_SEED) for s in steps]
            (line,) = ax.plot(steps, centre, label=algo)
            ax.fill_between(steps, [b[0] for b in bands], [b[1] for b in bands], alpha=0.2, color=line.get_color())
        notes = sorted({NOT_SMAC_FAMILIES[r["family"]] for r in rows if r["env"] == env and
                        r["family"] in NOT_SMAC_FAMILIES})
        ax.set_title("\n".join([env] + notes), fontsize=10)
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"IQM {', '.join(sorted({m for (e, _), m in metric_of.items() if e == env}))}")
        ax.legend()
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


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
    p.add_argument("--n-boot", type=_positive_int, default=N_BOOT, help=f"bootstrap resamples (default {N_BOOT})")
    p.add_argument("--out", default=None, metavar="report.md", help="also write the table to this file")
    p.add_argument("--plot", default=None, metavar="curves.png", help="also plot learning curves (needs matplotlib)")
    return p


def _report(args: argparse.Namespace) -> list[dict[str, Any]]:
    if args.plot is not None:
        require_matplotlib()  # before any work
    dirs = find_run_dirs(args.roots)
    if not dirs:
        raise FileNotFoundError(f"no run folders (a folder with metrics.csv and config.yaml) under "
                                f"{', '.join(map(str, args.roots))}")
    runs = [r for r in (read_run(d) for d in dirs) if r is not None]
    groups = group_runs(runs)
    rows = [row for key, members in groups.items()
            if (row := summarise_group(key, members, args.metric, args.n_boot)) is not None]
    if not rows:
        wanted = args.metric or " / ".join(METRIC_PREFERENCE)
        raise ValueError(f"--metric={wanted!r}: no run among {len(runs)} logs it")
    table = rows + (aggregate_rows(rows, args.n_boot) if args.aggregate else [])
    text = report_markdown(table, args.n_boot)
    sys.stdout.write(text)
    sys.stdout.flush()
    if args.out is not None:
        _write_text(Path(args.out), text)
        log.info("wrote %s", args.out)
    if args.plot is not None:
        log.info("wrote %s", plot_curves(groups, rows, args.plot, args.n_boot))
    return table


def report_main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`scripts/report.py RUN_DIR_OR_PARENT [...] [options]`; returns the table rows."""
    args = report_parser().parse_args(argv)
    _setup_logging()
    return guarded(lambda: _report(args))  # type: ignore[return-value]
