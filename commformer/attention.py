"""Relation-aware multi-head attention under a communication mask (REFERENCE.md 2).

Scores follow the paper form: s_ij = (q_i + rq_ij) . (k_j + rk_ij) / sqrt(d_head), where rq / rk are projections of
an embedding of the edge label (0 = self-loop or start token, 1 = a selected sender). Logits where the detached mask
is 0 are -inf; w = softmax(logits) * mask, so in the forward pass the mask changes nothing while in the backward pass
it is the path by which the loss reaches alpha.
"""
from __future__ import annotations

import math

import torch
from torch import Tensor, nn

N_LABELS = 2


def split_heads(x: Tensor, heads: int) -> Tensor:
    """[B,N,H] -> [B,heads,N,H/heads]."""
    b, n, d = x.shape
    return x.view(b, n, heads, d // heads).transpose(1, 2)


def merge_heads(x: Tensor) -> Tensor:
    """[B,heads,N,dh] -> [B,N,heads*dh]."""
    b, h, n, dh = x.shape
    return x.transpose(1, 2).reshape(b, n, h * dh)


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
        if hidden % heads:
            raise ValueError(f"algo.hidden={hidden} must be divisible by algo.heads={heads}")
        self.heads, self.dh = heads, hidden // heads
        self.q = nn.Linear(hidden, hidden)
        self.kv = nn.Linear(hidden, 2 * hidden)
        self.out = nn.Linear(hidden, hidden)
        self.label = nn.Embedding(N_LABELS, hidden)
        self.rel_q = nn.Linear(hidden, hidden, bias=False)
        self.rel_k = nn.Linear(hidden, hidden, bias=False)
        self.drop = nn.Dropout(dropout) if dropout > 0 else nn.Identity()

    def values(self, x: Tensor) -> Tensor:
        """Output of attending to one key only (weight 1 on it): out(v(x)). x [B,N,H] -> [B,N,H]."""
        return self.out(self.kv(x)[..., self.kv.out_features // 2:])

    def forward(self, query: Tensor, key: Tensor, mask: Tensor, labels: Tensor) -> Tensor:
        """query [B,Nq,H], key [B,Nk,H], mask [B,Nq,Nk] f32, labels [Nq,Nk] long in {0,1} -> [B,Nq,H]."""
        q = split_heads(self.q(query), self.heads)
        k, v = (split_heads(t, self.heads) for t in self.kv(key).chunk(2, dim=-1))
        e = self.label.weight  # [L,H]
        rq = self.rel_q(e).view(N_LABELS, self.heads, 1, self.dh)  # per label, per head
        rk = self.rel_k(e).view(N_LABELS, self.heads, 1, self.dh)
        logits = torch.zeros(())
        for lab in range(N_LABELS):
            s = (q + rq[lab]) @ (k + rk[lab]).transpose(-1, -2)
            logits = logits + s * (labels == lab).to(s.dtype)
        w = self.drop(masked_weights(logits / math.sqrt(self.dh), mask))
        return self.out(merge_heads(w @ v))


class EncoderLayer(nn.Module):
    """Post-LN: h = LN(h + gated attention(h; M)); h = LN(h + FF(h)). FF has the same width."""

    def __init__(self, hidden: int, heads: int, dropout: float = 0.0) -> None:
        super().__init__()
        self.attn = RelationAttention(hidden, heads, dropout)
        self.ln1, self.ln2 = nn.LayerNorm(hidden), nn.LayerNorm(hidden)
        self.ff = nn.Sequential(nn.Linear(hidden, hidden), nn.GELU(), nn.Linear(hidden, hidden))

    def forward(self, h: Tensor, mask: Tensor, labels: Tensor, gate: Tensor | None) -> Tensor:
        """h [B,N,H], mask M [B,N,N] f32, labels [N,N], gate [B,N] f32 or None (always open) -> [B,N,H].

        With a gate: out_i = g_i * attn(M)_i + (1 - g_i) * attn(self only)_i (REFERENCE.md 5)."""
        a = self.attn(h, h, mask, labels)
        if gate is not None:
            g = gate[..., None]
            a = g * a + (1.0 - g) * self.attn.values(h)
        h = self.ln1(h + a)
        return self.ln2(h + self.ff(h))


def encoder_labels(n: int, device: torch.device | None = None) -> Tensor:
    """[N,N] long: 0 on the self-loop, 1 elsewhere."""
    return (~torch.eye(n, dtype=torch.bool, device=device)).long()


def decoder_labels(n: int, device: torch.device | None = None) -> Tensor:
    """[N,N] long over (agent, stream position): 0 for the start token (position 0), 1 for actions."""
    lab = torch.ones(n, n, dtype=torch.long, device=device)
    lab[:, 0] = 0
    return lab


def stream_self_mask(n: int, device: torch.device | None = None) -> Tensor:
    """D_self [N,N] f32: position p attends to the start token and itself only."""
    m = torch.eye(n, device=device)
    m[:, 0] = 1.0
    return m


def gelu_mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))

