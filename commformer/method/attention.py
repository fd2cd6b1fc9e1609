"""Relation attention under a communication mask, and the encoder layer built from it (docs/method.md,
"Attention with the graph").

Receiver i attends to sender j only where the mask M[i, j] = 1. The score adds a relation term, an embedding of
the edge label l_ij (0: the self-loop or the decoder's start token; 1: a selected sender) projected into query and
key space:
    s_ij = (q_i + rq_ij) . (k_j + rk_ij) / sqrt(d_head)
    w_i  = softmax_j(s_ij, with -inf where M[i, j] = 0) * M[i, j]
The product with M changes no value in the forward pass (w is already 0 where M is 0); in the backward pass it is
the path by which the loss reaches the graph's alpha.
Shapes: B batch, Nq queries, Nk keys, H hidden, h heads, dh = H / h.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

N_LABELS = 2  # edge labels: 0 = self-loop / start token, 1 = a selected sender


def masked_weights(logits: Tensor, mask: Tensor) -> Tensor:
    """softmax over keys with -inf where mask == 0, then times the mask.

    logits [B,h,Nq,Nk] | mask [B,Nq,Nk] f32 (0/1 values, may carry the graph's gradient) -> [B,h,Nq,Nk]."""
    m = mask[:, None]
    return torch.softmax(logits.masked_fill(m.detach() == 0, float("-inf")), dim=-1) * m


def gelu_mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    """Linear -> GELU -> Linear."""
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))


class RelationAttention(nn.Module):
    """Multi-head attention of Nq queries over Nk keys with edge-label relation terms and a 0/1 mask."""

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        assert hidden % heads == 0, f"hidden={hidden} not divisible by heads={heads} (the config checks this)"
        self.heads, self.dh = heads, hidden // heads
        self.scale = 1.0 / math.sqrt(self.dh)
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)  # keys, then values
        self.out = nn.Linear(hidden, hidden)
        self.label = nn.Embedding(N_LABELS, hidden)
        self.rel_q = nn.Linear(hidden, hidden, bias=False)
        self.rel_k = nn.Linear(hidden, hidden, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def split(self, x: Tensor) -> Tensor:
        """[...,H] -> [...,h,dh]."""
        return x.unflatten(-1, (self.heads, self.dh))

    def forward(self, query: Tensor, key: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
        """query [B,Nq,H], key [B,Nk,H], mask M [B,Nq,Nk] f32, labels [Nq,Nk] long (edge label of each pair)
        -> [B,Nq,H]."""
        q = self.split(self.q(query))  # [B,Nq,h,dh]
        k, v = (self.split(x) for x in self.kv(key).chunk(2, dim=-1))  # [B,Nk,h,dh] each
        edge = self.label(labels)  # [Nq,Nk,H]
        rq, rk = self.split(self.rel_q(edge)), self.split(self.rel_k(edge))  # [Nq,Nk,h,dh]
        scores = ((q[:, :, None] + rq) * (k[:, None] + rk)).sum(-1) * self.scale  # [B,Nq,Nk,h]
        w = self.drop(masked_weights(scores.permute(0, 3, 1, 2), mask))  # [B,h,Nq,Nk]
        return self.out(torch.einsum("bhij,bjhd->bihd", w, v).flatten(-2))


class EncoderLayer(nn.Module):
    """Post-LN: h = LN(h + gated attention(h; M)); h = LN(h + FF(h)). FF has the same width."""

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = RelationAttention(hidden, heads, dropout)
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ff = gelu_mlp(hidden, hidden, hidden)

    def forward(self, h: Tensor, mask: Tensor, labels: Tensor, gate: Tensor | None) -> Tensor:
        """h [B,N,H], mask M [B,N,N] f32, labels [N,N] long (0 on the diagonal), gate [B,N] f32 or None -> [B,N,H].

        With a gate (docs/method.md, "Temporal gate"): out_i = g_i * attn(M)_i + (1 - g_i) * attn(self only)_i."""
        a = self.attn(h, h, mask, labels)
        if gate is not None:
            self_only = torch.eye(h.shape[1], device=h.device).expand_as(mask)
            g = gate[..., None]
            a = g * a + (1.0 - g) * self.attn(h, h, self_only, labels)
        h = self.ln1(h + a)
        return self.ln2(h + self.ff(h))
