"""Deterministic evaluation (docs/studies.md, "Evaluation protocol"): argmax actions and the policy's evaluation
choices (CommFormer: top-k(alpha) graph, gate open when p > 0.5), on an env reseeded with the same seed every time,
one episode per eval env. Optionally with sampled actions (eval_sampled: argmax can stall where sampled actions
win)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any

import torch

from commformer.protocol import Policy, state_kwarg
from envs.core import VecEnv

EVAL_SEED_OFFSET = 1_000_000


def episodes_per_env(episodes: int, num_envs: int) -> int:
    """m: each of the B eval envs runs its first m episodes, so B*m >= episodes (no bias to short episodes)."""
    return -(-episodes // num_envs)


@dataclass
class EvalDetails:
    """What one evaluation's agents did, beyond the metrics (the run's graph history records it).

    graph [N,N] bool (receiver i, sender j): the acting graph of the first step (CommFormer's evaluation graph is
    fixed: top-k(alpha), the full graph during warmup, or the fixed graph of modes full/none/random); None for a
    policy that reports no graph.
    gate_open [N] f32: per agent, the fraction of its live steps with the gate open (NaN for an agent never alive);
    None without a gate.
    graph_mean [N,N] f32: the acting graph averaged over the live steps of the evaluation's episodes (for a policy
    that draws a graph per step, e.g. MAGIC's scheduler, the mean differs from the first step's graph); None
    without a graph."""

    graph: torch.Tensor | None
    gate_open: torch.Tensor | None
    graph_mean: torch.Tensor | None = None


@torch.no_grad()
def evaluate(policy: Policy, env: VecEnv, seed: int, device: torch.device, how: Any, episodes: int | None = None,
             sample_actions: bool = False) -> dict[str, float]:
    """Run the first m = ceil(episodes / B) episodes of each of the env's B copies (episodes defaults to B);
    returns eval/return, eval/steps, eval/<task metric> (means over the B*m episodes), eval/episodes and
    comm/eval_messages_per_step. how: the policy's acting choices (Policy.acting). sample_actions: draw the actions
    from the policy (from a generator seeded with `seed`) instead of taking the argmax."""
    return evaluate_with_details(policy, env, seed, device, how, episodes, sample_actions)[0]


@torch.no_grad()
def evaluate_with_details(policy: Policy, env: VecEnv, seed: int, device: torch.device, how: Any,
                          episodes: int | None = None,
                          sample_actions: bool = False) -> tuple[dict[str, float], EvalDetails]:
    """evaluate()'s metrics plus its EvalDetails (the acting graph and each agent's gate-open rate)."""
    generator = torch.Generator(device).manual_seed(seed) if sample_actions else None
    B = env.num_envs
    N = env.spec.n_agents
    first_graph: torch.Tensor | None = None
    gated = False
    gate_open = torch.zeros(N, dtype=torch.float64, device=device)
    live_steps = torch.zeros(N, dtype=torch.float64, device=device)
    m = episodes_per_env(episodes or B, B)
    step = env.reset(seed=seed).to(device)
    count = torch.zeros(B, dtype=torch.long, device=device)
    sums: dict[str, torch.Tensor] = {}
    messages, msg_steps = 0.0, 0
    graph_sum = torch.zeros(N, N, dtype=torch.float64, device=device)
    carry = policy.initial_carry(B)
    for _ in range(m * (env.spec.episode_limit + 1)):
        out = policy.act(step.obs, step.avail_actions, step.alive, how, generator, deterministic=not sample_actions,
                         carry=carry, **state_kwarg(policy, step.state))
        live = count < m
        messages += float(policy.messages(out.stored, step.alive)[live].sum())
        msg_steps += int(live.sum())
        if out.graph is not None:
            if first_graph is None:
                first_graph = out.graph[0].clone()
            graph_sum += (out.graph.double() * live[:, None, None]).sum(0)
        if out.gate is not None:
            gated = True
            counted = (live[:, None] & step.alive).double()  # [B,N]: live episodes' live agents
            gate_open += (out.gate.double() * counted).sum(0)
            live_steps += counted.sum(0)
        step = env.step(out.actions.to(env.device)).to(device)
        carry = policy.reset_carry(out.carry, step.done)
        new = step.done & live
        if bool(new.any()):
            for k, v in step.episode.items():
                sums.setdefault(k, torch.zeros(B, device=device))
                sums[k] += torch.where(new, v.float().to(device), 0.0)
            count += new.long()
        if bool((count >= m).all()):
            break
    if not bool((count >= m).all()):
        raise RuntimeError(f"evaluation: {int((count < m).sum())} of {B} envs did not finish {m} episode(s) within "
                           f"episode_limit={env.spec.episode_limit} steps each; the env breaks its contract")
    n = B * m
    out = {f"eval/{'steps' if k == 'length' else k}": float(v.sum()) / n for k, v in sums.items()}
    out["eval/episodes"] = float(n)
    out["comm/eval_messages_per_step"] = messages / max(msg_steps, 1)
    rate = torch.where(live_steps > 0, gate_open / live_steps.clamp(min=1.0), float("nan"))
    mean = None if first_graph is None else (graph_sum / max(msg_steps, 1)).float().cpu()
    details = EvalDetails(None if first_graph is None else first_graph.bool().cpu(), rate.float().cpu() if gated else None,
                          mean)
    return out, details
