"""The update's forward pass, fused: the same functions as the reference network (commformer/method/model.py and
attention.py) on the same parameters, with fewer and larger tensor operations. tests/test_backends.py holds each to
the reference (values ~1e-5, gradients ~1e-4).

- embed(): the observation LayerNorm's affine part folded into the linear after it, so a backward pass skips the
  product at the O-wide input; the normalised observations kept while the input is unchanged (ObsMemo), so the
  epochs of an update normalise the rollout once.
- self_attention(): one product gives queries, keys, the relation terms q.rk_l and rq_l.k, and the values already
  through the output projection (the weights of a row sum to 1, so out(sum_j w_j v_j) = sum_j w_j W_out v_j + b_out).
- decode(): positions holding the same token share key and value, so each agent scores the A+1 tokens once and the
  weights are summed per token before mixing the out-projected token values; the stream is a table lookup because
  D_self lets no position see another action.
- dense layers through fast.kernels.linear (oneDNN from 256 rows).
Shapes: B batch, N agents, O obs width, A actions, T = A+1 tokens, H hidden, h heads, dh = H/h, L = 2 edge labels.
"""
from __future__ import annotations

from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from commformer.fast.kernels import dense, gelu_mlp_forward, linear
from commformer.method.model import CommFormer, masked_logits

BLOCK_HEADS_MAX = 8  # up to this many agents the per-agent heads run as one block-diagonal product
OBS_MEMO_MIN = 1 << 16  # ObsMemo keeps results from this many values on (an update's batch, not a step's)


class Relations(NamedTuple):
    """The edge-label terms of one attention: rq, rk [L,h,dh] (label embeddings projected into query and key space)
    and c [h,L] = rq_l . rk_l."""

    rq: Tensor
    rk: Tensor
    c: Tensor


def split(attn: nn.Module, x: Tensor) -> Tensor:
    """[...,H] -> [...,h,dh] (a view)."""
    return x.unflatten(-1, (attn.heads, attn.dh))


def relations(attn: nn.Module) -> tuple[Tensor, Tensor]:
    """(rq, rk), each [L,h,dh]: the edge-label embeddings projected into query and key space."""
    e = attn.label.weight
    return split(attn, attn.rel_q(e)), split(attn, attn.rel_k(e))


def relation_terms(attn: nn.Module) -> Relations:
    rq, rk = relations(attn)
    return Relations(rq, rk, (rq * rk).sum(-1).T)


def project_kv(attn: nn.Module, key: Tensor) -> tuple[Tensor, Tensor]:
    """key [...,Nk,H] -> (k, v), each [...,Nk,h,dh]."""
    k, v = dense(attn.kv, key).chunk(2, dim=-1)
    return split(attn, k), split(attn, v)


def relation_scores(attn: nn.Module, qk: Tensor, q_rk: Tensor, rq_k: Tensor, c: Tensor, label0: Tensor) -> Tensor:
    """(qk + q.rk_l + rq_l.k + c_l) * scale with l the edge label: qk [B,h,Nq,Nk], q_rk [B,h,Nq,L],
    rq_k [B,h,L,Nk], c [h,L], label0 [Nq,Nk] bool -> [B,h,Nq,Nk]."""
    r0 = q_rk[..., 0:1] + rq_k[..., 0:1, :] + c[:, 0, None, None]
    r1 = q_rk[..., 1:2] + rq_k[..., 1:2, :] + c[:, 1, None, None]
    return (qk + torch.where(label0, r0, r1)) * attn.scale


def masked_weights(logits: Tensor, mask: Tensor) -> Tensor:
    """The reference's masked_weights, skipping the product with the mask where it carries no gradient (it changes
    no value)."""
    m = mask[:, None]
    w = torch.softmax(logits.masked_fill(m.detach() == 0, float("-inf")), dim=-1)
    return w * m if m.requires_grad else w


def self_attention(attn: nn.Module, x: Tensor, mask: Tensor, label0: Tensor,
                   self_only: bool = False) -> tuple[Tensor, Tensor | None]:
    """attn(x, x, mask, labels) -> (out [B,N,H], the self-only output [B,N,H] if asked, else None).

    The weights are stacked per pass from the parameters (rk_l W_q, rq_l W_k, W_out[:, m] W_v^m and their biases),
    so the gradient reaches every parameter as in the reference. The self-only output (a closed gate: weight 1 on
    the agent itself) is W_out v_i + b_out, reusing the values."""
    hid, heads, dh = attn.q.out_features, attn.heads, attn.dh
    rq, rk, c = relation_terms(attn)  # [L,h,dh]
    n_rel = heads * rq.shape[0]
    wq, bq = attn.q.weight.view(heads, dh, hid), attn.q.bias.view(heads, dh)
    wk, bk = attn.kv.weight[:hid].view(heads, dh, hid), attn.kv.bias[:hid].view(heads, dh)
    wv, bv = attn.kv.weight[hid:].view(heads, dh, hid), attn.kv.bias[hid:].view(heads, dh)
    wo = attn.out.weight.view(hid, heads, dh)  # block m of the output projection acts on head m
    weight = torch.cat([attn.q.weight, attn.kv.weight[:hid],
                        torch.einsum("ohd,hdc->hoc", wo, wv).reshape(heads * hid, hid),
                        torch.einsum("lhd,hdc->hlc", rk, wq).reshape(n_rel, hid),
                        torch.einsum("lhd,hdc->hlc", rq, wk).reshape(n_rel, hid)])
    bias = torch.cat([attn.q.bias, attn.kv.bias[:hid], torch.einsum("ohd,hd->ho", wo, bv).reshape(heads * hid),
                      torch.einsum("lhd,hd->hl", rk, bq).reshape(n_rel),
                      torch.einsum("lhd,hd->hl", rq, bk).reshape(n_rel)])
    # one split (its backward concatenates the gradients; slices would each zero-fill a full-size gradient)
    q, k, vo, q_rk, rq_k = linear(x, weight, bias).split([hid, hid, heads * hid, n_rel, n_rel], dim=-1)
    b, n = x.shape[:2]
    q_rk = q_rk.view(b, n, heads, -1).transpose(1, 2)  # [B,h,N,L]
    rq_k = rq_k.view(b, n, heads, -1).permute(0, 2, 3, 1)  # [B,h,L,N]
    scores = relation_scores(attn, torch.einsum("bihd,bjhd->bhij", split(attn, q), split(attn, k)), q_rk, rq_k, c,
                             label0)
    w = attn.drop(masked_weights(scores, mask))  # [B,h,N,N]
    vo = vo.view(b, n, heads, hid)  # [B,N,h,H]
    if heads == 1:  # views, not selects: a select's backward zero-fills a full-size gradient
        out = torch.baddbmm(attn.out.bias, w.view(b, n, n), vo.view(b, n, hid))
    else:
        out = torch.einsum("bmij,bjmc->bic", w, vo) + attn.out.bias
    return out, (vo.sum(2) + attn.out.bias if self_only else None)


def encoder_layer(layer: nn.Module, h: Tensor, mask: Tensor, label0: Tensor, gate: Tensor | None) -> Tensor:
    """EncoderLayer.forward: h [B,N,H], mask [B,N,N] f32, label0 [N,N] bool, gate [B,N] f32 or None -> [B,N,H]."""
    a, alone = self_attention(layer.attn, h, mask, label0, self_only=gate is not None)
    if gate is not None:
        g = gate[..., None]
        a = g * a + (1.0 - g) * alone
    h = layer.ln1(h + a)
    return layer.ln2(h + gelu_mlp_forward(layer.ff, h))


class ObsMemo:
    """The embedding LayerNorm's normalisation of the last large input (no parameters, no gradient), kept while that
    input is unchanged (same storage, offset, shape, strides and version counter; the kept reference stops its
    memory being reused)."""

    def __init__(self) -> None:
        self.entry: Optional[tuple[tuple, Tensor, Tensor]] = None  # (key, input, result)

    def normalized(self, ln: nn.LayerNorm, obs: Tensor) -> Tensor:
        """obs [...,O] normalised over O without the affine part."""
        memo = (obs.numel() >= OBS_MEMO_MIN and not obs.requires_grad and not obs.is_inference()
                and not torch.is_inference_mode_enabled())
        key = (obs.data_ptr(), obs.storage_offset(), obs.shape, obs.stride(), obs._version) if memo else None
        if memo and self.entry is not None and self.entry[0] == key:
            return self.entry[2]
        unit = torch.ones(obs.shape[-1], device=obs.device)
        x = F.layer_norm(obs, ln.normalized_shape, unit, torch.zeros_like(unit), ln.eps)  # (faster than no affine)
        if memo:
            self.entry = (key, obs, x)
        return x


def embed(model: CommFormer, obs: Tensor, memo: ObsMemo) -> Tensor:
    """CommFormer.embed: the first LayerNorm's affine part folded into the linear after it,
    W (gamma * x + beta) + b = (W gamma) x + (W beta + b)."""
    ln, lin = model.obs_embed[0], model.obs_embed[1]
    if model.obs_norm is not None:
        obs = model.obs_norm(obs)
    x = linear(memo.normalized(ln, obs), lin.weight * ln.weight, torch.addmv(lin.bias, lin.weight, ln.bias))
    return model.obs_embed[3](model.obs_embed[2](x))


def encode(model: CommFormer, h: Tensor, mask: Tensor, gate: Tensor | None) -> tuple[Tensor, Tensor]:
    """CommFormer.encode: h [B,N,H], M [B,N,N] f32, gate [B,N] f32 or None -> (enc [B,N,H], value [B,N])."""
    label0 = model.enc_labels == 0
    for layer in model.encoder:
        h = encoder_layer(layer, h, mask, label0, gate)
    return h, gelu_mlp_forward(model.value_head, h).squeeze(-1)


def stream_table(model: CommFormer) -> Tensor:
    """[A+1,H]: the action stream after its self-attention, per token. Row a < A: a position holding action a (it
    attends to the start token and itself, D_self); row A: the start position (it attends to itself only)."""
    a_start = model.shape.n_actions
    e = model.action_embed(model.tokens)  # [A+1,H]; token A is the start token
    sa = model.self_attn
    q = split(sa, sa.q(e))
    k, v = project_kv(sa, e)  # [A+1,h,dh]
    rq, rk = relations(sa)
    s_start = ((q + rq[0]) * (k[a_start] + rk[0])).sum(-1) * sa.scale  # [A+1,h]
    s_self = ((q + rq[1]) * (k + rk[1])).sum(-1) * sa.scale
    w = sa.drop(torch.softmax(torch.stack([s_start, s_self], dim=-1), dim=-1))  # [A+1,h,2]
    o = w[..., 0:1] * v[a_start] + w[..., 1:2] * v
    is_start = torch.zeros(a_start + 1, 1, 1, dtype=torch.bool, device=e.device)
    is_start[a_start] = True
    o = torch.where(is_start, v[a_start], o)
    return model.dec_ln1(e + sa.out(o.flatten(-2)))


def stream_tokens(model: CommFormer, actions: Tensor) -> Tensor:
    """Table rows of the stream's positions: actions [B,N] long (a_{N-1} unused) -> [B,N] long (row A = start)."""
    start = torch.full_like(actions[:, :1], model.shape.n_actions)
    return torch.cat([start, actions[:, :-1]], dim=1)


def head(model: CommFormer, y: Tensor, enc: Tensor, rows: slice) -> Tensor:
    """The block's tail and the per-agent heads: y attention output [B,R,H], enc [B,R,H] -> logits [B,R,A]."""
    y = model.dec_ln2(enc + y)
    out = model.dec_ln3(y + gelu_mlp_forward(model.dec_mlp, y))
    w, b = model.head_w[rows], model.head_b[rows]
    r = w.shape[0]
    if 1 < r <= BLOCK_HEADS_MAX:  # one product with the block-diagonal [R*H, R*A] (no batch transposes)
        n_b, hid, a = out.shape[0], w.shape[1], w.shape[2]
        return linear(out.reshape(n_b, r * hid), torch.block_diag(*w.transpose(1, 2).unbind(0)),
                      b.reshape(-1)).view(n_b, r, a)
    return torch.einsum("brh,rha->bra", out, w) + b


def decode(model: CommFormer, enc: Tensor, tokens: Tensor, table: Tensor, dmask: Tensor,
           gate: Tensor | None) -> Tensor:
    """CommFormer.decode: enc [B,N,H] | tokens [B,N] long (stream_tokens) | table [A+1,H] (stream_table) |
    dmask D [B,N,N] f32 | gate [B,N] or None -> logits [B,N,A]."""
    ca = model.cross_attn
    b, n = tokens.shape
    heads, dh, hid = ca.heads, ca.dh, ca.q.out_features
    n_tok = table.shape[0]
    k_tab, v_tab = project_kv(ca, table)  # [T,h,dh]
    rq, rk = relations(ca)  # [L,h,dh]
    label0 = (torch.arange(n_tok, device=table.device) == model.shape.n_actions)[:, None, None]  # the start token
    keys = torch.where(label0, k_tab + rk[0], k_tab + rk[1])  # [T,h,dh]: k + rk of the token's label
    rel_q = torch.where(label0, rq[0], rq[1])
    # scores of every token: s (W_q enc + b_q + rq) . key = enc . (s key W_q) + s (b_q + rq) . key, one product
    wq, bq = ca.q.weight.view(heads, dh, hid), ca.q.bias.view(heads, dh)
    w_tok = torch.einsum("thd,hdc->htc", keys, wq).reshape(heads * n_tok, hid) * ca.scale
    b_tok = ((bq + rel_q) * keys).sum(-1).T.reshape(-1) * ca.scale  # [h*T]
    s_tok = linear(enc, w_tok, b_tok).view(b, n, heads, n_tok).transpose(1, 2)  # [B,h,N,T]
    idx = tokens[:, None, None, :].expand(b, heads, n, n)  # [B,h,N(agent),N(position)]
    w = ca.drop(masked_weights(s_tok.gather(-1, idx), dmask))  # [B,h,N,N]
    w_tok_sum = torch.zeros_like(s_tok).scatter_add(-1, idx, w)  # [B,h,N,T]
    # the token values through the output projection: out(sum_t w_t v_t) = sum_t w_t W_out v_t + b_out
    token_out = torch.einsum("ohd,thd->hto", ca.out.weight.view(hid, heads, dh), v_tab)  # [h,T,H]
    y = linear(w_tok_sum.transpose(1, 2).reshape(b, n, heads * n_tok), token_out.reshape(heads * n_tok, hid).T,
               ca.out.bias)
    closed = ca.out(v_tab[model.shape.n_actions].flatten())
    if gate is not None:
        g = gate[..., None]
        y = g * y + (1.0 - g) * closed
    return head(model, y, enc, slice(None))


def teacher_forced(model: CommFormer, enc: Tensor, actions: Tensor, dmask: Tensor, gate: Tensor | None,
                   avail: Tensor) -> tuple[Tensor, Tensor]:
    """CommFormer.teacher_forced -> (log_prob [B,N], entropy [B,N])."""
    logits = masked_logits(decode(model, enc, stream_tokens(model, actions), stream_table(model), dmask, gate), avail)
    logp_all = torch.log_softmax(logits, dim=-1)
    logp = logp_all.gather(-1, actions[..., None]).squeeze(-1)
    entropy = -(logp_all.exp() * logp_all).sum(-1)
    return logp, entropy
