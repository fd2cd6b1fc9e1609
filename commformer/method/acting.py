"""The acting step at the floor: the CommFormer forward pass of one env step with its projections fused per set of
weights (REFERENCE.md 2; the readable form is CommFormer.encode + CommFormer.autoregressive, which this equals up to
float rounding).

Acting runs one encoder pass and N small decoder steps per env step at a small batch (B envs), where the cost is the
number of tensor operations, not arithmetic. Everything that depends on the weights alone is folded once per set of
weights (ActingWeights.of, cached by policy.Agent until a parameter changes):
- encoder attention: one linear gives the scaled queries, the keys, the relation terms q.rk_1 and rq_1.k + rq_1.rk_1,
  the label-0 correction of the self-loop and the values already through the output projection (w sums to 1 over
  the keys, so out(sum_j w_j v_j) = sum_j w_j out'(v_j) + b_out);
- decoder: the stream table and its cross-attention keys and values are constant, so one linear on the encoder
  output gives the value head's first layer and agent i's score of every table token (start token and each action);
  a decoder step is then a gather of scores, a softmax and one batched product with the out-projected token values.
The w * M product of masked_weights is skipped: M is 0/1 and w is already 0 where M is 0 (it exists for the
gradient). Shapes: B envs, N agents, O obs width, A actions, H hidden, h heads, dh = H/h.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from commformer.method.attention import EncoderLayer
from commformer.method.model import NEG, neg_gumbel


def _ln(m: nn.LayerNorm, x: Tensor) -> Tensor:
    return F.layer_norm(x, m.normalized_shape, m.weight, m.bias, m.eps)


def _mlp(m: nn.Sequential, x: Tensor) -> Tensor:
    """Linear -> GELU -> Linear of a gelu_mlp."""
    return F.linear(F.gelu(F.linear(x, m[0].weight, m[0].bias)), m[2].weight, m[2].bias)


@dataclass(frozen=True)
class EncoderWeights:
    """One encoder layer, fused. Columns of `weight` [C,H] (C = 2H + 3h + hH), in order: scaled queries s*q (H),
    keys k (H), s*q.rk_1 per head (h), s*(rq_1.k + rq_1.rk_1) per head (h), the self-loop's label-0 minus label-1
    terms per head (h), out-projected values per head (hH, bias of the output projection not included)."""

    weight: Tensor
    bias: Tensor
    out_bias: Tensor  # [H]
    layer: EncoderLayer  # its LayerNorms and feed-forward, used as they are

    @staticmethod
    def of(layer: EncoderLayer) -> "EncoderWeights":
        at = layer.attn
        heads, dh, s = at.heads, at.dh, at.scale
        hid = heads * dh
        wq, bq = at.q.weight.view(heads, dh, hid), at.q.bias.view(heads, dh)
        wk, bk = at.kv.weight[:hid].view(heads, dh, hid), at.kv.bias[:hid].view(heads, dh)
        wv, bv = at.kv.weight[hid:].view(heads, dh, hid), at.kv.bias[hid:].view(heads, dh)
        rq, rk, c = at.relation_terms()  # [L,h,dh], [L,h,dh], [h,L]
        wo = at.out.weight.view(hid, heads, dh)  # out[:, head m] acts on v^m
        q_rk = [torch.einsum("hd,hdc->hc", rk[lab], wq) * s for lab in (0, 1)]  # [h,H]: weight of s*q^m.rk_l^m
        q_rk_b = [(rk[lab] * bq).sum(-1) * s for lab in (0, 1)]  # [h]
        rq_k = [torch.einsum("hd,hdc->hc", rq[lab], wk) * s for lab in (0, 1)]
        rq_k_b = [((rq[lab] * bk).sum(-1) + c[:, lab]) * s for lab in (0, 1)]  # the constant rq.rk folded in
        vo = torch.einsum("ohd,hdc->hoc", wo, wv).reshape(heads * hid, hid)  # [hH,H]: out[:, m] @ W_v^m
        vo_b = torch.einsum("ohd,hd->ho", wo, bv).reshape(heads * hid)
        weight = torch.cat([at.q.weight * s, at.kv.weight[:hid], q_rk[1], rq_k[1],
                            q_rk[0] - q_rk[1] + rq_k[0] - rq_k[1], vo])
        bias = torch.cat([at.q.bias * s, at.kv.bias[:hid], q_rk_b[1], rq_k_b[1],
                          q_rk_b[0] - q_rk_b[1] + rq_k_b[0] - rq_k_b[1], vo_b])
        return EncoderWeights(weight, bias, at.out.bias, layer)

    def forward(self, x: Tensor, mask_zero: Tensor, gate: Tensor | None) -> Tensor:
        """x [B,N,H], mask_zero [B,1,N,N] bool (True where M = 0), gate [B,N] f32 or None -> [B,N,H]."""
        b, n, hid = x.shape
        heads = self.layer.attn.heads
        dh = hid // heads
        z = F.linear(x, self.weight, self.bias)
        q = z[..., :hid].view(b, n, heads, dh).transpose(1, 2)  # [B,h,N,dh]
        k = z[..., hid: 2 * hid].view(b, n, heads, dh).permute(0, 2, 3, 1)  # [B,h,dh,N]
        o = 2 * hid
        q_r1, k_r1, diag = (z[..., o + j * heads: o + (j + 1) * heads].transpose(1, 2) for j in range(3))  # [B,h,N]
        vo = z[..., o + 3 * heads:].view(b, n, heads, hid)  # [B,N(j),h,H]
        scores = torch.baddbmm((q_r1[..., :, None] + k_r1[..., None, :]).reshape(b * heads, n, n),
                               q.reshape(b * heads, n, dh), k.reshape(b * heads, dh, n)).view(b, heads, n, n)
        scores.diagonal(dim1=-2, dim2=-1).add_(diag)
        w = torch.softmax(scores.masked_fill_(mask_zero, float("-inf")), dim=-1)  # [B,h,N,N]
        # a_i = sum over heads m and keys j of w^m_ij vo^m_j, plus the output bias
        a = torch.baddbmm(self.out_bias, w.transpose(1, 2).reshape(b, n, heads * n),
                          vo.transpose(1, 2).reshape(b, heads * n, hid))
        if gate is not None:  # the self-only output: attention weight 1 on the agent itself
            g = gate[..., None]
            a = g * a + (1.0 - g) * (vo.sum(2) + self.out_bias)
        lay = self.layer
        x = _ln(lay.ln1, x + a)
        return _ln(lay.ln2, x + _mlp(lay.ff, x))


@dataclass(frozen=True)
class ActingWeights:
    """Every fused weight of an acting step, for one set of the model's weights (no gradient).

    head_in [C,H], head_in_b [C]: on the encoder output, the value head's first layer (H) then each head's scores of
    the A+1 table tokens (h(A+1), token A = the start token), scaled, with the relation terms folded in |
    token_out [A+1,h,H]: each token's value through head m's part of the output projection | out_bias [H] |
    start_out [H]: the output of attending to the start token only, without out_bias (agent 0; a closed gate)."""

    model: nn.Module
    encoder: tuple[EncoderWeights, ...]
    head_in: Tensor
    head_in_b: Tensor
    token_out: Tensor
    out_bias: Tensor
    start_out: Tensor

    @staticmethod
    @torch.no_grad()
    def of(model: nn.Module) -> "ActingWeights":
        ca = model.cross_attn
        heads, dh, s = ca.heads, ca.dh, ca.scale
        hid = heads * dh
        a_start = model.shape.n_actions
        k_tab, v_tab = ca.project_kv(model.stream_table())  # [A+1,h,dh]
        rq, rk = ca.relations()
        wq, bq = ca.q.weight.view(heads, dh, hid), ca.q.bias.view(heads, dh)
        keys = k_tab + rk[1]  # label 1: a position holding an action
        keys[a_start] = k_tab[a_start] + rk[0]  # label 0: the start token
        rel_q = rq[1].expand(a_start + 1, heads, dh).clone()
        rel_q[a_start] = rq[0]
        w_tok = torch.einsum("thd,hdc->htc", keys, wq).reshape(heads * (a_start + 1), hid) * s
        b_tok = ((bq + rel_q) * keys).sum(-1).T.reshape(-1) * s  # [h(A+1)]
        v1 = model.value_head[0]
        wo = ca.out.weight.view(hid, heads, dh)
        token_out = torch.einsum("ohd,thd->tho", wo, v_tab)  # [A+1,h,H]
        return ActingWeights(
            model=model, encoder=tuple(EncoderWeights.of(layer) for layer in model.encoder),
            head_in=torch.cat([v1.weight, w_tok]), head_in_b=torch.cat([v1.bias, b_tok]), token_out=token_out,
            out_bias=ca.out.bias, start_out=token_out[a_start].sum(0))

    def embed(self, obs: Tensor) -> Tensor:
        """obs [B,N,O] -> h [B,N,H] (CommFormer.embed)."""
        e = self.model.obs_embed
        return _ln(e[3], F.gelu(F.linear(_ln(e[0], obs), e[1].weight, e[1].bias)))

    def encode(self, h: Tensor, hard: Tensor, alive: Tensor, gate: Tensor | None) -> tuple[Tensor, Tensor]:
        """h [B,N,H], hard [B,N,N] bool acting graph (no self-loop), alive [B,N] bool, gate [B,N] f32 or None
        -> (enc [B,N,H], mask_zero [B,N,N] bool: True where M = 0)."""
        mask_zero = ~((hard & alive[:, None, :]) | self.model.enc_label0)  # M = hard * alive_j, self-loop 1
        for enc_w in self.encoder:
            h = enc_w.forward(h, mask_zero[:, None], gate)
        return h, mask_zero

    def value(self, enc: Tensor) -> Tensor:
        """enc [B,N,H] -> V [B,N] (the value head)."""
        hid = self.out_bias.shape[0]
        return self._value_out(F.linear(enc, self.head_in[:hid], self.head_in_b[:hid]))

    def _value_out(self, z: Tensor) -> Tensor:
        vh = self.model.value_head[2]
        return F.linear(F.gelu(z), vh.weight, vh.bias).squeeze(-1)

    def decode(self, enc: Tensor, mask_zero: Tensor, gate: Tensor | None, avail: Tensor, neg_noise: Tensor | None,
               generator: torch.Generator | None, deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
        """The value head and the autoregressive decoder -> (actions [B,N] long, log_prob [B,N], value [B,N]).

        enc [B,N,H], mask_zero [B,N,N] (encode) | gate [B,N] f32 or None | avail [B,N,A] bool | neg_noise [N,B,A]:
        neg_gumbel noise of each agent's sample (None: drawn here from `generator`, agent by agent) |
        deterministic: argmax instead of sampling."""
        m = self.model
        b, n, hid = enc.shape
        heads, n_tok = m.cross_attn.heads, self.token_out.shape[0]
        z = F.linear(enc, self.head_in, self.head_in_b)
        value = self._value_out(z[..., :hid])
        scores = z[..., hid:].view(b, n, heads, n_tok)  # agent i's score of each table token
        # agent i sees position 0 (the start token) and position p >= 1 (the action of agent p-1) where p-1 < i
        # and M[i, p-1] = 1; position N only collects the last action
        unseen = torch.cat([mask_zero.new_zeros(b, n, 1), mask_zero], dim=-1)  # [B,N,N+1]
        tokens = torch.full((b, n + 1), n_tok - 1, dtype=torch.long, device=enc.device)  # each position's token
        logits_all = torch.empty(b, n, avail.shape[-1], device=enc.device)
        base = enc + self.out_bias  # enc_i + the output projection's bias
        att = self.start_out
        for i in range(n):
            if i == 0:
                pre = base[:, 0] + att if gate is None else None
            else:
                tok = tokens[:, : i + 1]  # [B,1+i]
                s = scores[:, i].gather(-1, tok[:, None, :].expand(b, heads, i + 1))  # [B,h,1+i]
                w = torch.softmax(s.masked_fill_(unseen[:, i, None, : i + 1], float("-inf")), dim=-1)
                w = w.view(b, 1, heads * (i + 1))
                vals = self.token_out[tok].transpose(1, 2).reshape(b, heads * (i + 1), hid)
                if gate is None:
                    pre = torch.baddbmm(base[:, i, None], w, vals)[:, 0]  # enc_i + attention output
                else:
                    att = torch.bmm(w, vals)[:, 0]
            if gate is not None:
                g = gate[:, i, None]
                pre = base[:, i] + (g * att + (1.0 - g) * self.start_out)
            u = _ln(m.dec_ln2, pre)
            u = _ln(m.dec_ln3, u + _mlp(m.dec_mlp, u))
            logits = torch.addmm(m.head_b[i], u, m.head_w[i]).masked_fill_(~avail[:, i], NEG)
            logits_all[:, i] = logits
            if deterministic:
                tokens[:, i + 1] = logits.argmax(-1)
            else:
                noise = neg_noise[i] if neg_noise is not None else neg_gumbel(
                    torch.rand(logits.shape, generator=generator, device=logits.device))
                tokens[:, i + 1] = (logits - noise).argmax(-1)
        actions = tokens[:, 1:].contiguous()
        logp = torch.log_softmax(logits_all, -1).gather(-1, actions[..., None]).squeeze(-1)
        return actions, logp, value
