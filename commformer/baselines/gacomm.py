"""GA-Comm (Liu et al. 2020, "Multi-Agent Game Abstraction via Graph Attention Neural Network", arXiv 1911.10715)
with a GRU core (docs/methods/gacomm.md).

Per step, agent i with state h_i (from the last step) and e_i = ReLU(W_e o_i):
    hard attention:  W^h_ij = hard Gumbel-softmax over {silent, talk} of f_h([h_i, h_j])   (alive j != i; stored
                     noise, straight-through gradient)
    soft attention:  W^s_ij = softmax over the j with W^h_ij = 1 of q_i . k_j / sqrt(d)
    x_i = sum_j W^h_ij W^s_ij v_j,   h_i = GRU(e_i + x_i, h_i)
    logits_i = head_pi(h_i),  V_i = head_V(h_i)
Messages per step: the kept pairs, sum_ij W^h_ij.

Shapes: B envs, N agents, O obs width, A actions, H hidden width, d key width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from commformer.baselines.comm_ops import count_pairs, gumbel_noise, hard_edge, heard, masked_softmax
from commformer.baselines.recurrent import RecurrentConfig, RecurrentPolicy, StepOut, gru, mlp
from commformer.config import check, check_positive_finite
from commformer.protocol import PolicyEntry


@dataclass
class HardGraphConfig(RecurrentConfig):
    """The key of every method that draws a hard graph per step (GA-Comm, MAGIC)."""

    tau: float = 1.0
    """temperature of the hard graph's Gumbel-softmax (its gradient only: the forward value is 0 or 1)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check_positive_finite("algo.tau", self.tau)


@dataclass
class GACommConfig(HardGraphConfig):
    """GA-Comm's keys (docs/methods/gacomm.md)."""

    name: str = "gacomm"
    policy: str = "gacomm"
    key_dim: int = 16
    """width d of the soft attention's queries and keys"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.key_dim >= 1, f"algo.key_dim={self.key_dim}; must be >= 1")


def pair_features(h: Tensor) -> Tensor:
    """h [B,N,H] -> [B,N,N,2H]: [h_i, h_j] for receiver i, sender j."""
    B, N, H = h.shape
    return torch.cat([h[:, :, None, :].expand(B, N, N, H), h[:, None, :, :].expand(B, N, N, H)], dim=-1)


def hard_graph(logits: Tensor, noise: Tensor, alive: Tensor, tau: float) -> Tensor:
    """logits, noise [B,N,N,2], alive [B,N] -> [B,N,N] f32 of 0/1 (straight-through): the pairs that talk, only
    between alive agents, never i to itself."""
    return hard_edge(logits, noise, tau) * heard(alive)


def graph_attention(scores: Tensor, hard: Tensor) -> Tensor:
    """scores [B,N,N], hard [B,N,N] (0/1, straight-through) -> weights [B,N,N]: softmax over the kept senders,
    times the hard value (so the weight of a dropped pair is exactly 0 and the hard edge gets a gradient)."""
    return masked_softmax(scores, hard.detach() > 0.5) * hard


class HardGraphPolicy(RecurrentPolicy):
    """What GA-Comm and MAGIC share: a hard graph drawn per step from stored Gumbel noise (straight-through), the
    graph stored for the message count and the graph history."""

    state_names = ("actor",)
    tau = 1.0

    def choice_storage(self, num_envs: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        n = self.n_agents
        # the noise replays the hard graph; the graph itself is kept for the message count and the graph history
        return {"noise": ((num_envs, n, n, 2), torch.float32), "graph": ((num_envs, n, n), torch.bool)}

    def draw_graph(self, logits: Tensor, alive: Tensor, choices, generator,
                   deterministic: bool) -> tuple[Tensor, dict[str, Tensor]]:
        """logits [B,N,N,2] -> (the hard graph [B,N,N] f32, straight-through; the choices to store): the stored noise
        when replaying, else zero noise (deterministic: the argmax) or a fresh draw from `generator`."""
        if choices is not None:
            noise = choices["noise"]
        elif deterministic:
            noise = torch.zeros_like(logits)
        else:
            noise = gumbel_noise(tuple(logits.shape), generator, logits.device)
        graph = hard_graph(logits, noise, alive, self.tau)
        return graph, {"noise": noise, "graph": graph.detach() > 0.5}

    def acting_graph(self, choices: dict[str, Tensor], alive: Tensor) -> Tensor:
        return choices["graph"]

    def messages(self, stored: dict[str, Tensor], alive: Tensor) -> Tensor:
        return count_pairs(stored["graph"])


class GACommPolicy(HardGraphPolicy):
    """Two-stage (hard, then soft) attention communication (docs/methods/gacomm.md)."""

    def __init__(self, algo: GACommConfig, spec, seed: int) -> None:
        super().__init__(spec.n_agents, algo.hidden)
        torch.manual_seed(seed)
        o, h, f, d = spec.obs_dim, algo.hidden, algo.fc, algo.key_dim
        self.tau = algo.tau
        self.encode, self.core = nn.Linear(o, f), nn.GRUCell(f, h)
        self.hard = mlp(2 * h, f, 2)
        self.query, self.key, self.val = nn.Linear(h, d), nn.Linear(h, d), nn.Linear(h, f)
        self.actor_out, self.critic_out = mlp(h, f, spec.n_actions), mlp(h, f, 1)

    def step(self, obs, alive, state, hidden, choices, generator, deterministic) -> StepOut:
        e = torch.relu(self.encode(obs))
        h = hidden["actor"]
        graph, drawn = self.draw_graph(self.hard(pair_features(h)), alive, choices, generator, deterministic)
        q, k = self.query(h), self.key(h)
        w = graph_attention(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), graph)
        h = gru(self.core, e + w @ self.val(h), h)
        return StepOut(h, h, {"actor": h}, drawn)


GACOMM = PolicyEntry(GACommConfig, GACommPolicy)
