"""Checkpoint re-evaluation (`scripts/evaluate.py`): the field's "absolute" protocol (docs/studies.md, "Evaluation
protocol": 10x the training evaluation's episodes, argmax actions, a fresh seed). Per-episode returns and steps are
summarised by their mean and IQM, each with a 95% percentile bootstrap interval over episodes; a 0/1 outcome (success,
won) by its rate with a 95% Wilson score interval (an IQM of 0/1 outcomes is 0 or 1 and says nothing; the same
section).

Tables and files are the product of this command and go to stdout / --out; diagnostics go through logging.
"""
from __future__ import annotations

import argparse
import csv
import json
import logging
import sys
from pathlib import Path
from typing import Any, Iterable, Mapping, Sequence

import numpy as np
import torch

from commformer.analysis import stats
from commformer.analysis.tables import BOOT_SEED, CONFIDENCE, N_BOOT, fmt, fmt_ci
from commformer.cli_args import OneLineParser, int_in, positive_int
from commformer.config import SEED_MAX
from commformer.errors import UsageError, guarded
from commformer.log_setup import script_logging
from commformer.analysis.loaded_run import (EVALUATE_SEED_OFFSET, LoadedRun, build_eval_policy, default_seed,
                                            load_run, resolve_choices)
from commformer.training.graph_history import choice_name
from envs.registry import family_note

log = logging.getLogger("commformer")

# the field's "absolute" score uses this many times the training evaluation's episodes (docs/studies.md,
# "Evaluation protocol")
ABSOLUTE_FACTOR = 10
# at most this many env copies at once (evaluate() runs one episode per copy)
MAX_CHUNK = 1000
# default seed = the run's seed + this; training evaluates at seed + EVAL_SEED_OFFSET (1,000,000)
GRAPH_OPTIONS = ("auto", "deterministic", "sample", "full")
GATE_OPTIONS = ("auto", "threshold", "open", "sample")


# most episodes of one evaluate.py run (chunk i of MAX_CHUNK copies gets seed + i: the chunk index stays < 10,000;
# docs/tools.md, "Allowed values and what the errors say")
MAX_EPISODES = 10_000_000


def evaluate_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        description="Re-evaluate checkpoints with argmax actions (the 'absolute' score: 10x the training "
                    "evaluation's episodes on a fresh seed) and print, per checkpoint, markdown tables: mean return "
                    "and steps with their IQM and 95% bootstrap intervals over episodes, and the success/won rate "
                    "with its 95% Wilson interval.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT_OR_RUN_DIR",
                   help="a checkpoint .pt file, or a run folder (its checkpoints/last.pt is used)")
    p.add_argument("--episodes", type=int_in(1, MAX_EPISODES), default=None,
                   help=f"episodes per checkpoint, at most {MAX_EPISODES:,} (default: {ABSOLUTE_FACTOR}x the run's "
                        "evaluation episodes)")
    p.add_argument("--seed", type=int_in(0, SEED_MAX, " (room for the seeds derived from it)"), default=None,
                   help=f"env seed of the first {MAX_CHUNK} episodes; chunk i uses seed + i (0 to {SEED_MAX:,}; "
                        f"default: the run's seed + {EVALUATE_SEED_OFFSET:,}, never the seed training evaluated on)")
    p.add_argument("--device", default="cpu", help="torch device: cpu, cuda, cuda:<index> (default: cpu)")
    p.add_argument("--graph", choices=GRAPH_OPTIONS, default="auto",
                   help="communication graph: deterministic (top-k of alpha), sample (Gumbel top-k), full; auto "
                        "(default): what training's evaluation used at the checkpoint (full during warmup, "
                        "else deterministic)")
    p.add_argument("--gate", choices=GATE_OPTIONS, default="auto",
                   help="temporal gate (gated runs only): threshold (p > 0.5), open, sample; auto (default): open "
                        "during warmup, else threshold")
    p.add_argument("--n-boot", type=positive_int, default=N_BOOT, help=f"bootstrap resamples (default {N_BOOT})")
    p.add_argument("--video", default=None, metavar="FILE.gif|FILE.mp4",
                   help="also render evaluation episodes of the (single) checkpoint: the state, the communication "
                        "edges (sender -> receiver) and closed gates at every step (Predator-Prey family, MPE, SMAX; "
                        "needs the [plot] extra; .mp4 also imageio-ffmpeg)")
    p.add_argument("--video-episodes", type=positive_int, default=3,
                   help="episodes in the video, played one after another from --seed (default 3)")
    p.add_argument("--out", default=None, metavar="FILE.json|FILE.csv",
                   help="also write the results (JSON keeps the per-episode values; CSV one row per metric)")
    return p


def chunk_sizes(episodes: int, max_chunk: int = MAX_CHUNK) -> list[int]:
    """Env-copy counts of the evaluation chunks: full chunks of max_chunk, then the rest (2500 -> 1000, 1000, 500)."""
    if episodes < 1 or max_chunk < 1:
        raise ValueError(f"episodes={episodes}, max_chunk={max_chunk}; both must be >= 1")
    full, rest = divmod(episodes, max_chunk)
    return [max_chunk] * full + ([rest] if rest else [])


def default_episodes(cfg) -> int:
    return ABSOLUTE_FACTOR * cfg.eval_episode_count


def parse_device(text: str) -> torch.device:
    try:
        device = torch.device(text)
    except RuntimeError:
        raise UsageError(f"--device={text!r}; allowed: cpu, cuda, cuda:<index>") from None
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UsageError(f"--device={text!r}: CUDA is not available here; allowed: cpu")
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


def episode_metric_name(key: str) -> str:
    """Episode key -> table name (the env's 'length' is reported as 'steps', as in training's eval/steps)."""
    return "steps" if key == "length" else key


def order_metrics(names: Iterable[str]) -> list[str]:
    """return first, steps last, task metrics (success, won, ...) between them in name order."""
    names = list(names)
    middle = sorted(n for n in names if n not in ("return", "steps"))
    return [n for n in ("return",) if n in names] + middle + [n for n in ("steps",) if n in names]


def is_rate(name: str, values: np.ndarray) -> bool:
    """A per-episode task metric whose every value is 0 or 1 (success, won); never return or steps."""
    return name not in ("return", "steps") and bool(np.isin(values, (0.0, 1.0)).all())


def summarize_episodes(name: str, values: np.ndarray, n_boot: int = N_BOOT) -> dict[str, Any]:
    """A rate (is_rate): {n, successes, mean (the rate), mean_ci (95% Wilson interval), interval: 'wilson'}; else
    stats.summarize's {n, mean, mean_ci, iqm, iqm_ci} (percentile bootstrap over episodes), interval: 'bootstrap'."""
    if is_rate(name, values):
        k, n = int(values.sum()), int(values.size)
        return {"n": n, "successes": k, "mean": k / n, "mean_ci": list(stats.wilson_interval(k, n, CONFIDENCE)),
                "interval": "wilson"}
    return {**stats.summarize(values, n_boot, CONFIDENCE, BOOT_SEED), "interval": "bootstrap"}


def evaluate_run(run: LoadedRun, episodes: int | None, seed: int | None, device: torch.device, graph: str,
                 gate: str, n_boot: int = N_BOOT, max_chunk: int | None = None) -> dict[str, Any]:
    """Evaluate one checkpoint; returns the result record (see write_results for its fields).

    Chunk i of chunk_sizes(episodes) runs on an env of that many copies reset with seed + i. Global torch RNG is
    seeded with the chunk's seed too (only --graph sample / --gate sample draw from it)."""
    from commformer.training.evaluation import EVAL_SEED_OFFSET, evaluate
    from envs.registry import make_env

    cfg = run.cfg
    torch.set_num_threads(cfg.torch_threads)
    episodes = episodes or default_episodes(cfg)
    seed = default_seed(cfg.seed) if seed is None else seed
    if seed == cfg.seed + EVAL_SEED_OFFSET:
        log.warning("--seed=%d is the seed training evaluated on: these are its evaluation episodes again, "
                    "not fresh ones", seed)
    sizes = chunk_sizes(episodes, max_chunk or MAX_CHUNK)
    envs: dict[int, EpisodeRecorder] = {}
    how = None
    values: dict[str, list[np.ndarray]] = {}
    messages = weight = 0.0
    try:
        for i, size in enumerate(sizes):
            if size not in envs:
                envs[size] = EpisodeRecorder(make_env(cfg.env, size, device))
            env = envs[size]
            if how is None:
                policy = build_eval_policy(run, env.spec, device)
                how = resolve_choices(policy, graph, gate, cfg, run.iteration)
            log.info("%s: chunk %d/%d, %d episodes, seed %d", run.path, i + 1, len(sizes), size, seed + i)
            torch.manual_seed(seed + i)
            out = evaluate(policy, env, seed + i, device, how)
            for key, v in env.episodes.items():
                values.setdefault(episode_metric_name(key), []).append(v)
            lengths = float(env.episodes["length"].sum())
            messages += out["comm/eval_messages_per_step"] * lengths
            weight += lengths
    finally:
        for env in envs.values():
            env.close()
    per_episode = {k: np.concatenate(v) for k, v in values.items()}
    metrics = {k: summarize_episodes(k, per_episode[k], n_boot) for k in order_metrics(per_episode)}
    return {
        "checkpoint": str(run.path), "env": cfg.env["name"], "family": cfg.env["family"], "algo": cfg.algo.name,
        "train_seed": cfg.seed, "iteration": run.iteration, "env_steps": run.env_steps,
        "eval_seed": seed, "episodes": episodes, "chunks": sizes, "graph": choice_name(how),
        "gate": str(getattr(getattr(how, "gate", "none"), "value", "none")), "gated": bool(getattr(cfg.algo, "gate", False)),
        "messages_per_step": messages / max(weight, 1.0), "n_boot": n_boot, "confidence": CONFIDENCE,
        "metrics": metrics, "per_episode": {k: per_episode[k].tolist() for k in metrics},
    }


def evaluation_markdown(result: Mapping[str, Any]) -> str:
    """One checkpoint's heading, settings line, the table of continuous metrics (metric | mean | 95% CI | IQM |
    95% CI) and the table of rates (metric | episodes | successes | rate | 95% Wilson CI)."""
    gate = f", gate {result['gate']}" if result.get("gated") else ""
    lines = [
        f"### {result['checkpoint']}",
        "",
        f"env {result['env']} ({result['family']}), algo {result['algo']}, training seed {result['train_seed']}, "
        f"iteration {result['iteration']}, env steps {result['env_steps']}: {result['episodes']} episodes from "
        f"seed {result['eval_seed']}, argmax actions, graph {result['graph']}{gate}, "
        f"{fmt(result['messages_per_step'])} messages per step.",
        "",
        "| metric | mean | 95% CI (mean) | IQM | 95% CI (IQM) |",
        "|---|---|---|---|---|",
    ]
    rates = {name: s for name, s in result["metrics"].items() if s.get("interval") == "wilson"}
    for name, s in result["metrics"].items():
        if name not in rates:
            lines.append(f"| {name} | {fmt(s['mean'])} | {fmt_ci(s['mean_ci'])} | {fmt(s['iqm'])} | "
                         f"{fmt_ci(s['iqm_ci'])} |")
    if rates:
        lines += ["", "| metric | episodes | successes | rate | 95% CI (Wilson) |", "|---|---|---|---|---|"]
        lines += [f"| {name} | {s['n']} | {s['successes']} | {fmt(s['mean'])} | {fmt_ci(s['mean_ci'])} |"
                  for name, s in rates.items()]
    note = family_note(result["family"])
    if note:
        lines += ["", f"Note: {note}."]
    return "\n".join(lines) + "\n"


EVAL_CSV_FIELDS = ("checkpoint", "env", "family", "algo", "train_seed", "iteration", "env_steps", "eval_seed",
                   "episodes", "graph", "gate", "metric", "mean", "mean_low", "mean_high", "iqm", "iqm_low",
                   "iqm_high", "interval")


def evaluation_csv_rows(results: Sequence[Mapping[str, Any]]) -> list[dict[str, Any]]:
    """One row per (checkpoint, metric) with the fields of EVAL_CSV_FIELDS; a rate's mean_low / mean_high are its
    Wilson interval and its iqm fields are empty (interval: wilson or bootstrap)."""
    rows = []
    for r in results:
        for name, s in r["metrics"].items():
            row = {k: r[k] for k in EVAL_CSV_FIELDS[:11]}
            row.update(metric=name, mean=s["mean"], mean_low=s["mean_ci"][0], mean_high=s["mean_ci"][1],
                       iqm=s.get("iqm", ""), iqm_low=s.get("iqm_ci", ("", ""))[0],
                       iqm_high=s.get("iqm_ci", ("", ""))[1], interval=s.get("interval", "bootstrap"))
            rows.append(row)
    return rows


def output_format(out: str) -> str:
    suffix = Path(out).suffix.lower()
    if suffix not in (".json", ".csv"):
        raise UsageError(f"--out={out!r}; must end in .json or .csv")
    return suffix[1:]


def write_results(results: Sequence[Mapping[str, Any]], out: str | Path) -> Path:
    """JSON: {"results": [record, ...]}, each record with checkpoint, env, family, algo, train_seed, iteration,
    env_steps, eval_seed, episodes, chunks, graph, gate, gated, messages_per_step, n_boot, confidence, metrics
    ({name: summarize_episodes(...)}) and per_episode ({name: [episodes values]}). CSV: evaluation_csv_rows."""
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
    if args.video is not None:
        from commformer.analysis.video import require_imageio, video_format

        video_format(args.video)
        require_imageio()
        if len(args.checkpoints) != 1:
            raise UsageError(f"--video takes one checkpoint; got {len(args.checkpoints)}")
    runs = [load_run(c) for c in args.checkpoints]  # every file is checked before any evaluation starts
    if args.video is not None:
        from commformer.analysis.video import video_main

        video_main(runs[0], args.video, device, args.graph, args.gate, args.seed, args.video_episodes)
    results = []
    for run in runs:
        result = evaluate_run(run, args.episodes, args.seed, device, args.graph, args.gate, args.n_boot)
        sys.stdout.write(evaluation_markdown(result) + "\n")
        sys.stdout.flush()
        results.append(result)
    if args.out is not None:
        log.info("wrote %s", write_results(results, args.out))
    return results


def evaluate_main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    """`scripts/evaluate.py CHECKPOINT_OR_RUN_DIR [...] [options]`; returns the result records."""
    args = guarded(lambda: evaluate_parser().parse_args(argv))
    script_logging()
    return guarded(lambda: _evaluate(args))  # type: ignore[return-value]

