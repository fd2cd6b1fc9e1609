"""CommNet (Sukhbaatar, Szlam and Fergus 2016, arXiv 1605.07736) with a recurrent core (docs/methods/commnet.md).

Per step, for agent i with state h_i (carried from the last step) and encoded observation e_i = ReLU(W_e o_i):
    for k = 1..K:   c_i = C_k mean_{j alive, j != i} h_j        (0 when no other agent is alive)
                    h_i = GRU(e_i + c_i, h_i)
    logits_i = head_pi(h_i),  V_i = head_V(h_i)
One GRU cell for every round and agent, one projection C_k per round. All-to-all: every alive agent hears every
other alive agent; a receiver hearing a sender at a step is one message, whatever K (n (n - 1) for n alive agents).

Shapes: B envs, N agents, O obs width, A actions, H hidden width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from commformer.baselines.comm_ops import count_messages, mean_of_others
from commformer.baselines.recurrent import RecurrentConfig, RecurrentPolicy, StepOut, gru, mlp
from commformer.config import check
from commformer.protocol import PolicyEntry


@dataclass
class CommNetConfig(RecurrentConfig):
    """CommNet's keys (docs/methods/commnet.md)."""

    name: str = "commnet"
    policy: str = "commnet"
    rounds: int = 2
    """communication rounds K per step"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rounds >= 1, f"algo.rounds={self.rounds}; must be >= 1")


class CommNetPolicy(RecurrentPolicy):
    """Recurrent CommNet: K rounds of mean communication per step (docs/methods/commnet.md)."""

    state_names = ("actor",)

    def __init__(self, algo: CommNetConfig, spec, seed: int) -> None:
        super().__init__(spec.n_agents, algo.hidden)
        torch.manual_seed(seed)
        o, h, f = spec.obs_dim, algo.hidden, algo.fc
        self.encode, self.core = nn.Linear(o, f), nn.GRUCell(f, h)
        self.project = nn.ModuleList(nn.Linear(h, f, bias=False) for _ in range(algo.rounds))
        self.actor_out, self.critic_out = mlp(h, f, spec.n_actions), mlp(h, f, 1)

    def step(self, obs, alive, state, hidden, choices, generator, deterministic) -> StepOut:
        e = torch.relu(self.encode(obs))
        h = hidden["actor"]
        for proj in self.project:
            h = gru(self.core, e + proj(mean_of_others(h, alive)), h)
        return StepOut(h, h, {"actor": h})

    def messages(self, stored: dict[str, Tensor], alive: Tensor) -> Tensor:
        return count_messages(alive)


COMMNET = PolicyEntry(CommNetConfig, CommNetPolicy)
