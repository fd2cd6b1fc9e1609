"""The acting step, fused: the CommFormer forward pass of one env step with its projections folded per set of
weights. The reference is CommFormer.encode + CommFormer.autoregressive (commformer/method/model.py); this computes
the same function, equal up to float rounding (tests/test_backends.py holds them together).

Acting runs one encoder pass and N small decoder steps per env step at a small batch (B envs), where the cost is the
number of tensor operations, not arithmetic. Everything that depends on the weights alone is folded once per set of
weights (ActingWeights.of; FastCommFormerPolicy caches it until a parameter changes, a rollout builds it once):
- encoder attention: one linear gives queries and keys augmented with the relation terms (q.rk_1 and
  rq_1.k + rq_1.rk_1, so one product of the two is every label-1 score), the self-loop's label-0 correction, and
  the values already through the output projection (the weights sum to 1 over the keys, so
  out(sum_j w_j v_j) = sum_j w_j W_out v_j + b_out);
- decoder: the stream table and its cross-attention keys and values are constants, so one linear on the encoder
  output gives the value head's first layer and every agent's score of each table token (the start token, each
  action). Agent i attends to positions, but positions holding the same token share key and value, so the softmax
  over positions equals a softmax over tokens with log(count) added, count = how many positions agent i sees that
  hold the token; a decoder step is then an add, a softmax and one product with the out-projected token values;
- the residual add after each feed-forward block is folded into the LayerNorm before it (its bias gains the block's
  output bias; the block's input bias loses W1 times it).
The w * M product of masked_weights is skipped: M is 0/1 and w is already 0 where M is 0 (the product is there for
the gradient). Run everything here under torch.inference_mode (FastCommFormerPolicy.act does).
Shapes: B envs, N agents, O obs width, A actions, T = A+1 stream tokens, H hidden, h heads, dh = H/h.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import NamedTuple, Optional

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from commformer.fast.training import project_kv, relation_terms, relations, stream_table
from commformer.method.model import NEG, neg_gumbel


class Norm(NamedTuple):
    """A LayerNorm over the last dimension: affine parameters (shape [H] each; None for none) and epsilon."""

    weight: Tensor | None
    bias: Tensor | None
    eps: float

    @staticmethod
    def of(m: nn.LayerNorm, bias_shift: Tensor | None = None) -> "Norm":
        return Norm(m.weight, m.bias if bias_shift is None else m.bias + bias_shift, m.eps)

    def __call__(self, x: Tensor) -> Tensor:
        return torch.layer_norm(x, x.shape[-1:], self.weight, self.bias, self.eps)


class Residual(NamedTuple):
    """x + W2 gelu(W1 x + b1) + b2 on x' = x + b2 (the LayerNorm before it adds b2): W2 gelu(W1 x' + b1') + x'
    with b1' = b1 - W1 b2. w1t [H,H'], w2t [H',H] transposed for addmm."""

    w1t: Tensor
    b1: Tensor
    w2t: Tensor

    @staticmethod
    def of(mlp: nn.Sequential) -> tuple["Residual", Tensor]:
        """(the folded block, the shift b2 for the LayerNorm before it) of a Linear-GELU-Linear block."""
        l1, l2 = mlp[0], mlp[2]
        return Residual(l1.weight.T.contiguous(), l1.bias - l1.weight @ l2.bias, l2.weight.T.contiguous()), l2.bias

    def __call__(self, x: Tensor) -> Tensor:
        """x [R,H] (2-d) -> [R,H]."""
        return torch.addmm(x, F.gelu(torch.addmm(self.b1, x, self.w1t)), self.w2t)


@dataclass(frozen=True)
class EncoderWeights:
    """One encoder layer, fused. Rows of `weight` [C,H] (C = 2h(dh+2) + h + hH), in order: per head the augmented
    query [s*q, s*q.rk_1, 1] (dh+2), per head the augmented key [k, 1, s*(rq_1.k + rq_1.rk_1)] (dh+2), so one
    product of the two gives every label-1 score; the self-loop's label-0 minus label-1 terms per head (h); per head
    the values through the output projection (hH; its bias is out_bias). The constant 1 is a zero row with bias 1."""

    heads: int
    weight: Tensor
    bias: Tensor
    out_bias: Tensor  # [H]
    ln1: Norm  # shifted by the feed-forward's output bias (Residual)
    ff: Residual
    ln2: Norm

    @staticmethod
    def of(layer: nn.Module) -> "EncoderWeights":
        at = layer.attn
        heads, dh, s = at.heads, at.dh, at.scale
        hid = heads * dh
        wq, bq = at.q.weight.view(heads, dh, hid), at.q.bias.view(heads, dh)
        wk, bk = at.kv.weight[:hid].view(heads, dh, hid), at.kv.bias[:hid].view(heads, dh)
        wv, bv = at.kv.weight[hid:].view(heads, dh, hid), at.kv.bias[hid:].view(heads, dh)
        rq, rk, c = relation_terms(at)  # [L,h,dh], [L,h,dh], [h,L]
        wo = at.out.weight.view(hid, heads, dh)  # out[:, block m] acts on head m's values
        q_rk = [torch.einsum("hd,hdc->hc", rk[lab], wq) * s for lab in (0, 1)]  # [h,H]: rows of s*q^m.rk_l^m
        q_rk_b = [(rk[lab] * bq).sum(-1) * s for lab in (0, 1)]  # [h]
        rq_k = [torch.einsum("hd,hdc->hc", rq[lab], wk) * s for lab in (0, 1)]
        rq_k_b = [((rq[lab] * bk).sum(-1) + c[:, lab]) * s for lab in (0, 1)]  # with the constant rq.rk
        zero, one = wq.new_zeros(heads, 1, hid), bq.new_ones(heads, 1)
        w_q = torch.cat([wq * s, q_rk[1][:, None], zero], dim=1).reshape(-1, hid)  # [h(dh+2),H]
        b_q = torch.cat([bq * s, q_rk_b[1][:, None], one], dim=1).reshape(-1)
        w_k = torch.cat([wk, zero, rq_k[1][:, None]], dim=1).reshape(-1, hid)
        b_k = torch.cat([bk, one, rq_k_b[1][:, None]], dim=1).reshape(-1)
        vo = torch.einsum("ohd,hdc->hoc", wo, wv).reshape(heads * hid, hid)  # [hH,H]: W_out[:, m] W_v^m
        vo_b = torch.einsum("ohd,hd->ho", wo, bv).reshape(heads * hid)
        weight = torch.cat([w_q, w_k, q_rk[0] - q_rk[1] + rq_k[0] - rq_k[1], vo])
        bias = torch.cat([b_q, b_k, q_rk_b[0] - q_rk_b[1] + rq_k_b[0] - rq_k_b[1], vo_b])
        ff, shift = Residual.of(layer.ff)
        return EncoderWeights(heads, weight, bias, at.out.bias, Norm.of(layer.ln1, shift), ff, Norm.of(layer.ln2))

    def __call__(self, x: Tensor, mask_zero: Tensor, gate: Tensor | None) -> Tensor:
        """x [B,N,H], mask_zero [B,1,N,N] bool (True where M = 0), gate [B,N] f32 or None -> [B,N,H]."""
        b, n, hid = x.shape
        heads = self.heads
        da = hid // heads + 2  # augmented head width
        z = F.linear(x, self.weight, self.bias)
        o = 2 * heads * da
        q = z[..., : heads * da].view(b, n, heads, da).transpose(1, 2).reshape(b * heads, n, da)
        k = z[..., heads * da: o].view(b, n, heads, da).permute(0, 2, 3, 1).reshape(b * heads, da, n)
        vo = z[..., o + heads:].view(b, n, heads, hid)  # [B,N(j),h,H]
        scores = torch.bmm(q, k).view(b, heads, n, n)
        scores.diagonal(dim1=-2, dim2=-1).add_(z[..., o: o + heads].transpose(1, 2))  # the self-loop: label 0
        w = torch.softmax(scores.masked_fill_(mask_zero, float("-inf")), dim=-1)  # [B,h,N,N]
        # a_i = sum over heads m and keys j of w^m_ij vo^m_j, plus the output bias
        a = torch.baddbmm(self.out_bias, w.transpose(1, 2).reshape(b, n, heads * n),
                          vo.transpose(1, 2).reshape(b, heads * n, hid))
        if gate is not None:  # the self-only output: attention weight 1 on the agent itself
            g = gate[..., None]
            a = g * a + (1.0 - g) * (vo.sum(2) + self.out_bias)
        x = self.ln1(x + a).view(b * n, hid)
        return self.ln2(self.ff(x)).view(b, n, hid)


@dataclass(frozen=True)
class ActingWeights:
    """Every fused weight of an acting step, for one set of the model's weights (no gradient).

    embed: LayerNorm(O) without its affine part, the linear with that part folded in (w [H,O], b [H]; as
    CommFormer.embed), LayerNorm(H) | encoder: EncoderWeights per layer |
    head_in [H+hT,H], head_in_b: on the encoder output, the value head's first layer (H rows), then each head's
    scores of the T table tokens (token A = the start token), scaled, relation terms folded in | value_w [1,H],
    value_b [1] | token_out [hT,H]: each token's value through head m's block of the output projection (row m*T + t) |
    out_bias [H] | start_out [H]: the output of attending to the start token only, without out_bias (agent 0, a
    closed gate) | dec_ln2 (shifted for dec_mlp), dec_mlp, dec_ln3 | head_w, head_b: per agent [H,A], [A] | start [T]: 1 at
    the start token | self_loop [N,N] bool."""

    embed_ln0: Norm
    embed_w: Tensor
    embed_b: Tensor
    embed_ln1: Norm
    encoder: tuple[EncoderWeights, ...]
    heads: int
    head_in: Tensor
    head_in_b: Tensor
    value_w: Tensor
    value_b: Tensor
    token_out: Tensor
    out_bias: Tensor
    start_out: Tensor
    dec_ln2: Norm
    dec_mlp: Residual
    dec_ln3: Norm
    head_w: tuple[Tensor, ...]
    head_b: tuple[Tensor, ...]
    start: Tensor
    self_loop: Tensor
    obs_norm: Optional[nn.Module] = None  # the model's RunningObsNorm (read live: its statistics are not folded in)

    @staticmethod
    @torch.no_grad()
    def of(model: nn.Module) -> "ActingWeights":
        ca = model.cross_attn
        heads, dh, s = ca.heads, ca.dh, ca.scale
        hid = heads * dh
        a_start = model.shape.n_actions
        n_tok = a_start + 1
        k_tab, v_tab = project_kv(ca, stream_table(model))  # [T,h,dh]
        rq, rk = relations(ca)
        wq, bq = ca.q.weight.view(heads, dh, hid), ca.q.bias.view(heads, dh)
        keys = k_tab + rk[1]  # label 1: a position holding an action
        keys[a_start] = k_tab[a_start] + rk[0]  # label 0: the start token
        rel_q = rq[1].expand(n_tok, heads, dh).clone()
        rel_q[a_start] = rq[0]
        w_tok = torch.einsum("thd,hdc->htc", keys, wq).reshape(heads * n_tok, hid) * s
        b_tok = ((bq + rel_q) * keys).sum(-1).T.reshape(-1) * s  # [hT]
        wo = ca.out.weight.view(hid, heads, dh)
        token_out = torch.einsum("ohd,thd->hto", wo, v_tab)  # [h,T,H]
        e, v = model.obs_embed, model.value_head
        dec_mlp, shift = Residual.of(model.dec_mlp)
        start = torch.zeros(n_tok, device=k_tab.device)
        start[a_start] = 1.0
        return ActingWeights(
            embed_ln0=Norm(None, None, e[0].eps), embed_w=e[1].weight * e[0].weight,
            embed_b=torch.addmv(e[1].bias, e[1].weight, e[0].bias), embed_ln1=Norm.of(e[3]),
            encoder=tuple(EncoderWeights.of(layer) for layer in model.encoder), heads=heads,
            head_in=torch.cat([v[0].weight, w_tok]), head_in_b=torch.cat([v[0].bias, b_tok]), value_w=v[2].weight,
            value_b=v[2].bias, token_out=token_out.reshape(heads * n_tok, hid), out_bias=ca.out.bias,
            start_out=token_out[:, a_start].sum(0), dec_ln2=Norm.of(model.dec_ln2, shift), dec_mlp=dec_mlp,
            dec_ln3=Norm.of(model.dec_ln3), head_w=model.head_w.unbind(0), head_b=model.head_b.unbind(0), start=start,
            self_loop=model.enc_labels == 0, obs_norm=model.obs_norm)

    def embed(self, obs: Tensor) -> Tensor:
        """obs [B,N,O] -> h [B,N,H] (CommFormer.embed)."""
        if self.obs_norm is not None:
            obs = self.obs_norm(obs)
        return self.embed_ln1(F.gelu(F.linear(self.embed_ln0(obs), self.embed_w, self.embed_b)))

    def encode(self, h: Tensor, hard: Tensor, alive: Tensor, gate: Tensor | None) -> tuple[Tensor, Tensor]:
        """h [B,N,H], hard [B,N,N] bool acting graph (no self-loop), alive [B,N] bool, gate [B,N] f32 or None
        -> (enc [B,N,H], mask_zero [B,N,N] bool: True where M = 0)."""
        mask_zero = ~((hard & alive[:, None, :]) | self.self_loop)  # M = hard * alive_j, self-loop 1
        for layer in self.encoder:
            h = layer(h, mask_zero[:, None], gate)
        return h, mask_zero

    def value(self, enc: Tensor) -> Tensor:
        """enc [B,N,H] -> V [B,N] (the value head)."""
        hid = self.out_bias.shape[0]
        return self._value_out(F.linear(enc, self.head_in[:hid], self.head_in_b[:hid]))

    def _value_out(self, z: Tensor) -> Tensor:
        return F.linear(F.gelu(z), self.value_w, self.value_b).squeeze(-1)

    def decode(self, enc: Tensor, mask_zero: Tensor, gate: Tensor | None, avail: Tensor, neg_noise: Tensor | None,
               generator: torch.Generator | None, deterministic: bool) -> tuple[Tensor, Tensor, Tensor]:
        """The value head and the autoregressive decoder -> (actions [B,N] long, log_prob [B,N], value [B,N]).

        enc [B,N,H], mask_zero [B,N,N] (encode) | gate [B,N] f32 or None | avail [B,N,A] bool | neg_noise [N,B,A]:
        neg_gumbel noise of each agent's sample (None: drawn here from `generator`, agent by agent) |
        deterministic: argmax instead of sampling."""
        b, n, hid = enc.shape
        heads, n_tok = self.heads, self.start.shape[0]
        z = F.linear(enc, self.head_in, self.head_in_b)
        value = self._value_out(z[..., :hid])
        scores = z[..., hid:].view(b, n, heads, n_tok).unbind(1)  # per agent i: [B,h,T] scores of each token
        # sees[b, i, j] = 1 where agent i sees agent j's action (j < i and M[i, j] = 1; D of docs/method.md, "Decoder")
        sees = (~mask_zero).tril(-1).float().unsqueeze(-1).unbind(2)  # per agent j: [B,N,1]
        counts = self.start.expand(b, n, n_tok).clone()  # visible positions per token: the start token, once
        counts_of = counts.unsqueeze(2).unbind(1)  # per agent i: a [B,1,T] view
        base = (enc + self.out_bias).unbind(1)  # enc_i + the output projection's bias
        unavail = (~avail).unbind(1)
        noise = None if neg_noise is None else neg_noise.unbind(0)
        actions, logits_all = [], []
        for i in range(n):
            if i == 0:
                att = self.start_out
            else:
                logit = scores[i] + counts_of[i].log()  # log(0) = -inf: tokens agent i does not see
                w = torch.softmax(logit, dim=-1).view(b, heads * n_tok)
            if gate is None:
                pre = base[0] + att if i == 0 else torch.addmm(base[i], w, self.token_out)  # enc_i + attention
            else:
                att = att if i == 0 else w @ self.token_out
                g = gate[:, i, None]
                pre = base[i] + (g * att + (1.0 - g) * self.start_out)
            u = self.dec_ln3(self.dec_mlp(self.dec_ln2(pre)))
            logits = torch.addmm(self.head_b[i], u, self.head_w[i]).masked_fill_(unavail[i], NEG)
            logits_all.append(logits)
            if deterministic:
                a = logits.argmax(-1)
            else:
                eps = noise[i] if noise is not None else neg_gumbel(
                    torch.rand(logits.shape, generator=generator, device=logits.device))
                a = (logits - eps).argmax(-1)
            actions.append(a)
            if i + 1 < n:  # the later agents that see agent i count its action's token once more
                counts.scatter_add_(2, a.view(b, 1, 1).expand(b, n, 1), sees[i])
        actions_t = torch.stack(actions, dim=1)
        logp = torch.log_softmax(torch.stack(logits_all, dim=1), -1).gather(-1, actions_t[..., None]).squeeze(-1)
        return actions_t, logp, value
