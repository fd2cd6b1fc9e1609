"""IC3Net (Singh, Jain and Sukhbaatar 2019, arXiv 1812.09755) with a GRU core (docs/methods/ic3net.md).

Per step, agent i with state h_i (from the last step) and e_i = ReLU(W_e o_i):
    p_i = sigmoid(w_g . [h_i, e_i] + b_g)          the probability that i sends this step
    g_i ~ Bernoulli(p_i)                          an action: its log-probability joins the PPO ratio
    for k = 1..K:   c_i = C_k (1 / n_i) sum_{j alive, j != i} g_j h_j    (n_i: alive others; 0 when none)
                    h_i = GRU(e_i + c_i, h_i)
    logits_i = head_pi(h_i),  V_i = head_V(h_i)
Messages per step: sum over open alive senders j of the alive others that hear j.

Shapes: B envs, N agents, O obs width, A actions, H hidden width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from commformer.baselines.comm_ops import count_pairs, heard
from commformer.baselines.recurrent import RecurrentConfig, RecurrentPolicy, StepOut, gru, mlp
from commformer.config import check
from commformer.protocol import PolicyEntry


@dataclass
class IC3NetConfig(RecurrentConfig):
    """IC3Net's keys (docs/methods/ic3net.md)."""

    name: str = "ic3net"
    policy: str = "ic3net"
    rounds: int = 1
    """communication rounds K per step"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rounds >= 1, f"algo.rounds={self.rounds}; must be >= 1")


def gated_mean(h: Tensor, alive: Tensor, gate: Tensor) -> Tensor:
    """h [B,N,H], alive [B,N] bool, gate [B,N] (0/1) -> [B,N,H]: for receiver i, (1 / n_i) sum over the alive
    j != i of gate_j h_j, n_i the number of alive others (0 for a dead receiver or when none is alive)."""
    w = heard(alive).to(h.dtype)
    return ((w * gate[:, None, :].to(h.dtype)) @ h) / w.sum(-1, keepdim=True).clamp(min=1.0)


def open_pairs(alive: Tensor, gate: Tensor) -> Tensor:
    """[...,N] bool alive and gate -> [...,N,N] bool (receiver i, sender j): j open, both alive, i != j."""
    shape = alive.shape
    flat = heard(alive.reshape(-1, shape[-1])) & gate.reshape(-1, shape[-1])[:, None, :].bool()
    return flat.view(*shape, shape[-1])


class IC3NetPolicy(RecurrentPolicy):
    """Recurrent CommNet whose senders choose, each step, whether to send (docs/methods/ic3net.md)."""

    state_names = ("actor",)

    def __init__(self, algo: IC3NetConfig, spec, seed: int) -> None:
        super().__init__(spec.n_agents, algo.hidden)
        torch.manual_seed(seed)
        o, h, f = spec.obs_dim, algo.hidden, algo.fc
        self.encode, self.core = nn.Linear(o, f), nn.GRUCell(f, h)
        self.gate_head = nn.Linear(h + f, 1)
        self.project = nn.ModuleList(nn.Linear(h, f, bias=False) for _ in range(algo.rounds))
        self.actor_out, self.critic_out = mlp(h, f, spec.n_actions), mlp(h, f, 1)

    def choice_storage(self, num_envs: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {"gate": ((num_envs, self.n_agents), torch.bool)}

    def step(self, obs, alive, state, hidden, choices, generator, deterministic) -> StepOut:
        e = torch.relu(self.encode(obs))
        h = hidden["actor"]
        z = self.gate_head(torch.cat([h, e], dim=-1)).squeeze(-1)  # [B,N] logit of sending
        if choices is not None:
            gate = choices["gate"]
        elif deterministic:
            gate = z > 0
        else:
            gate = torch.rand(z.shape, generator=generator, device=z.device) < torch.sigmoid(z)
        g = gate.to(z.dtype)
        log_p1, log_p0 = nn.functional.logsigmoid(z), nn.functional.logsigmoid(-z)
        log_prob = g * log_p1 + (1 - g) * log_p0
        entropy = -(log_p1.exp() * log_p1 + log_p0.exp() * log_p0)
        for proj in self.project:
            h = gru(self.core, e + proj(gated_mean(h, alive, g)), h)
        return StepOut(h, h, {"actor": h}, {"gate": gate}, log_prob, entropy)

    def acting_graph(self, choices: dict[str, Tensor], alive: Tensor) -> Tensor:
        return open_pairs(alive, choices["gate"])

    def messages(self, stored: dict[str, Tensor], alive: Tensor) -> Tensor:
        return count_pairs(open_pairs(alive, stored["gate"]))


IC3NET = PolicyEntry(IC3NetConfig, IC3NetPolicy)
