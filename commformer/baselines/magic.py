"""MAGIC (Niu, Paleja and Gombolay 2021, "Multi-Agent Graph-Attention Communication and Teaming", AAMAS) with a
GRU core (docs/methods/magic.md).

Per step, agent i with state h_i (from the last step) and e_i = ReLU(W_e o_i):
    h_i = GRU(e_i, h_i)
    scheduler:  z = GAT_s(h) over every alive pair;  G_ij = hard Gumbel-softmax over {silent, talk} of
                f_s([z_i, z_j])  (alive j != i; stored noise, straight-through gradient)
    processor:  m = ELU(GAT_1(h, G)), then (rounds = 2) m = GAT_2(m, G)
    logits_i = head_pi([h_i, m_i]),  V_i = head_V([h_i, m_i])
GAT(x, G): alpha_ij = softmax over the j with G_ij = 1 of LeakyReLU(a . [W x_i, W x_j]), out_i = sum_j alpha_ij G_ij
W x_j (0 when i hears nobody). Messages per step: the pairs of G.

Shapes: B envs, N agents, O obs width, A actions, H hidden width.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from commformer.baselines.comm_ops import heard
from commformer.baselines.gacomm import HardGraphConfig, HardGraphPolicy, graph_attention, pair_features
from commformer.baselines.recurrent import StepOut, gru, mlp
from commformer.config import check
from commformer.protocol import PolicyEntry


@dataclass
class MAGICConfig(HardGraphConfig):
    """MAGIC's keys (docs/methods/magic.md)."""

    name: str = "magic"
    policy: str = "magic"
    rounds: int = 2
    """graph-attention rounds of the message processor (1 or 2)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.rounds in (1, 2), f"algo.rounds={self.rounds}; allowed: 1, 2")


class GAT(nn.Module):
    """One graph-attention layer (one head): x [B,N,X], graph [B,N,N] (0/1, straight-through) -> [B,N,Y]."""

    def __init__(self, inp: int, out: int) -> None:
        super().__init__()
        self.w = nn.Linear(inp, out, bias=False)
        self.a_dst, self.a_src = nn.Linear(out, 1, bias=False), nn.Linear(out, 1, bias=False)

    def forward(self, x: Tensor, graph: Tensor) -> Tensor:
        wx = self.w(x)
        scores = nn.functional.leaky_relu(self.a_dst(wx) + self.a_src(wx).transpose(-1, -2), 0.2)  # [B,N,N]
        return graph_attention(scores, graph) @ wx


class MAGICPolicy(HardGraphPolicy):
    """Scheduler (a hard graph per step) and graph-attention message processor (docs/methods/magic.md)."""

    def __init__(self, algo: MAGICConfig, spec, seed: int) -> None:
        super().__init__(spec.n_agents, algo.hidden)
        torch.manual_seed(seed)
        o, h, f = spec.obs_dim, algo.hidden, algo.fc
        self.tau = algo.tau
        self.encode, self.core = nn.Linear(o, f), nn.GRUCell(f, h)
        self.sched_gat, self.sched = GAT(h, f), mlp(2 * f, f, 2)
        self.process = nn.ModuleList([GAT(h, h)] + ([GAT(h, h)] if algo.rounds == 2 else []))
        self.actor_out, self.critic_out = mlp(2 * h, f, spec.n_actions), mlp(2 * h, f, 1)

    splits_recurrence = True  # the core reads the observation only; the messages feed the heads

    def core_inputs(self, obs, alive, state) -> dict[str, Tensor]:
        return {"actor": torch.relu(self.encode(obs))}

    def recur(self, x, hidden) -> dict[str, Tensor]:
        return {"actor": gru(self.core, x["actor"], hidden["actor"])}

    def read(self, obs, alive, state, nxt, choices, generator, deterministic) -> StepOut:
        h = nxt["actor"]
        pairs = heard(alive)
        logits = self.sched(pair_features(self.sched_gat(h, pairs.to(h.dtype))))
        graph, drawn = self.draw_graph(logits, alive, choices, generator, deterministic)
        m = h
        for i, gat in enumerate(self.process):
            m = gat(m, graph)
            if i == 0:
                m = nn.functional.elu(m)
        out = torch.cat([h, m], dim=-1)
        return StepOut(out, out, dict(nxt), drawn)


MAGIC = PolicyEntry(MAGICConfig, MAGICPolicy)
