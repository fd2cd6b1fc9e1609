"""TemporalGate: per agent and step, whether to receive shared information (REFERENCE.md 5; our design).

The journal extension publishes no equations for the gate; this is ours. p_i,t = sigmoid(MLP(h_i,t)) from the agent's
pre-attention embedding, bias initialised so p starts near `init_p` (open). Rollouts sample g ~ Bernoulli(p) and
store it; updates reuse the stored decision with a straight-through estimator g = hard + p - stopgrad(p), so a closed
gate still receives a task gradient through the interpolation in the attention layers. Evaluation opens the gate when
p > 0.5. Cost: comm_cost * mean over alive agents of p.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn


class TemporalGate(nn.Module):
    """h [B,N,H] -> p [B,N] in (0, 1)."""

    def __init__(self, hidden: int, init_p: float = 0.9) -> None:
        super().__init__()
        if not 0.0 < init_p < 1.0:
            raise ValueError(f"algo.gate_init_p={init_p}; must be in (0, 1)")
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.constant_(self.net[2].bias, math.log(init_p / (1.0 - init_p)))

    def forward(self, h: Tensor) -> Tensor:
        return torch.sigmoid(self.net(h).squeeze(-1))


def sample_gate(p: Tensor, generator: torch.Generator | None) -> Tensor:
    """Bernoulli(p) decisions: p [B,N] f32 -> [B,N] bool."""
    return torch.rand(p.shape, generator=generator, device=p.device) < p


def straight_through_gate(hard: Tensor, p: Tensor) -> Tensor:
    """hard - stopgrad(p) + p: the stored decision in value (exactly: subtracting first keeps 1 - p + p == 1 in
    floating point, where 1 + p - p may not be), p's gradient. hard [B,N] bool, p [B,N] -> f32."""
    return hard.to(p.dtype) - p.detach() + p


def gate_cost(p: Tensor, alive: Tensor) -> Tensor:
    """Mean of p over alive agents (scalar); p [...,N] f32, alive [...,N] bool."""
    w = alive.to(p.dtype)
    return (p * w).sum() / w.sum().clamp_min(1.0)
