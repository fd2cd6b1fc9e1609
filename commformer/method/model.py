"""The CommFormer policy: graph-masked encoder with a value head, and a one-block autoregressive action decoder.

Shapes: B batch (envs, or T*B in updates), N agents, O obs width, A actions, H hidden width.
The decoder reads a stream of N positions: position 0 holds a start token, position p >= 1 the one-hot of a_{p-1};
row i of the output gives agent i's action logits (REFERENCE.md 2). Acting decodes agents 0..N-1 in turn, each step
batched over B; the update scores all agents in one teacher-forced pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
import torch.nn.functional as F
from torch import Tensor, nn

from commformer.config import AlgoConfig
from commformer.method.attention import EncoderLayer, RelationAttention, gelu_mlp, masked_weights
from commformer.method.kernels import dense, gelu_mlp_forward, linear
from commformer.method.gates import TemporalGate

NEG = -1e9  # logit of an unavailable action
BLOCK_HEADS_MAX = 8  # up to this many agents the heads run as one block-diagonal product (N times the work)
OBS_MEMO_MIN = 1 << 16  # normalized_obs keeps results from this many values on (an update's batch, not a step's)


@dataclass(frozen=True)
class ModelShape:
    """What the model needs to know: the env-derived sizes and, from the algo config, its own size (no defaults
    here: they live in AlgoConfig)."""

    n_agents: int
    obs_dim: int
    n_actions: int
    hidden: int
    heads: int
    layers: int
    dropout: float
    gate: bool
    gate_init_p: float
    obs_norm: bool = False

    @staticmethod
    def of(n_agents: int, obs_dim: int, n_actions: int, algo: AlgoConfig) -> "ModelShape":
        """The shape of an env (N agents, O obs width, A actions) under an algo config."""
        return ModelShape(n_agents, obs_dim, n_actions, algo.hidden, algo.heads, algo.layers, algo.dropout, algo.gate,
                          algo.gate_init_p, algo.obs_norm)


def masked_logits(logits: Tensor, avail: Tensor) -> Tensor:
    """logits [...,A] f32 with a large negative value where avail [...,A] bool is False."""
    return logits.masked_fill(~avail, NEG)


def neg_gumbel(u: Tensor) -> Tensor:
    """log(-log(u)) of uniforms u (clamped away from 0 and 1 in place): minus a standard Gumbel sample."""
    return torch.log(-torch.log(u.clamp_(1e-10, 1.0 - 1e-7)))


def sample_categorical(logits: Tensor, generator: torch.Generator | None, neg_noise: Tensor | None = None) -> Tensor:
    """Gumbel-max sample of Categorical(logits): [...,A] -> [...] long. neg_noise [...,A]: neg_gumbel of uniforms
    drawn beforehand (the same sample as drawing them here, from the same generator state)."""
    if neg_noise is None:
        neg_noise = neg_gumbel(torch.rand(logits.shape, generator=generator, device=logits.device))
    return (logits - neg_noise).argmax(-1)


class RunningObsNorm(nn.Module):
    """Per-feature running mean and variance of observations; forward: (x - mean) / sqrt(var + eps), clipped to
    [-clip, clip]. The statistics are buffers (saved with the model's weights); update() merges a batch into them
    (Chan et al.'s parallel formula, in float64). Before any update: mean 0, var 1, so forward is the identity up to
    the clip."""

    def __init__(self, dim: int, eps: float = 1e-8, clip: float = 10.0) -> None:
        super().__init__()
        self.eps, self.clip = eps, clip
        self.register_buffer("mean", torch.zeros(dim))
        self.register_buffer("var", torch.ones(dim))
        self.register_buffer("count", torch.zeros((), dtype=torch.float64))

    def forward(self, x: Tensor) -> Tensor:
        """x [...,O] -> [...,O] normalised."""
        return ((x - self.mean) * torch.rsqrt(self.var + self.eps)).clamp(-self.clip, self.clip)

    @torch.no_grad()
    def update(self, x: Tensor) -> None:
        """Merge x [M,O] (M observations) into the statistics; M = 0 changes nothing."""
        if x.shape[0] == 0:
            return
        x = x.double()
        n, mean, var = float(x.shape[0]), x.mean(0), x.var(0, unbiased=False)
        total = self.count.item() + n
        delta = mean - self.mean.double()
        new_mean = self.mean.double() + delta * (n / total)
        m2 = self.var.double() * self.count.item() + var * n + delta.square() * (self.count.item() * n / total)
        self.mean.copy_(new_mean)
        self.var.copy_(m2 / total)
        self.count.fill_(total)


class CommFormer(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        n, o, a, h = shape.n_agents, shape.obs_dim, shape.n_actions, shape.hidden
        self.obs_norm = RunningObsNorm(o) if shape.obs_norm else None
        self.obs_embed = nn.Sequential(nn.LayerNorm(o), nn.Linear(o, h), nn.GELU(), nn.LayerNorm(h))
        self.encoder = nn.ModuleList(EncoderLayer(h, shape.heads, shape.dropout) for _ in range(shape.layers))
        self.value_head = gelu_mlp(h, h, 1)
        self.gate = TemporalGate(h, shape.gate_init_p) if shape.gate else None
        # decoder: one block
        self.action_embed = nn.Sequential(nn.Linear(a + 1, h, bias=False), nn.GELU(), nn.LayerNorm(h))
        self.self_attn = RelationAttention(h, shape.heads, shape.dropout)
        self.cross_attn = RelationAttention(h, shape.heads, shape.dropout)
        self.dec_ln1, self.dec_ln2, self.dec_ln3 = nn.LayerNorm(h), nn.LayerNorm(h), nn.LayerNorm(h)
        self.dec_mlp = gelu_mlp(h, h, h)
        self.head_w = nn.Parameter(torch.randn(n, h, a) * (0.01 / h ** 0.5))  # per-agent action heads
        self.head_b = nn.Parameter(torch.zeros(n, a))
        # edge label 0: the self-loop (encoder) and the start token (decoder); 1 elsewhere
        self.register_buffer("enc_label0", torch.eye(n, dtype=torch.bool), persistent=False)
        dec_label0 = torch.zeros(n, n, dtype=torch.bool)
        dec_label0[:, 0] = True
        self.register_buffer("dec_label0", dec_label0, persistent=False)
        self.register_buffer("tokens", torch.eye(a + 1), persistent=False)
        self.register_buffer("start_token", torch.arange(a + 1) == a, persistent=False)  # [A+1]: edge label 0
        # the affine part of the observation LayerNorm lives in the linear after it (embed)
        self.register_buffer("obs_unit", torch.ones(o), persistent=False)
        self.register_buffer("obs_zero", torch.zeros(o), persistent=False)
        self._obs_memo: tuple[tuple, Tensor, Tensor] | None = None  # normalized_obs: (key, input, result)

    # ---- encoder -------------------------------------------------------------------------------------------------
    def embed(self, obs: Tensor) -> Tensor:
        """obs [B,N,O] -> h [B,N,H], the pre-attention embedding (the gate reads it): LayerNorm -> Linear -> GELU ->
        LayerNorm. The first LayerNorm's affine part is folded into the linear after it, W (gamma * x + beta) + b =
        (W gamma) x + (W beta + b): the normalised observation needs no gradient, so a backward pass skips the
        [R,H] x [H,O] product at the O-wide input."""
        ln, lin = self.obs_embed[0], self.obs_embed[1]
        if self.obs_norm is not None:
            obs = self.obs_norm(obs)
        x = linear(self.normalized_obs(obs), lin.weight * ln.weight, torch.addmv(lin.bias, lin.weight, ln.bias))
        return self.obs_embed[3](self.obs_embed[2](x))

    def normalized_obs(self, obs: Tensor) -> Tensor:
        """obs [...,O] normalised over O (the embedding LayerNorm before its affine part; no parameters, no
        gradient). The result for the last input is kept while that input is unchanged (same storage, offset, shape,
        strides and version counter; the kept reference stops its memory being reused), so the epochs of an update
        normalise the rollout's observations once."""
        memo = (obs.numel() >= OBS_MEMO_MIN and not obs.requires_grad and not obs.is_inference()
                and not torch.is_inference_mode_enabled())
        key = (obs.data_ptr(), obs.storage_offset(), obs.shape, obs.stride(), obs._version) if memo else None
        if memo and self._obs_memo is not None and self._obs_memo[0] == key:
            return self._obs_memo[2]
        ln = self.obs_embed[0]
        x = F.layer_norm(obs, ln.normalized_shape, self.obs_unit, self.obs_zero, ln.eps)  # (faster than no affine)
        if memo:
            self._obs_memo = (key, obs, x)
        return x

    def gate_prob(self, h: Tensor) -> Tensor | None:
        """p [B,N] of receiving this step, or None without a gate."""
        return None if self.gate is None else self.gate(h)

    def encode(self, h: Tensor, mask: Tensor, gate: Tensor | None) -> tuple[Tensor, Tensor]:
        """h [B,N,H], M [B,N,N] f32, gate [B,N] f32 or None -> (enc [B,N,H], value [B,N])."""
        for layer in self.encoder:
            h = layer(h, mask, self.enc_label0, gate)
        return h, gelu_mlp_forward(self.value_head, h).squeeze(-1)

    # ---- decoder -------------------------------------------------------------------------------------------------
    def stream_table(self) -> Tensor:
        """[A+1,H]: the action stream after its self-attention, per token. Row a < A: a position holding action a
        (it attends to the start token and itself, D_self); row A: the start position (it attends to itself only).
        The stream is a lookup in this table because D_self lets no position see another action."""
        a_start = self.shape.n_actions
        e = self.action_embed(self.tokens)  # [A+1,H]; token A is the start token
        sa = self.self_attn
        q = sa.split(sa.q(e))
        k, v = sa.project_kv(e)  # [A+1,h,dh]
        rq, rk = sa.relations()
        s_start = ((q + rq[0]) * (k[a_start] + rk[0])).sum(-1) * sa.scale  # [A+1,h]
        s_self = ((q + rq[1]) * (k + rk[1])).sum(-1) * sa.scale
        w = sa.drop(torch.softmax(torch.stack([s_start, s_self], dim=-1), dim=-1))  # [A+1,h,2]
        o = w[..., 0:1] * v[a_start] + w[..., 1:2] * v
        is_start = torch.zeros(a_start + 1, 1, 1, dtype=torch.bool, device=e.device)
        is_start[a_start] = True
        o = torch.where(is_start, v[a_start], o)
        return self.dec_ln1(e + sa.out(o.flatten(-2)))

    def stream_tokens(self, actions: Tensor) -> Tensor:
        """Table rows of the stream's positions: actions [B,N] long (a_{N-1} unused) -> [B,N] long (row A = start)."""
        start = torch.full_like(actions[:, :1], self.shape.n_actions)
        return torch.cat([start, actions[:, :-1]], dim=1)

    def head(self, y: Tensor, enc: Tensor, rows: slice) -> Tensor:
        """The block's tail and the per-agent heads: y attention output [B,R,H], enc [B,R,H] -> logits [B,R,A]."""
        y = self.dec_ln2(enc + y)
        out = self.dec_ln3(y + gelu_mlp_forward(self.dec_mlp, y))
        w, b = self.head_w[rows], self.head_b[rows]
        r = w.shape[0]
        if 1 < r <= BLOCK_HEADS_MAX:  # one product with the block-diagonal [R*H, R*A] (no batch transposes)
            n_b, hid, a = out.shape[0], w.shape[1], w.shape[2]
            return linear(out.reshape(n_b, r * hid), torch.block_diag(*w.transpose(1, 2).unbind(0)),
                          b.reshape(-1)).view(n_b, r, a)
        return torch.einsum("brh,rha->bra", out, w) + b

    def decode(self, enc: Tensor, tokens: Tensor, table: Tensor, dmask: Tensor, gate: Tensor | None) -> Tensor:
        """Teacher-forced action logits (unmasked) of all agents.

        enc [B,N,H] | tokens [B,N] long: stream_tokens() | table [A+1,H]: stream_table() | dmask D [B,N,N] f32 |
        gate [B,N] or None -> [B,N,A]. Positions holding the same token share its key and value (the edge label is
        0 exactly at the start token), so each agent scores the T = A+1 table tokens once (one [R,H] x [H,hT]
        product with the query projection folded in), the positions take their token's score, and after the masked
        softmax the weights are summed per token before mixing the token values, which are already through the
        output projection (one [R,hT] x [hT,H] product): the same function as attending over keys and values
        gathered per position, with the same gradients."""
        ca = self.cross_attn
        b, n = tokens.shape
        heads, dh, hid = ca.heads, ca.dh, ca.q.out_features
        n_tok = table.shape[0]
        k_tab, v_tab = ca.project_kv(table)  # [T,h,dh]
        rq, rk = ca.relations()  # [L,h,dh]
        label0 = self.start_token[:, None, None]
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
        closed = ca.out(v_tab[self.shape.n_actions].flatten())
        if gate is not None:
            g = gate[..., None]
            y = g * y + (1.0 - g) * closed
        return self.head(y, enc, slice(None))

    def teacher_forced(self, enc: Tensor, actions: Tensor, dmask: Tensor, gate: Tensor | None,
                       avail: Tensor) -> tuple[Tensor, Tensor]:
        """All agents in one pass: actions [B,N] long, avail [B,N,A] bool -> (log_prob [B,N], entropy [B,N])."""
        logits = masked_logits(self.decode(enc, self.stream_tokens(actions), self.stream_table(), dmask, gate), avail)
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, actions[..., None]).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy

    def autoregressive(self, enc: Tensor, dmask: Tensor, gate: Tensor | None, avail: Tensor,
                       generator: torch.Generator | None, deterministic: bool,
                       neg_noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Decode agents 0..N-1 in turn, each step batched over B -> (actions [B,N] long, log_prob [B,N]).

        Same function as teacher_forced, computed incrementally: the stream comes from stream_table(), keys and
        values are projected once per token, and agent i scores only the positions 0..i it may see. neg_noise
        [N,B,A]: each agent's sampling noise drawn beforehand (neg_gumbel; None draws it here from `generator`,
        agent by agent). This is the readable form; acting runs method.acting.ActingWeights, which equals it up to
        float rounding."""
        b, n = avail.shape[:2]
        a_start = self.shape.n_actions
        ca = self.cross_attn
        table = self.stream_table()
        k_tab, v_tab = ca.project_kv(table)  # [A+1,h,dh]
        rq, rk = ca.relations()
        q = ca.split(ca.q(enc))  # [B,N,h,dh]
        s_start = ((q + rq[0]) * (k_tab[a_start] + rk[0])).sum(-1) * ca.scale  # [B,N,h]
        q1 = q + rq[1]
        k1_tab = k_tab + rk[1]
        v_start = v_tab[a_start]  # [h,dh]
        closed = ca.out(v_start.flatten())  # [H]
        actions = torch.zeros(b, n, dtype=torch.long, device=avail.device)
        logps = torch.zeros(b, n, device=avail.device)
        for i in range(n):
            if i == 0:
                y = closed.expand(b, 1, -1)
            else:
                prev = actions[:, :i]
                s_prev = torch.einsum("bhd,bjhd->bhj", q1[:, i], k1_tab[prev]) * ca.scale  # [B,h,i]
                logits = torch.cat([s_start[:, i, :, None], s_prev], dim=-1)  # [B,h,1+i]
                d = dmask[:, i, None, : i + 1]  # [B,1,1+i]
                w = torch.softmax(logits.masked_fill(d == 0, float("-inf")), dim=-1) * d
                o = w[..., :1] * v_start + torch.einsum("bhj,bjhd->bhd", w[..., 1:], v_tab[prev])
                y = ca.out(o.flatten(-2))[:, None]
            if gate is not None:
                g = gate[:, i, None, None]
                y = g * y + (1.0 - g) * closed
            logits = masked_logits(self.head(y, enc[:, i: i + 1], slice(i, i + 1))[:, 0], avail[:, i])
            a = logits.argmax(-1) if deterministic else sample_categorical(
                logits, generator, None if neg_noise is None else neg_noise[i])
            actions[:, i] = a
            logps[:, i] = torch.log_softmax(logits, -1).gather(-1, a[:, None]).squeeze(-1)
        return actions, logps
