"""The CommFormer policy: graph-masked encoder with a value head, and a one-block autoregressive action decoder.

Shapes: B batch (envs, or T*B in updates), N agents, O obs width, A actions, H hidden width.
The decoder reads a stream of N positions: position 0 holds a start token, position p >= 1 the one-hot of a_{p-1};
row i of the output gives agent i's action logits (REFERENCE.md 2). Acting decodes agents 0..N-1 in turn, each step
batched over B; the update scores all agents in one teacher-forced pass.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from commformer.attention import (EncoderLayer, RelationAttention, decoder_labels, encoder_labels, gelu_mlp,
                                  stream_self_mask)
from commformer.gates import TemporalGate

NEG = -1e9  # logit of an unavailable action


@dataclass(frozen=True)
class ModelShape:
    """What the model needs to know of the env and of its own size."""

    n_agents: int
    obs_dim: int
    n_actions: int
    hidden: int = 64
    heads: int = 1
    layers: int = 1
    dropout: float = 0.0
    gate: bool = False
    gate_init_p: float = 0.9


def masked_logits(logits: Tensor, avail: Tensor) -> Tensor:
    """logits [...,A] f32 with a large negative value where avail [...,A] bool is False."""
    return logits.masked_fill(~avail, NEG)


def sample_categorical(logits: Tensor, generator: torch.Generator | None) -> Tensor:
    """Gumbel-max sample of Categorical(logits): [...,A] -> [...] long."""
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-10, 1.0 - 1e-7)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


class CommFormer(nn.Module):
    def __init__(self, shape: ModelShape) -> None:
        super().__init__()
        self.shape = shape
        n, o, a, h = shape.n_agents, shape.obs_dim, shape.n_actions, shape.hidden
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
        self.register_buffer("enc_labels", encoder_labels(n), persistent=False)
        self.register_buffer("dec_labels", decoder_labels(n), persistent=False)
        self.register_buffer("stream_mask", stream_self_mask(n), persistent=False)

    # ---- encoder -------------------------------------------------------------------------------------------------
    def embed(self, obs: Tensor) -> Tensor:
        """obs [B,N,O] -> h [B,N,H], the pre-attention embedding (the gate reads it)."""
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
        """The embedded action stream after its self-attention: actions [B,N] long (a_{N-1} unused) -> [B,N,H]."""
        b, n = actions.shape
        a = self.shape.n_actions
        onehot = torch.zeros(b, n, a + 1, device=actions.device)
        onehot[:, 0, a] = 1.0  # start token
        if n > 1:
            onehot[:, 1:].scatter_(-1, actions[:, :-1, None], 1.0)
        x = self.action_embed(onehot)
        mask = self.stream_mask.expand(b, n, n)
        return self.dec_ln1(x + self.self_attn(x, x, mask, self.dec_labels))

    def decode(self, enc: Tensor, x: Tensor, dmask: Tensor, gate: Tensor | None, rows: slice) -> Tensor:
        """Action logits (unmasked) of agents `rows`.

        enc [B,N,H] encoder output | x [B,N,H] stream | dmask D [B,N,N] f32 | gate [B,N] or None -> [B,R,A]."""
        q = enc[:, rows]
        y = self.cross_attn(q, x, dmask[:, rows], self.dec_labels[rows])
        if gate is not None:
            g = gate[:, rows, None]
            y = g * y + (1.0 - g) * self.cross_attn.values(x[:, :1])
        y = self.dec_ln2(q + y)
        out = self.dec_ln3(y + self.dec_mlp(y))
        return torch.einsum("brh,rha->bra", out, self.head_w[rows]) + self.head_b[rows]

    def teacher_forced(self, enc: Tensor, actions: Tensor, dmask: Tensor, gate: Tensor | None,
                       avail: Tensor) -> tuple[Tensor, Tensor]:
        """All agents in one pass: actions [B,N] long, avail [B,N,A] bool -> (log_prob [B,N], entropy [B,N])."""
        logits = masked_logits(self.decode(enc, self.stream(actions), dmask, gate, slice(None)), avail)
        logp_all = torch.log_softmax(logits, dim=-1)
        logp = logp_all.gather(-1, actions[..., None]).squeeze(-1)
        entropy = -(logp_all.exp() * logp_all).sum(-1)
        return logp, entropy

    def autoregressive(self, enc: Tensor, dmask: Tensor, gate: Tensor | None, avail: Tensor,
                       generator: torch.Generator | None, deterministic: bool) -> tuple[Tensor, Tensor]:
        """Decode agents 0..N-1 in turn, each step batched over B -> (actions [B,N] long, log_prob [B,N])."""
        b, n = avail.shape[:2]
        actions = torch.zeros(b, n, dtype=torch.long, device=avail.device)
        logps = torch.zeros(b, n, device=avail.device)
        for i in range(n):
            x = self.stream(actions)
            logits = masked_logits(self.decode(enc, x, dmask, gate, slice(i, i + 1))[:, 0], avail[:, i])
            a = logits.argmax(-1) if deterministic else sample_categorical(logits, generator)
            actions[:, i] = a
            logps[:, i] = torch.log_softmax(logits, -1).gather(-1, a[:, None]).squeeze(-1)
        return actions, logps
