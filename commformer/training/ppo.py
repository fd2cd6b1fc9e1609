"""PPO pieces: GAE with truncation bootstrap, the running value normaliser, and the masked losses (docs/method.md, "PPO").

Shapes: T rollout length, B envs, N agents. Masks: `active` [.., N] bool selects the entries that count.
"""
from __future__ import annotations

import torch
import torch.nn.functional as F
from torch import Tensor, nn


def gae(rewards: Tensor, values: Tensor, next_values: Tensor, terminated: Tensor, truncated: Tensor,
        gamma: float, lam: float) -> tuple[Tensor, Tensor]:
    """Advantages and value targets of one rollout, per agent.

    rewards, values [T,B,N] f32 | next_values [T,B,N] f32: V(final_obs_t) where truncated_t, else V(obs_{t+1})
    terminated, truncated [T,B] bool (of the env after step t) -> (advantages [T,B,N], targets [T,B,N]).
      delta_t = r_t + gamma * (1 - term_t) * next_values_t - values_t
      A_t     = delta_t + gamma * lam * (1 - (term_t or trunc_t)) * A_{t+1}
    Termination wins when both flags are set (no bootstrap).
    """
    if not (rewards.shape == values.shape == next_values.shape):
        raise ValueError(f"gae: rewards {tuple(rewards.shape)}, values {tuple(values.shape)}, next_values "
                         f"{tuple(next_values.shape)} must share one shape [T,B,N]")
    not_term = (~terminated).to(rewards.dtype)[..., None]
    not_done = (~(terminated | truncated)).to(rewards.dtype)[..., None]
    deltas = rewards + gamma * not_term * next_values - values
    advantages = torch.zeros_like(rewards)
    running = torch.zeros_like(rewards[0])
    for t in range(rewards.shape[0] - 1, -1, -1):
        running = deltas[t] + gamma * lam * not_done[t] * running
        advantages[t] = running
    return advantages, advantages + values


class ValueNorm(nn.Module):
    """Running mean / variance of value targets with debiasing (beta close to 1, variance floor)."""

    def __init__(self, beta: float = 0.99999, var_floor: float = 1e-2) -> None:
        super().__init__()
        self.beta, self.var_floor = beta, var_floor
        self.register_buffer("running_mean", torch.zeros((), dtype=torch.float64))
        self.register_buffer("running_sq", torch.zeros((), dtype=torch.float64))
        self.register_buffer("debias", torch.zeros((), dtype=torch.float64))

    def stats(self) -> tuple[Tensor, Tensor]:
        """(mean, var) as f32 scalars."""
        d = self.debias.clamp_min(1e-5)
        mean = self.running_mean / d
        var = (self.running_sq / d - mean ** 2).clamp_min(self.var_floor)
        return mean.float(), var.float()

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Fold a batch of raw targets x (any shape, already masked to the entries that count) into the stats."""
        if x.numel() == 0:
            return
        x = x.double()
        b = self.beta
        self.running_mean.mul_(b).add_((1 - b) * x.mean())
        self.running_sq.mul_(b).add_((1 - b) * (x ** 2).mean())
        self.debias.mul_(b).add_(1 - b)

    def normalize(self, x: Tensor) -> Tensor:
        mean, var = self.stats()
        return (x - mean) / var.sqrt()

    def denormalize(self, x: Tensor) -> Tensor:
        mean, var = self.stats()
        return x * var.sqrt() + mean


def masked_mean(x: Tensor, mask: Tensor) -> Tensor:
    """Mean of x over entries where mask is True (0 when none); x and mask share a shape."""
    m = mask.to(x.dtype)
    return (x * m).sum() / m.sum().clamp_min(1.0)


def normalize_advantages(adv: Tensor, active: Tensor, eps: float = 1e-8) -> Tensor:
    """(adv - mean) / std over active entries; inactive entries become 0."""
    mean = masked_mean(adv, active)
    var = masked_mean((adv - mean) ** 2, active)
    return torch.where(active, (adv - mean) / (var.sqrt() + eps), torch.zeros_like(adv))


def policy_loss(logp: Tensor, old_logp: Tensor, advantages: Tensor, active: Tensor,
                clip: float) -> tuple[Tensor, dict[str, Tensor]]:
    """Clipped surrogate (to minimise) and diagnostics; all inputs [...,N], active bool."""
    log_ratio = logp - old_logp
    ratio = log_ratio.exp()
    surr = torch.minimum(ratio * advantages, ratio.clamp(1 - clip, 1 + clip) * advantages)
    loss = -masked_mean(surr, active)
    with torch.no_grad():
        stats = {
            "approx_kl": masked_mean((ratio - 1) - log_ratio, active),
            "clip_fraction": masked_mean(((ratio - 1).abs() > clip).float(), active),
            "ratio_mean": masked_mean(ratio, active),
            "ratio_max": torch.where(active, ratio, torch.ones_like(ratio)).max(),
        }
    return loss, stats


def value_loss(values: Tensor, old_values: Tensor, targets: Tensor, active: Tensor, clip: float | None,
               huber_delta: float) -> Tensor:
    """max(Huber(target - v), Huber(target - v_clipped)) over active entries; all in normalised units. clip None:
    plain Huber(target - v) (no value clipping)."""
    a = F.huber_loss(values, targets, reduction="none", delta=huber_delta)
    if clip is None:
        return masked_mean(a, active)
    clipped = old_values + (values - old_values).clamp(-clip, clip)
    b = F.huber_loss(clipped, targets, reduction="none", delta=huber_delta)
    return masked_mean(torch.maximum(a, b), active)


def explained_variance(pred: Tensor, target: Tensor, mask: Tensor) -> float:
    """1 - Var(target - pred) / Var(target) over masked entries (nan when Var(target) = 0)."""
    t, p = target[mask], pred[mask]
    var = t.var(unbiased=False)
    if t.numel() < 2 or var == 0:
        return float("nan")
    return float(1 - (t - p).var(unbiased=False) / var)
