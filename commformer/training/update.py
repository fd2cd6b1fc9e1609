"""One PPO update over a Rollout, with the bi-level schedule (REFERENCE.md 3, 4).

Every epoch rebuilds the forward pass from the stored acting graph and gate (so the first epoch's ratio is exactly
1), normalises advantages over active entries, and steps one level chosen by bilevel.steps_graph. The largest gap
between the rollout's acting log-probs and the update's own is logged as loss/acting_log_prob_gap (about 1e-7 when
acting and training agree).
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import Tensor

from commformer.training.bilevel import Optimisers, split_columns, steps_graph
from commformer.config import AlgoConfig
from commformer.method.gates import gate_cost
from commformer.method.policy import Agent
from commformer.training.ppo import (ValueNorm, explained_variance, gae, masked_mean, normalize_advantages, policy_loss,
                            value_loss)
from commformer.training.rollout import Rollout


def flat(x: Tensor | None, cols: Tensor | None) -> Tensor | None:
    """Select env columns (dim 1) and merge T and B: [T,B,...] -> [T*B',...]."""
    if x is None:
        return None
    if cols is not None:
        x = x[:, cols]
    return x.reshape(-1, *x.shape[2:])


def minibatches(batch: dict[str, Tensor | None], n: int) -> list[dict[str, Tensor | None]]:
    """The rows [R,...] of every tensor in `batch` split into n random minibatches (the whole batch when n == 1)."""
    if n == 1:
        return [batch]
    rows = batch["obs"].shape[0]
    if n > rows:  # Config.__post_init__ checks each level's rows up front; this guards direct callers
        raise ValueError(f"algo.minibatches={n}; must be <= the {rows} rows of a batch")
    return [{k: None if v is None else v[idx] for k, v in batch.items()}
            for idx in torch.randperm(rows, device=batch["obs"].device).chunk(n)]


@contextmanager
def frozen(params: Iterable[torch.nn.Parameter]) -> Iterator[None]:
    """Within: the parameters do not require grad, so a backward pass computes no gradient for them (an upper-level
    step needs alpha's gradient only; the network's weight gradients are most of a backward pass's work)."""
    params = [p for p in params if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def minibatch_loss(agent: Agent, mb: dict[str, Tensor | None], vnorm: ValueNorm | None, algo: AlgoConfig,
                   upper: bool, gate_on: bool, update_vnorm: bool = True) -> tuple[Tensor, dict[str, float], float]:
    """PPO loss of one minibatch (rows R: obs [R,N,O], ...) -> (loss, diagnostics, max ratio).

    update_vnorm: fold this minibatch's targets into the value normaliser first (every minibatch, except the upper
    level's held-out columns in bilevel=split, which must never shape the network's targets)."""
    active = mb["active"]
    tgt = mb["targets"]
    if vnorm is not None:
        if update_vnorm:
            vnorm.update(tgt[active])
        tgt = vnorm.normalize(tgt)
    logp, entropy, value, p = agent.score(mb["obs"], mb["avail"], mb["alive"], mb["actions"], mb["graph"],
                                          mb["noise"], mb["gate"], relax_graph=upper, relax_gate=gate_on)
    pl, pstats = policy_loss(logp, mb["old_log_prob"], mb["advantages"], active, algo.clip)
    vl = value_loss(value, mb["old_values"], tgt, active, algo.clip if algo.value_clip else None, algo.huber_delta)
    ent = masked_mean(entropy, active)
    loss = pl + algo.value_coef * vl - algo.entropy_coef * ent
    stats = {"loss/policy": float(pl.detach()), "loss/value": float(vl.detach()), "loss/entropy": float(ent.detach()),
             "loss/approx_kl": float(pstats["approx_kl"]), "loss/clip_fraction": float(pstats["clip_fraction"])}
    if p is not None:
        if gate_on and algo.comm_cost > 0:
            loss = loss + algo.comm_cost * gate_cost(p, mb["alive"])
        stats["comm/gate_p"] = float(masked_mean(p.detach(), mb["alive"]))
    return loss, stats, float(pstats["ratio_max"])


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
        # acting (incremental decode) vs the update's pass over the stored graph and gate: a rounding unit when
        # they agree; a mismatch (e.g. acting on a different graph than the one stored) shows up here
        gap = float(torch.where(ro.active, (ro.log_prob - old_log_prob).abs(), 0.0).max()) if ro.active.any() else 0.0
    stats: dict[str, list[float]] = defaultdict(list)
    first_ratio = None
    for epoch in range(epochs):
        upper = steps_graph(ph, epoch, algo.arch_every)
        cols = upper_cols if upper else lower_cols
        batch = {"obs": flat(ro.obs, cols), "avail": flat(ro.avail, cols), "alive": flat(ro.alive, cols),
                 "actions": flat(ro.actions, cols), "graph": flat(ro.graph, cols), "noise": flat(ro.noise, cols),
                 "gate": flat(ro.gate, cols) if gate_on else None, "active": flat(ro.active, cols),
                 "targets": flat(targets, cols), "old_values": flat(ro.values, cols),
                 "old_log_prob": flat(old_log_prob, cols)}
        batch["advantages"] = normalize_advantages(flat(advantages, cols), batch["active"])
        for mb in minibatches(batch, algo.minibatches):
            with frozen(opt.network_params if upper else ()):
                loss, mstats, ratio_max = minibatch_loss(agent, mb, vnorm, algo, upper, gate_on,
                                                         update_vnorm=not (upper and upper_cols is not None))
                norm = opt.step(loss, upper, algo.max_grad_norm)
            if first_ratio is None:
                first_ratio = ratio_max
            mstats[f"loss/grad_norm_{'graph' if upper else 'network'}"] = norm
            for k, v in mstats.items():
                stats[k].append(v)
    out = {k: sum(v) / len(v) for k, v in stats.items()}
    out["loss/first_epoch_ratio_max"] = first_ratio if first_ratio is not None else float("nan")
    out["loss/acting_log_prob_gap"] = gap
    with torch.no_grad():
        out["loss/explained_variance"] = explained_variance(denorm(ro.values), targets, ro.active)
    return out
