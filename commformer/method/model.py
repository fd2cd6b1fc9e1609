"""The CommFormer network: a graph-masked encoder with a value head, and a one-block autoregressive action decoder
(docs/method.md, "Attention with the graph" and "Decoder").

Encoder: h_i = LN(GELU(W LN(o_i) + b)) per agent, then L layers of relation attention under the mask M; a shared
value head on each agent's output. Decoder: a stream of N positions, position 0 the start token and position p >= 1
the one-hot of a_{p-1}, embedded; one block
    x = LN(x + SelfAttn(x; D_self))                      D_self[p, q] = (q == 0) or (q == p)
    y = LN(enc + Attn(query = enc, key = value = x; D))  D[i, p] = (p == 0) or (p - 1 < i and M[i, p - 1] = 1)
    out = LN(y + MLP(y)); logits_i = out_i W_i + b_i     per-agent heads
so agent i's action depends on the observations and earlier actions of the agents it hears and on nothing else.
Shapes: B batch, N agents, O obs width, A actions, H hidden.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from commformer.method.attention import EncoderLayer, RelationAttention, gelu_mlp
from commformer.method.gates import TemporalGate

NEG = -1e9  # logit of an unavailable action


@dataclass(frozen=True)
class ModelShape:
    """The env-derived sizes (N agents, O obs width, A actions) and the network's own (from the algo config)."""

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


def masked_logits(logits: Tensor, avail: Tensor) -> Tensor:
    """logits [...,A] f32 with a large negative value where avail [...,A] bool is False."""
    return logits.masked_fill(~avail, NEG)


def neg_gumbel(u: Tensor) -> Tensor:
    """log(-log(u)) of uniforms u (clamped away from 0 and 1 in place): minus a standard Gumbel sample."""
    return torch.log(-torch.log(u.clamp_(1e-10, 1.0 - 1e-7)))


def sample_categorical(logits: Tensor, generator: torch.Generator | None, neg_noise: Tensor | None = None) -> Tensor:
    """Gumbel-max sample of Categorical(logits): [...,A] -> [...] long. neg_noise [...,A]: neg_gumbel of uniforms
    drawn beforehand (None: drawn here from `generator`)."""
    if neg_noise is None:
        neg_noise = neg_gumbel(torch.rand(logits.shape, generator=generator, device=logits.device))
    return (logits - neg_noise).argmax(-1)


class RunningObsNorm(nn.Module):
    """Per-feature running mean and variance of observations; forward: (x - mean) / sqrt(var + eps), clipped to
    [-clip, clip]. The statistics are buffers (saved with the model's weights); update() merges a batch into them
    (Chan et al.'s parallel formula, in float64). Before any update: mean 0, var 1 (the identity up to the clip)."""

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
        # edge labels: 0 for the self-loop (encoder) and for the start token (decoder, position 0); 1 elsewhere
        self.register_buffer("enc_labels", (~torch.eye(n, dtype=torch.bool)).long(), persistent=False)
        dec_labels = torch.ones(n, n, dtype=torch.long)
        dec_labels[:, 0] = 0
        self.register_buffer("dec_labels", dec_labels, persistent=False)
        self.register_buffer("tokens", torch.eye(a + 1), persistent=False)  # one-hots; token A = the start token

    # ---- encoder -------------------------------------------------------------------------------------------------
    def embed(self, obs: Tensor) -> Tensor:
        """obs [B,N,O] -> h [B,N,H], the pre-attention embedding (the gate reads it)."""
        if self.obs_norm is not None:
            obs = self.obs_norm(obs)
        return self.obs_embed(obs)

    def gate_prob(self, h: Tensor) -> Tensor | None:
        """p [B,N] of receiving this step, or None without a gate."""
        return None if self.gate is None else self.gate(h)

    def encode(self, h: Tensor, mask: Tensor, gate: Tensor | None) -> tuple[Tensor, Tensor]:
        """h [B,N,H], M [B,N,N] f32, gate [B,N] f32 or None -> (enc [B,N,H], value [B,N])."""
        for layer in self.encoder:
            h = layer(h, mask, self.enc_labels, gate)
        return h, self.value_head(h).squeeze(-1)

    # ---- decoder -------------------------------------------------------------------------------------------------
    def stream(self, actions: Tensor) -> Tensor:
        """The decoder's input stream after its self-attention: actions [B,N] long (a_{N-1} unused) -> [B,N,H].
        Position 0 holds the start token, position p >= 1 the action of agent p-1."""
        b, n = actions.shape
        start = torch.full_like(actions[:, :1], self.shape.n_actions)
        x = self.action_embed(self.tokens[torch.cat([start, actions[:, :-1]], dim=1)])  # [B,N,H]
        d_self = torch.eye(n, device=x.device)
        d_self[:, 0] = 1.0  # D_self[p, q] = (q == 0) or (q == p)
        return self.dec_ln1(x + self.self_attn(x, x, d_self.expand(b, n, n), self.dec_labels))

    def decode(self, enc: Tensor, actions: Tensor, dmask: Tensor, gate: Tensor | None) -> Tensor:
        """Teacher-forced action logits (before the availability mask) of all agents.

        enc [B,N,H] | actions [B,N] long | dmask D [B,N,N] f32 | gate [B,N] f32 or None -> [B,N,A].
        A closed gate replaces the attention over D by attention to the start token alone."""
        x = self.stream(actions)
        y = self.cross_attn(enc, x, dmask, self.dec_labels)
        if gate is not None:
            start_only = torch.zeros_like(dmask)
            start_only[..., 0] = 1.0
            g = gate[..., None]
            y = g * y + (1.0 - g) * self.cross_attn(enc, x, start_only, self.dec_labels)
        y = self.dec_ln2(enc + y)
        out = self.dec_ln3(y + self.dec_mlp(y))
        return torch.einsum("bnh,nha->bna", out, self.head_w) + self.head_b

    def teacher_forced(self, enc: Tensor, actions: Tensor, dmask: Tensor, gate: Tensor | None,
                       avail: Tensor) -> tuple[Tensor, Tensor]:
        """All agents in one pass: actions [B,N] long, avail [B,N,A] bool -> (log_prob [B,N], entropy [B,N])."""
        logp_all = torch.log_softmax(masked_logits(self.decode(enc, actions, dmask, gate), avail), dim=-1)
        logp = logp_all.gather(-1, actions[..., None]).squeeze(-1)
        return logp, -(logp_all.exp() * logp_all).sum(-1)

    def autoregressive(self, enc: Tensor, dmask: Tensor, gate: Tensor | None, avail: Tensor,
                       generator: torch.Generator | None, deterministic: bool,
                       neg_noise: Tensor | None = None) -> tuple[Tensor, Tensor]:
        """Decode agents 0..N-1 in turn -> (actions [B,N] long, log_prob [B,N]).

        Agent i's logits are row i of a teacher-forced pass over the actions chosen so far (it sees only positions
        0..i, which hold a_0..a_{i-1}). neg_noise [N,B,A]: each agent's sampling noise drawn beforehand (neg_gumbel;
        None draws it here from `generator`, agent by agent)."""
        b, n = avail.shape[:2]
        actions = torch.zeros(b, n, dtype=torch.long, device=avail.device)
        logps = torch.zeros(b, n, device=avail.device)
        for i in range(n):
            logits = masked_logits(self.decode(enc, actions, dmask, gate)[:, i], avail[:, i])
            a = logits.argmax(-1) if deterministic else sample_categorical(
                logits, generator, None if neg_noise is None else neg_noise[i])
            actions[:, i] = a
            logps[:, i] = torch.log_softmax(logits, -1).gather(-1, a[:, None]).squeeze(-1)
        return actions, logps
