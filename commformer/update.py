"""One PPO update over a Rollout, with the bi-level schedule (REFERENCE.md 3, 4).

Every epoch rebuilds the forward pass from the stored acting graph and gate (so the first epoch's ratio is exactly
1), normalises advantages over active entries, and steps one level chosen by bilevel.steps_graph.
"""
from __future__ import annotations

from collections import defaultdict

import torch
from torch import Tensor

from commformer.bilevel import Optimisers, split_columns, steps_graph
from commformer.config import AlgoConfig
from commformer.gates import gate_cost
from commformer.policy import Agent
from commformer.ppo import ValueNorm, explained_variance, gae, masked_mean, normalize_advantages, policy_loss, value_loss
from commformer.rollout import Rollout


def flat(x: Tensor | None, cols: Tensor | None) -> Tensor | None:
    """Select env columns (dim 1) and merge T and B: [T,B,...] -> [T*B',...]."""
    if x is None:
        return None
    if cols is not None:
        x = x[:, cols]
    return x.reshape(-1, *x.shape[2:])


def ppo_update(agent: Agent, ro: Rollout, opt: Optimisers, vnorm: ValueNorm | None, algo: AlgoConfig,
               epochs: int, ph: str) -> dict[str, float]:
    """Run `epochs` PPO epochs on the rollout; returns mean diagnostics (loss/..., train/...)."""
    denorm = vnorm.denormalize if vnorm is not None else (lambda x: x)
    advantages, targets = gae(ro.rewards, denorm(ro.values), ro.next_values(denorm), ro.terminated, ro.truncated,
                              algo.gamma, algo.gae_lambda)
    B = ro.obs.shape[1]
    upper_cols = lower_cols = None
    if algo.bilevel == "split" and ph == "bilevel":
        upper_cols, lower_cols = split_columns(B, algo.split_fraction)
    gate_on = ro.gate is not None and ph != "warmup"
    with torch.no_grad():  # old log-probs from the update's own (teacher-forced) pass: the first ratio is exactly 1
        old_log_prob = agent.score(flat(ro.obs, None), flat(ro.avail, None), flat(ro.alive, None),
                                   flat(ro.actions, None), flat(ro.graph, None), flat(ro.noise, None),
                                   flat(ro.gate, None) if gate_on else None, relax_graph=False,
                                   relax_gate=False)[0].view_as(ro.log_prob)
    stats: dict[str, list[float]] = defaultdict(list)
    first_ratio = None
    for epoch in range(epochs):
        upper = steps_graph(ph, epoch, algo.arch_every)
        cols = upper_cols if upper else lower_cols
        active = flat(ro.active, cols)
        tgt = flat(targets, cols)
        if vnorm is not None:
            vnorm.update(tgt[active])
            tgt = vnorm.normalize(tgt)
        adv = normalize_advantages(flat(advantages, cols), active)
        logp, entropy, value, p = agent.score(
            flat(ro.obs, cols), flat(ro.avail, cols), flat(ro.alive, cols), flat(ro.actions, cols),
            flat(ro.graph, cols), flat(ro.noise, cols), flat(ro.gate, cols) if gate_on else None,
            relax_graph=upper, relax_gate=gate_on)
        old_logp = flat(old_log_prob, cols)
        pl, pstats = policy_loss(logp, old_logp, adv, active, algo.clip)
        vl = value_loss(value, flat(ro.values, cols), tgt, active, algo.clip, algo.huber_delta)
        ent = masked_mean(entropy, active)
        loss = pl + algo.value_coef * vl - algo.entropy_coef * ent
        if p is not None and gate_on and algo.comm_cost > 0:
            loss = loss + algo.comm_cost * gate_cost(p, flat(ro.alive, cols))
        norm = opt.step(loss, upper, algo.max_grad_norm)
        if first_ratio is None:
            first_ratio = float(pstats["ratio_max"])
        level = "graph" if upper else "network"
        stats["loss/policy"].append(float(pl.detach()))
        stats["loss/value"].append(float(vl.detach()))
        stats["loss/entropy"].append(float(ent.detach()))
        stats[f"loss/grad_norm_{level}"].append(norm)
        stats["loss/approx_kl"].append(float(pstats["approx_kl"]))
        stats["loss/clip_fraction"].append(float(pstats["clip_fraction"]))
        if p is not None:
            stats["comm/gate_p"].append(float(masked_mean(p.detach(), flat(ro.alive, cols))))
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out["loss/first_epoch_ratio_max"] = first_ratio if first_ratio is not None else float("nan")
    with torch.no_grad():
        out["loss/explained_variance"] = explained_variance(denorm(ro.values), targets, ro.active)
    return out
