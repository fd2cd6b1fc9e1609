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

from commformer.method.kernels import dense, gelu_mlp_forward, linear

N_LABELS = 2


class Relations(NamedTuple):
    """The edge-label terms of one attention: rq, rk [L,heads,dh] (label embeddings projected into query and key
    space) and c [heads,L] = rq_l . rk_l."""

    rq: Tensor
    rk: Tensor
    c: Tensor


def masked_weights(logits: Tensor, mask: Tensor) -> Tensor:
    """w = softmax over keys of logits with -inf where mask == 0, then w * mask.

    logits [B,heads,Nq,Nk] | mask [B,Nq,Nk] f32 (0/1 values, may carry gradient) -> [B,heads,Nq,Nk]. The product
    changes no value (w is already 0 where the mask is); it is taken only when the mask carries a gradient."""
    m = mask[:, None]
    w = torch.softmax(logits.masked_fill(m.detach() == 0, float("-inf")), dim=-1)
    return w * m if m.requires_grad else w


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
        k, v = dense(self.kv, key).chunk(2, dim=-1)
        return self.split(k), self.split(v)

    def scores(self, q: Tensor, k: Tensor, label0: Tensor, rel: Relations) -> Tensor:
        """Scaled relation scores: q [B,Nq,h,dh], k [B,Nk,h,dh], label0 [Nq,Nk] bool (edge label 0 there, else 1)
        -> [B,h,Nq,Nk]. Expanded as q.k + q.rk_l + rq_l.k + rq_l.rk_l so only q.k is a full product."""
        rq, rk, _ = rel  # [L,h,dh]
        q_rk = torch.einsum("bihd,lhd->bhil", q, rk)  # [B,h,Nq,L]
        rq_k = torch.einsum("bjhd,lhd->bhlj", k, rq)  # [B,h,L,Nk]
        return self.relation_scores(torch.einsum("bihd,bjhd->bhij", q, k), q_rk, rq_k, rel.c, label0)

    def relation_scores(self, qk: Tensor, q_rk: Tensor, rq_k: Tensor, c: Tensor, label0: Tensor) -> Tensor:
        """(qk + q.rk_l + rq_l.k + c_l) * scale with l the edge label: qk [B,h,Nq,Nk], q_rk [B,h,Nq,L],
        rq_k [B,h,L,Nk], c [h,L], label0 [Nq,Nk] bool -> [B,h,Nq,Nk]."""
        r0 = q_rk[..., 0:1] + rq_k[..., 0:1, :] + c[:, 0, None, None]
        r1 = q_rk[..., 1:2] + rq_k[..., 1:2, :] + c[:, 1, None, None]
        return (qk + torch.where(label0, r0, r1)) * self.scale

    def attend(self, q: Tensor, k: Tensor, v: Tensor, mask: Tensor, label0: Tensor) -> Tensor:
        """Attention from projected q [B,Nq,h,dh], k / v [B,Nk,h,dh] -> [B,Nq,H] (after the output projection)."""
        w = self.drop(masked_weights(self.scores(q, k, label0, self.relation_terms()), mask))
        return dense(self.out, torch.einsum("bhij,bjhd->bihd", w, v).flatten(-2))

    def forward(self, query: Tensor, key: Tensor, mask: Tensor, label0: Tensor) -> Tensor:
        """query [B,Nq,H], key [B,Nk,H], mask [B,Nq,Nk] f32, label0 [Nq,Nk] bool -> [B,Nq,H]."""
        k, v = self.project_kv(key)
        return self.attend(self.split(dense(self.q, query)), k, v, mask, label0)

    def self_attention(self, x: Tensor, mask: Tensor, label0: Tensor,
                       self_only: bool = False) -> tuple[Tensor, Tensor | None]:
        """forward(x, x, mask, label0) -> (out [B,N,H], the self-only output [B,N,H] if asked, else None).

        One product gives q, k, the relation terms q.rk_l and rq_l.k, and the values already through the output
        projection, W_out[:, m] v^m per head m: the weights are stacked per pass from the parameters (rk_l W_q,
        rq_l W_k, W_out[:, m] W_v^m and their biases), so the gradient reaches every parameter as in forward().
        The weights of a row sum to 1 over the keys, so out(sum_j w_j v_j) = sum_j w_j W_out v_j + b_out, and the
        gradient of each w_j is the same. The self-only output (the gate's closed path: weight 1 on the agent
        itself) is W_out v_i + b_out, reusing the values."""
        hid, heads, dh = self.q.out_features, self.heads, self.dh
        rq, rk, c = self.relation_terms()  # [L,h,dh]
        n_rel = heads * rq.shape[0]
        wq, bq = self.q.weight.view(heads, dh, hid), self.q.bias.view(heads, dh)
        wk, bk = self.kv.weight[:hid].view(heads, dh, hid), self.kv.bias[:hid].view(heads, dh)
        wv, bv = self.kv.weight[hid:].view(heads, dh, hid), self.kv.bias[hid:].view(heads, dh)
        wo = self.out.weight.view(hid, heads, dh)  # block m of the output projection acts on head m
        weight = torch.cat([self.q.weight, self.kv.weight[:hid],
                            torch.einsum("ohd,hdc->hoc", wo, wv).reshape(heads * hid, hid),
                            torch.einsum("lhd,hdc->hlc", rk, wq).reshape(n_rel, hid),
                            torch.einsum("lhd,hdc->hlc", rq, wk).reshape(n_rel, hid)])
        bias = torch.cat([self.q.bias, self.kv.bias[:hid], torch.einsum("ohd,hd->ho", wo, bv).reshape(heads * hid),
                          torch.einsum("lhd,hd->hl", rk, bq).reshape(n_rel),
                          torch.einsum("lhd,hd->hl", rq, bk).reshape(n_rel)])
        # one split (its backward concatenates the gradients; slices would each zero-fill a full-size gradient)
        q, k, vo, q_rk, rq_k = linear(x, weight, bias).split([hid, hid, heads * hid, n_rel, n_rel], dim=-1)
        b, n = x.shape[:2]
        q_rk = q_rk.view(b, n, heads, -1).transpose(1, 2)  # [B,h,N,L]
        rq_k = rq_k.view(b, n, heads, -1).permute(0, 2, 3, 1)  # [B,h,L,N]
        scores = self.relation_scores(torch.einsum("bihd,bjhd->bhij", self.split(q), self.split(k)), q_rk, rq_k, c,
                                      label0)
        w = self.drop(masked_weights(scores, mask))  # [B,h,N,N]
        vo = vo.view(b, n, heads, hid)  # [B,N,h,H]
        if heads == 1:  # views, not selects: a select's backward zero-fills a full-size gradient
            out = torch.baddbmm(self.out.bias, w.view(b, n, n), vo.view(b, n, hid))
        else:
            out = torch.einsum("bmij,bjmc->bic", w, vo) + self.out.bias
        return out, (vo.sum(2) + self.out.bias if self_only else None)

    def values(self, x: Tensor) -> Tensor:
        """Output of attending to one key only (weight 1 on it): out(v(x)). x [...,H] -> [...,H]."""
        h = self.kv.out_features // 2
        return dense(self.out, linear(x, self.kv.weight[h:], self.kv.bias[h:]))


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
        a, alone = self.attn.self_attention(h, mask, label0, self_only=gate is not None)
        if gate is not None:
            g = gate[..., None]
            a = g * a + (1.0 - g) * alone
        h = self.ln1(h + a)
        return self.ln2(h + gelu_mlp_forward(self.ff, h))


def gelu_mlp(inp: int, hidden: int, out: int) -> nn.Sequential:
    return nn.Sequential(nn.Linear(inp, hidden), nn.GELU(), nn.Linear(hidden, out))
