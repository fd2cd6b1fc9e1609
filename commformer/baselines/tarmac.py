"""TarMAC (Das et al. 2019, arXiv 1810.11187) with a GRU core (docs/methods/tarmac.md).

Per step, agent i with state h_i (from the last step) and e_i = ReLU(W_e o_i); for k = 1..K rounds:
    q_i = Q_k h_i,  k_j = K_k h_j (signature),  v_j = V_k h_j (value)
    a_ij = softmax over alive senders j != i of q_i . k_j / sqrt(d)     (a receiver does not attend to itself)
    c_i = sum_j a_ij v_j                       (0 for a dead receiver or when no other agent is alive)
    h_i = GRU(e_i + c_i, h_i)
    logits_i = head_pi(h_i),  V_i = head_V(h_i)
Every alive sender is heard: n (n - 1) messages per step for n alive agents, whatever K.

Shapes: B envs, N agents, O obs width, A actions, H hidden width, d key width.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from commformer.baselines.comm_ops import count_messages, heard, masked_softmax
from commformer.baselines.recurrent import RecurrentConfig, RecurrentPolicy, StepOut, gru, mlp
from commformer.config import check
from commformer.protocol import PolicyEntry


@dataclass
class TarMACConfig(RecurrentConfig):
    """TarMAC's keys (docs/methods/tarmac.md)."""

    name: str = "tarmac"
    policy: str = "tarmac"
    rounds: int = 2
    """communication rounds K per step"""
    key_dim: int = 16
    """width d of the signatures (keys) and queries"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rounds >= 1, f"algo.rounds={self.rounds}; must be >= 1")
        check(self.key_dim >= 1, f"algo.key_dim={self.key_dim}; must be >= 1")


def attention_weights(q: Tensor, k: Tensor, mask: Tensor) -> Tensor:
    """q [B,N,d] queries, k [B,N,d] signatures, mask [B,N,N] bool -> a [B,N,N]: softmax over the allowed senders of
    q_i . k_j / sqrt(d) (rows without a sender are 0)."""
    return masked_softmax(q @ k.transpose(-1, -2) / math.sqrt(q.shape[-1]), mask)


class TarMACPolicy(RecurrentPolicy):
    """Targeted multi-round attention communication (docs/methods/tarmac.md)."""

    state_names = ("actor",)

    def __init__(self, algo: TarMACConfig, spec, seed: int) -> None:
        super().__init__(spec.n_agents, algo.hidden)
        torch.manual_seed(seed)
        o, h, f, d = spec.obs_dim, algo.hidden, algo.fc, algo.key_dim
        self.encode, self.core = nn.Linear(o, f), nn.GRUCell(f, h)
        self.query = nn.ModuleList(nn.Linear(h, d) for _ in range(algo.rounds))
        self.key = nn.ModuleList(nn.Linear(h, d) for _ in range(algo.rounds))
        self.val = nn.ModuleList(nn.Linear(h, f) for _ in range(algo.rounds))
        self.actor_out, self.critic_out = mlp(h, f, spec.n_actions), mlp(h, f, 1)

    def step(self, obs, alive, state, hidden, choices, generator, deterministic) -> StepOut:
        e = torch.relu(self.encode(obs))
        h = hidden["actor"]
        mask = heard(alive)
        for q, k, v in zip(self.query, self.key, self.val):
            h = gru(self.core, e + attention_weights(q(h), k(h), mask) @ v(h), h)
        return StepOut(h, h, {"actor": h})

    def messages(self, stored: dict[str, Tensor], alive: Tensor) -> Tensor:
        return count_messages(alive)


TARMAC = PolicyEntry(TarMACConfig, TarMACPolicy)
