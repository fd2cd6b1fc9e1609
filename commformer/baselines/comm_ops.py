"""Small pure operations the communication baselines share: who can hear whom, masked attention weights, the hard
straight-through Gumbel edge, message counts (docs/methods/).

Shapes: B envs, N agents; masks [B,N,N] are (receiver i, sender j).
"""
from __future__ import annotations

from typing import Optional

import torch
from torch import Tensor


def heard(alive: Tensor) -> Tensor:
    """[B,N] bool -> [B,N,N] bool (receiver i, sender j): i and j alive, j != i."""
    N = alive.shape[-1]
    off = ~torch.eye(N, dtype=torch.bool, device=alive.device)
    return alive[:, :, None] & alive[:, None, :] & off


def masked_softmax(scores: Tensor, mask: Tensor) -> Tensor:
    """Softmax over the last dim (senders) of scores [...,N] restricted to mask [...,N] bool; a row with no sender
    gets all zeros (its receiver hears nothing)."""
    w = torch.softmax(scores.masked_fill(~mask, float("-inf")), dim=-1)
    return torch.nan_to_num(w, nan=0.0) * mask


def gumbel_noise(shape: tuple[int, ...], generator: Optional[torch.Generator], device: torch.device) -> Tensor:
    """Standard Gumbel noise -log(-log u), u ~ U(0, 1) from `generator`."""
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def hard_edge(logits: Tensor, noise: Tensor, tau: float) -> Tensor:
    """Straight-through Gumbel-softmax over two classes (0: silent, 1: talk): logits, noise [...,2] -> [...] f32 whose
    value is exactly 0 or 1 (argmax of logits + noise) and whose gradient is that of softmax((logits + noise) / tau)'s
    talk class."""
    soft = torch.softmax((logits + noise) / tau, dim=-1)[..., 1]
    hard = ((logits + noise).argmax(-1) == 1).to(soft.dtype)
    return hard + (soft - soft.detach())  # exactly hard in value (x - x = 0), the soft gradient


def count_pairs(mask: Tensor) -> Tensor:
    """[...,N,N] bool (receiver, sender) -> [...] f32: the messages of a step (a receiver hearing a sender is one)."""
    return mask.flatten(-2).sum(-1).to(torch.float32)


def mean_of_others(h: Tensor, alive: Tensor) -> Tensor:
    """h [B,N,H], alive [B,N] bool -> [B,N,H]: for receiver i the mean of h_j over the alive j != i (0 for a dead
    receiver or when no other agent is alive)."""
    w = heard(alive).to(h.dtype)
    return (w @ h) / w.sum(-1, keepdim=True).clamp(min=1.0)


def count_messages(alive: Tensor) -> Tensor:
    """[...,N] bool -> [...] f32: the (receiver, sender) pairs of alive agents, i != j."""
    n = alive.sum(-1).to(torch.float32)
    return n * (n - 1).clamp(min=0)
