"""How often a per-step hard graph (GA-Comm, MAGIC) would try each pair (`scripts/talk_probability.py`): during a
deterministic evaluation of a checkpoint, the probability that the training rollout's Gumbel draw keeps a pair,
softmax(l_ij)[talk], over every alive pair i != j of every step. The Gumbel-max draw keeps a pair with exactly this
probability (the temperature shapes the gradient only), so it is the rate at which training still tries a pair that
the argmax graph drops (docs/methods/gacomm.md, "Evaluation and the graph history")."""
from __future__ import annotations

import argparse
import sys
from dataclasses import dataclass, field
from typing import Any, Sequence

import torch
from torch import Tensor

from commformer.analysis.loaded_run import LoadedRun, build_eval_policy, default_seed, load_run, resolve_choices
from commformer.analysis.tables import md_table
from commformer.baselines.comm_ops import heard
from commformer.cli_args import OneLineParser, int_in
from commformer.errors import UsageError, guarded
from commformer.log_setup import script_logging


def talk_probability(logits: Tensor, alive: Tensor) -> Tensor:
    """logits [B,N,N,2] (silent, talk), alive [B,N] bool -> [P]: softmax(logits)[talk] of each alive pair i != j."""
    return torch.softmax(logits, dim=-1)[..., 1][heard(alive)]


@dataclass
class TalkRecord:
    """What record_talk collects: the talk probabilities of each call, and the live env-copy steps they cover."""

    values: list[Tensor] = field(default_factory=list)
    live_steps: int = 0


def record_talk(policy, env) -> TalkRecord:
    """Wrap the policy's draw_graph (GA-Comm's and MAGIC's hard graph) so each call records the talk_probability of
    the env copies still in their first episode (env.step is wrapped to see which have finished) and counts those
    copies; UsageError for a policy with no per-step hard graph."""
    draw = getattr(policy, "draw_graph", None)
    if draw is None:
        raise UsageError(f"{type(policy).__name__} draws no per-step hard graph; allowed: algo=gacomm, algo=magic")
    record = TalkRecord()
    finished = torch.zeros(env.num_envs, dtype=torch.bool)
    step = env.step

    def drawing(logits, alive, *args, **kwargs):
        record.values.append(talk_probability(logits.detach(), alive & ~finished[:, None].to(alive.device)))
        record.live_steps += int((~finished).sum())
        return draw(logits, alive, *args, **kwargs)

    def stepping(actions):
        out = step(actions)
        finished.logical_or_(out.done.cpu())
        return out

    policy.draw_graph, env.step = drawing, stepping
    return record


def run_talk_probability(run: LoadedRun, episodes: int, seed: int | None) -> dict[str, Any]:
    """One checkpoint: `episodes` deterministic evaluation episodes (one per env copy) -> the talk probability's mean,
    median and share above 0.5 / 0.01 over every alive pair and step, the expected pairs kept per step by a Gumbel
    draw per live step (the sum over pairs; alive pairs only), the argmax graph's messages per step and the episodes' success."""
    from commformer.training.evaluation import evaluate
    from envs.registry import make_env

    cfg, device = run.cfg, torch.device("cpu")
    torch.set_num_threads(cfg.torch_threads)
    seed = default_seed(cfg.seed) if seed is None else seed
    env = make_env(cfg.env, episodes, device)
    try:
        policy = build_eval_policy(run, env.spec, device)
        record = record_talk(policy, env)
        out = evaluate(policy, env, seed, device, resolve_choices(policy, "auto", "auto", cfg, run.iteration))
    finally:
        env.close()
    p = torch.cat(record.values).double()
    return {"run": str(run.path), "pairs": int(p.numel()), "mean": float(p.mean()), "median": float(p.median()),
            "above_half": float((p > 0.5).double().mean()), "above_0.01": float((p > 0.01).double().mean()),
            "expected_pairs": float(p.sum()) / max(record.live_steps, 1), "messages": out["comm/eval_messages_per_step"],
            "success": out.get("eval/success", float("nan"))}


def talk_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="talk_probability.py",
                      description="Per GA-Comm or MAGIC checkpoint: the probability that a training rollout's Gumbel "
                                  "draw keeps each pair, over a deterministic evaluation.")
    p.add_argument("checkpoints", nargs="+", metavar="CHECKPOINT_OR_RUN_DIR")
    p.add_argument("--episodes", type=int_in(1), default=50, help="evaluation episodes (default 50)")
    p.add_argument("--seed", type=int_in(0), default=None, help="episode seed (default: the evaluate.py default)")
    return p


def talk_main(argv: Sequence[str] | None = None) -> list[dict[str, Any]]:
    args = guarded(lambda: talk_parser().parse_args(argv))
    script_logging()

    def run() -> list[dict[str, Any]]:
        runs = [load_run(c) for c in args.checkpoints]  # every file is checked before any evaluation starts
        rows = [run_talk_probability(r, args.episodes, args.seed) for r in runs]
        head = ["checkpoint", "P(talk) mean", "median", "share > 0.5", "share > 0.01", "expected pairs/step",
                "argmax msgs/step", "success"]
        body = [[r["run"], f"{r['mean']:.4f}", f"{r['median']:.2e}", f"{r['above_half']:.4f}",
                 f"{r['above_0.01']:.3f}", f"{r['expected_pairs']:.2f}", f"{r['messages']:.2f}", f"{r['success']:.3f}"]
                for r in rows]
        sys.stdout.write(md_table(head, body) + "\n")
        return rows

    return guarded(run)  # type: ignore[return-value]
