"""Deterministic evaluation (DESIGN.md, evaluation protocol): argmax actions, top-k(alpha) graph, gate open when
p > 0.5, on an env reseeded with the same seed every time, one episode per eval env."""
from __future__ import annotations

import torch

from commformer.graph import messages_per_step
from commformer.policy import Agent
from envs.core import VecEnv

EVAL_SEED_OFFSET = 1_000_000


@torch.no_grad()
def evaluate(agent: Agent, env: VecEnv, seed: int, device: torch.device, graph_how: str = "deterministic",
             gate_how: str = "threshold") -> dict[str, float]:
    """Run the first episode of each of the env's B copies; returns eval/return, eval/steps, eval/<task metric>
    (means over the B episodes) and comm/eval_messages_per_step. Graph and gate choices per policy.GRAPH_CHOICES."""
    B = env.num_envs
    step = env.reset(seed=seed).to(device)
    got = torch.zeros(B, dtype=torch.bool, device=device)
    results: dict[str, torch.Tensor] = {}
    messages, msg_steps = 0.0, 0
    limit = env.spec.episode_limit + 1
    for _ in range(limit):
        out = agent.act(step.obs, step.avail_actions, step.alive, graph_how, gate_how, None, deterministic=True)
        live = ~got
        messages += float(messages_per_step(out.graph, step.alive, out.gate)[live].sum())
        msg_steps += int(live.sum())
        step = env.step(out.actions.to(env.device)).to(device)
        new = step.done & ~got
        if bool(new.any()):
            for k, v in step.episode.items():
                results.setdefault(k, torch.zeros(B, device=device))[new] = v[new].float().to(device)
            got |= new
        if bool(got.all()):
            break
    if not bool(got.all()):
        raise RuntimeError(f"evaluation: {int((~got).sum())} of {B} episodes did not end within "
                           f"episode_limit={env.spec.episode_limit} steps; the env breaks its contract")
    out = {f"eval/{'steps' if k == 'length' else k}": float(v.mean()) for k, v in results.items()}
    out["comm/eval_messages_per_step"] = messages / max(msg_steps, 1)
    return out
