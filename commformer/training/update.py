"""One PPO update over a Rollout (docs/method.md, "PPO" and "Bi-level schedule").

Every epoch rebuilds the forward pass from what the policy stored while acting (CommFormer: the acting graph and
gate; so the first epoch's ratio is exactly 1), normalises advantages over active entries, and steps one level: the
upper one on the epochs Policy.steps_upper names, the lower one on the others. The largest gap
between the rollout's acting log-probs and the update's own is logged as loss/acting_log_prob_gap (about 1e-7 when
acting and training agree).
"""
from __future__ import annotations

from collections import defaultdict
from contextlib import contextmanager
from typing import Iterable, Iterator

import torch
from torch import Tensor

from commformer.config import AlgoConfig
from commformer.protocol import Policy
from commformer.tensors import masked_mean
from commformer.training.optimisers import Optimisers
from commformer.training.ppo import ValueNorm, explained_variance, gae, normalize_advantages, policy_loss, value_loss
from commformer.training.rollout import Rollout


def flat(x: Tensor, cols: Tensor | None, sequences: bool = False) -> Tensor:
    """Select env columns (dim 1) and merge T and B: [T,B,...] -> [T*B',...]; with `sequences` keep the columns
    whole: [T,B,...] -> [T,B',...]."""
    if cols is not None:
        x = x[:, cols]
    return x if sequences else x.reshape(-1, *x.shape[2:])


def minibatches(batch: dict[str, Tensor], n: int, sequences: bool = False) -> list[dict[str, Tensor]]:
    """The rows [R,...] of every tensor in `batch` split into exactly n random minibatches (the whole batch when
    n == 1): a random permutation cut by tensor_split, so the sizes differ by at most one (6 rows, n = 4: 2, 2, 1, 1;
    `chunk` would give 3 parts there). When n divides R the parts are chunk's (the same rows as before).
    sequences: the tensors are [T,B,...] and the B env columns are split instead (whole sequences)."""
    if n == 1:
        return [batch]
    dim = 1 if sequences else 0
    rows = batch["obs"].shape[dim]
    if n > rows:  # Config.__post_init__ checks each level's rows up front; this guards direct callers
        raise ValueError(f"algo.minibatches={n}; must be <= the {rows} {'columns' if sequences else 'rows'} of a "
                         "batch")
    return [{k: v.index_select(dim, idx) for k, v in batch.items()}
            for idx in torch.randperm(rows, device=batch["obs"].device).tensor_split(n)]


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


def rows(ro: Rollout, cols: Tensor | None, sequences: bool = False) -> dict[str, Tensor]:
    """What the policy scores, flattened to rows [R,...] (with `sequences`: env columns [T,B',...]): obs, state,
    avail, alive, actions and its stored fields."""
    out = {k: flat(getattr(ro, k), cols, sequences) for k in ("obs", "state", "avail", "alive", "actions")}
    out.update({k: flat(v, cols, sequences) for k, v in ro.stored.items()})
    return out


def minibatch_loss(policy: Policy, mb: dict[str, Tensor], vnorm: ValueNorm | None, algo: AlgoConfig, phase: str,
                   upper: bool, update_vnorm: bool = True) -> tuple[Tensor, dict[str, float], float]:
    """PPO loss of one minibatch (rows R: obs [R,N,O], ...) -> (loss, diagnostics, max ratio).

    update_vnorm: fold this minibatch's targets into the value normaliser first (every minibatch, except the upper
    level's held-out columns in bilevel=split, which must never shape the network's targets)."""
    active = mb["active"]
    tgt = mb["targets"]
    if vnorm is not None:
        if update_vnorm:
            vnorm.update(tgt[active])
        tgt = vnorm.normalize(tgt)
    sc = policy.score(mb, phase, upper, relax=True)
    pl, pstats = policy_loss(sc.log_prob, mb["old_log_prob"], mb["advantages"], active, algo.clip)
    vl = value_loss(sc.value, mb["old_values"], tgt, active, algo.clip if algo.value_clip else None, algo.huber_delta)
    ent = masked_mean(sc.entropy, active)
    loss = pl + algo.value_coef * vl - algo.entropy_coef * ent
    stats = {"loss/policy": float(pl.detach()), "loss/value": float(vl.detach()), "loss/entropy": float(ent.detach()),
             "loss/approx_kl": float(pstats["approx_kl"]), "loss/clip_fraction": float(pstats["clip_fraction"])}
    if sc.aux_loss is not None:
        loss = loss + sc.aux_loss
    stats.update(sc.stats)
    return loss, stats, float(pstats["ratio_max"])


def upper_gradients(policy: Policy, batch: dict[str, Tensor], params: list[Tensor], vnorm: ValueNorm | None,
                    algo: AlgoConfig, phase: str) -> dict[str, list[Tensor]]:
    """The gradient of each term of an upper-level step's loss (policy, value, entropy bonus, and the policy's own
    extra loss) with respect to the upper level's parameters (CommFormer: alpha), on a whole batch of rows with
    advantages, targets and old log-probs; nothing is stepped and no normaliser is updated (a diagnostic)."""
    tgt = vnorm.normalize(batch["targets"]) if vnorm is not None else batch["targets"]
    sc = policy.score(batch, phase, upper=True, relax=True)
    active = batch["active"]
    terms = {"policy": policy_loss(sc.log_prob, batch["old_log_prob"], batch["advantages"], active, algo.clip)[0],
             "value": algo.value_coef * value_loss(sc.value, batch["old_values"], tgt, active,
                                                   algo.clip if algo.value_clip else None, algo.huber_delta),
             "entropy": -algo.entropy_coef * masked_mean(sc.entropy, active)}
    if sc.aux_loss is not None:
        terms["extra"] = sc.aux_loss
    out = {}
    for name, term in terms.items():
        if not term.requires_grad:  # a term that does not reach the upper level (e.g. with graph_grad=score)
            out[name] = [torch.zeros_like(p) for p in params]
            continue
        grads = torch.autograd.grad(term, params, retain_graph=True, allow_unused=True)
        out[name] = [torch.zeros_like(p) if g is None else g.detach() for p, g in zip(params, grads)]
    return out


def ppo_update(policy: Policy, ro: Rollout, opt: Optimisers, vnorm: ValueNorm | None, algo: AlgoConfig,
               epochs: int, phase: str, diagnostics: dict | None = None) -> dict[str, float]:
    """Run `epochs` PPO epochs on the rollout; returns mean diagnostics (loss/..., train/...). diagnostics: a dict to
    fill with upper_gradients of the rollout before the first epoch, where the policy has an upper level in this
    phase (None: not computed)."""
    denorm = vnorm.denormalize if vnorm is not None else (lambda x: x)
    values, next_values = denorm(ro.values), ro.next_values(denorm)
    advantages, targets = gae(ro.rewards, values, next_values, ro.terminated, ro.truncated, algo.gamma, algo.gae_lambda)
    # discounted returns (GAE with lambda = 1: the rewards to the episode's end, bootstrapped only at a truncation or
    # the rollout's end), for policies that need a signal in which the critic's state-and-graph value plays no part
    returns = gae(ro.rewards, values, next_values, ro.terminated, ro.truncated, algo.gamma, 1.0)[1]
    seq = bool(getattr(policy, "sequences", False))
    split = policy.upper_columns(ro.obs.shape[1], phase)
    upper_cols, lower_cols = split if split is not None else (None, None)
    with torch.no_grad():  # old log-probs from the update's own (teacher-forced) pass: the first ratio is exactly 1
        old_log_prob = policy.score(rows(ro, None, seq), phase, upper=False,
                                    relax=False).log_prob.view_as(ro.log_prob)
        # acting (incremental decode) vs the update's pass over the stored decisions: a rounding unit when they
        # agree; a mismatch (e.g. acting on a different graph than the one stored) shows up here
        gap = float(torch.where(ro.active, (ro.log_prob - old_log_prob).abs(), 0.0).max()) if ro.active.any() else 0.0

    def epoch_batch(cols: Tensor | None) -> dict[str, Tensor]:
        """The rows of env columns `cols` with everything the loss needs, advantages normalised over them."""
        batch = rows(ro, cols, seq)
        batch.update({k: flat(v, cols, seq) for k, v in (("active", ro.active), ("targets", targets),
                                                         ("returns", returns), ("old_values", ro.values),
                                                         ("old_log_prob", old_log_prob))})
        batch["advantages"] = normalize_advantages(flat(advantages, cols, seq), batch["active"])
        return batch

    if diagnostics is not None and any(policy.steps_upper(phase, e) for e in range(epochs)):
        with frozen(opt.lower_params):
            diagnostics.update(upper_gradients(policy, epoch_batch(upper_cols), opt.upper_params, vnorm, algo, phase))
    stats: dict[str, list[float]] = defaultdict(list)
    first_ratio = None
    for epoch in range(epochs):
        upper = policy.steps_upper(phase, epoch)
        for mb in minibatches(epoch_batch(upper_cols if upper else lower_cols), algo.minibatches, seq):
            with frozen(opt.lower_params if upper else ()):
                loss, mstats, ratio_max = minibatch_loss(policy, mb, vnorm, algo, phase, upper,
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
        # denormalised with the statistics as the update left them
        out["loss/explained_variance"] = explained_variance(denorm(ro.values), targets, ro.active)
    return out
