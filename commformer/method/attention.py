"""Relation-aware multi-head attention under a communication mask (REFERENCE.md 2).

Scores follow the paper form: s_ij = (q_i + rq_ij) . (k_j + rk_ij) / sqrt(d_head), where rq / rk are projections of
an embedding of the edge label (0 = self-loop or start token, 1 = a selected sender). Logits where the detached mask
is 0 are -inf; w = softmax(logits) * mask, so in the forward pass the mask changes nothing while in the backward pass
it is the path by which the loss reaches alpha.

Tensors inside use a heads-last layout: q [B,Nq,heads,dh], k / v [B,Nk,heads,dh], weights [B,heads,Nq,Nk].
"""
from __future__ import annotations

import math
from typing import NamedTuple

import torch
from torch import Tensor, nn

N_LABELS = 2


class Relations(NamedTuple):
    """The edge-label terms of one attention: rq, rk [L,heads,dh] (label embeddings projected into query and key
    space) and c [heads,L] = rq_l . rk_l."""

    rq: Tensor
    rk: Tensor
    c: Tensor


def masked_weights(logits: Tensor, mask: Tensor) -> Tensor:
    """w = softmax over keys of logits with -inf where mask == 0, then w * mask.

    logits [B,heads,Nq,Nk] | mask [B,Nq,Nk] f32 (0/1 values, may carry gradient) -> [B,heads,Nq,Nk]."""
    m = mask[:, None]
    w = torch.softmax(logits.masked_fill(m.detach() == 0, float("-inf")), dim=-1)
    return w * m


class RelationAttention(nn.Module):
    """Multi-head attention of Nq queries over Nk keys with edge-label relation terms and a 0/1 mask."""

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        assert hidden % heads == 0, f"hidden={hidden} not divisible by heads={heads} (AlgoConfig checks this)"
        self.heads, self.dh = heads, hidden // heads
        self.scale = 1.0 / math.sqrt(self.dh)
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.label = nn.Embedding(N_LABELS, hidden)
        self.rel_q = nn.Linear(hidden, hidden, bias=False)
        self.rel_k = nn.Linear(hidden, hidden, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def split(self, x: Tensor) -> Tensor:
        """[...,H] -> [...,heads,dh] (a view)."""
        return x.unflatten(-1, (self.heads, self.dh))

    def relations(self) -> tuple[Tensor, Tensor]:
        """(rq, rk), each [L,heads,dh]: the edge-label embeddings projected into query and key space."""
        e = self.label.weight
        return self.split(self.rel_q(e)), self.split(self.rel_k(e))

    def relation_terms(self) -> Relations:
        """Relations(rq, rk, c) of the current weights."""
        rq, rk = self.relations()
        return Relations(rq, rk, (rq * rk).sum(-1).T)

    def project_kv(self, key: Tensor) -> tuple[Tensor, Tensor]:
        """key [...,Nk,H] -> (k, v), each [...,Nk,heads,dh]."""
        k, v = self.kv(key).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def scores(self, q: Tensor, k: Tensor, label0: Tensor, rel: Relations) -> Tensor:
        """Scaled relation scores: q [B,Nq,h,dh], k [B,Nk,h,dh], label0 [Nq,Nk] bool (edge label 0 there, else 1)
        -> [B,h,Nq,Nk]. Expanded as q.k + q.rk_l + rq_l.k + rq_l.rk_l so only q.k is a full product."""
        rq, rk, c = rel  # [L,h,dh], [L,h,dh], [h,L]
        qk = torch.einsum("bihd,bjhd->bhij", q, k)
        q_rk = torch.einsum("bihd,lhd->bhil", q, rk)  # [B,h,Nq,L]
        rq_k = torch.einsum("bjhd,lhd->bhlj", k, rq)  # [B,h,L,Nk]
        r0 = q_rk[..., 0:1] + rq_k[..., 0:1, :] + c[:, 0, None, None]
        r1 = q_rk[..., 1:2] + rq_k[..., 1:2, :] + c[:, 1, None, None]
        return (qk + torch.where(label0, r0, r1)) * self.scale

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, label0: Tensor) -> Tensor:
        """Attention from projected q [B,Nq,h,dh], k / v [B,Nk,h,dh] -> [B,Nq,H] (after the output projection)."""
        w = self.drop(masked_weights(self.scores(q, k, label0, self.relation_terms()), mask))
        return self.out(torch.einsum("bhij,bjhd->bihd", w, v).flatten(-2))

    def forward(self, query: Tensor, key: Tensor, mask: Tensor, label0: Tensor) -> Tensor:
        """query [B,Nq,H], key [B,Nk,H], mask [B,Nq,Nk] f32, label0 [Nq,Nk] bool -> [B,Nq,H]."""
        k, v = self.project_kv(key)
        return self.attend(self.split(self.q(query)), k, v, mask, label0)

    def values(self, x: Tensor) -> Tensor:
        """Output of attending to one key only (weight 1 on it): out(v(x)). x [...,H] -> [...,H]."""
        h = self.kv.out_features // 2
        return self.out(torch.nn.functional.linear(x, self.kv.weight[h:], self.kv.bias[h:]))


class EncoderLayer(nn.Module):
    """Post-LN: h = LN(h + gated attention(h; M)); h = LN(h + FF(h)). FF has the same width."""

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = RelationAttention(hidden, heads, dropout)
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, mask: Tensor, label0: Tensor, gate: Tensor | None) -> Tensor:
        """h [B,N,H], mask M [B,N,N] f32, label0 [N,N] bool (the self-loop), gate [B,N] f32 or None -> [B,N,H].

        With a gate: out_i = g_i * attn(M)_i + (1 - g_i) * attn(self only)_i (REFERENCE.md 5)."""
        a = self.attn(h, h, mask, label0)
        if gate is not None:
            g = gate[..., None]
            a = g * a + (1.0 - g) * self.attn.values(h)
        h = self.ln1(h + a)
        return self.ln2(h + self.ff(h))


def gelu_mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))
