"""TemporalGate: per agent and step, whether to receive shared information (docs/method.md, "Temporal gate"; our design).

The journal extension publishes no equations for the gate; this is ours. p_i,t = sigmoid(MLP(h_i,t)) from the agent's
pre-attention embedding, its logit bounded softly (bounded_logit), bias initialised so p starts at `init_p` (open). Rollouts sample g ~ Bernoulli(p) and
store it; updates reuse the stored decision with a straight-through estimator g = hard + p - stopgrad(p), so a closed
gate still receives a task gradient through the interpolation in the attention layers. Evaluation opens the gate when
p > 0.5. Cost: comm_cost * mean over alive agents of p.
"""
from __future__ import annotations

import math
from enum import Enum

import torch
from torch import Tensor, nn

# The gate's logit is bounded softly, LOGIT_BOUND * tanh(z / LOGIT_BOUND): p stays in about (0.0025, 0.9975), where
# its slope is still far above Adam's epsilon, so neither the cost nor the task gradient can lose their grip on it
# (an unbounded logit of +14 or -14 has slope ~1e-6; a hard clamp has none past the bound).
LOGIT_BOUND = 6.0


def bounded_logit(z: Tensor) -> Tensor:
    """LOGIT_BOUND * tanh(z / LOGIT_BOUND): z [...] -> [...] in (-LOGIT_BOUND, LOGIT_BOUND), slope 1 at 0."""
    return LOGIT_BOUND * torch.tanh(z / LOGIT_BOUND)


def raw_logit(p: float) -> float:
    """The raw output z with sigmoid(bounded_logit(z)) == p; p must satisfy |logit(p)| < LOGIT_BOUND."""
    return LOGIT_BOUND * math.atanh(math.log(p / (1.0 - p)) / LOGIT_BOUND)


class TemporalGate(nn.Module):
    """h [B,N,H] -> p [B,N] in (0, 1): p = sigmoid(bounded_logit(MLP(h)))."""

    def __init__(self, hidden: int, init_p: float) -> None:
        """init_p (AlgoConfig.gate_init_p, checked there): the initial open probability."""
        super().__init__()
        self.net = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, 1))
        nn.init.zeros_(self.net[2].weight)
        nn.init.constant_(self.net[2].bias, raw_logit(init_p))

    def forward(self, h: Tensor) -> Tensor:
        return torch.sigmoid(bounded_logit(self.net(h).squeeze(-1)))


def sample_gate(p: Tensor, generator: torch.Generator | None) -> Tensor:
    """Bernoulli(p) decisions: p [B,N] f32 -> [B,N] bool."""
    return torch.rand(p.shape, generator=generator, device=p.device) < p


def straight_through_gate(hard: Tensor, p: Tensor) -> Tensor:
    """hard - stopgrad(p) + p: the stored decision in value (exactly: subtracting first keeps 1 - p + p == 1 in
    floating point, where 1 + p - p may not be), p's gradient. hard [B,N] bool, p [B,N] -> f32."""
    return hard.to(p.dtype) - p.detach() + p


class GateChoice(str, Enum):
    """How act() picks the gate."""

    SAMPLE = "sample"  # Bernoulli(p)
    OPEN = "open"  # always open (warm-up)
    THRESHOLD = "threshold"  # p > 0.5 (evaluation)


def pick_gate(p: Tensor | None, how: GateChoice, generator: torch.Generator | None) -> Tensor | None:
    """[B,N] bool decisions from p [B,N] per GateChoice; None without a gate."""
    if p is None:
        return None
    if how is GateChoice.OPEN:
        return torch.ones_like(p, dtype=torch.bool)
    if how is GateChoice.THRESHOLD:
        return p > 0.5
    return sample_gate(p, generator)
