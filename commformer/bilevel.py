"""The bi-level schedule (REFERENCE.md 4): the graph's alpha is the upper level, the network the lower level.

- warmup (first `warmup_iters` iterations): rollouts and updates use the full graph, gates open; alpha does not step.
- bilevel: in PPO epoch e (0-based) only alpha steps when (e + 1) % arch_every == 0, otherwise only the network.
  `alternate`: both levels see the same batch (as released). `split`: a fraction of the B env columns is held out
  for the upper level; lower-level epochs see the rest.
- frozen (from `freeze_fraction` of training on, if < 1): alpha stops, the deterministic top-k graph is used,
  every epoch steps the network.
Graph modes other than learned have no alpha: every epoch steps the network.
"""
from __future__ import annotations

from dataclasses import dataclass

import torch
from torch import Tensor, nn

from commformer.config import AlgoConfig
from commformer.policy import Agent

PHASES = ("fixed", "warmup", "bilevel", "frozen")


def phase(iteration: int, total_iterations: int, algo: AlgoConfig) -> str:
    """The schedule's phase at a 0-based iteration: fixed (no alpha) | warmup | bilevel | frozen."""
    if algo.graph != "learned":
        return "warmup" if (algo.gate and iteration < algo.warmup_iters) else "fixed"
    if iteration < algo.warmup_iters:
        return "warmup"
    if algo.freeze_fraction < 1.0 and iteration >= algo.freeze_fraction * total_iterations:
        return "frozen"
    return "bilevel"


def acting_choices(ph: str) -> tuple[str, str]:
    """(graph_how, gate_how) for rollouts in a phase (see policy.GRAPH_CHOICES / GATE_CHOICES)."""
    if ph == "warmup":
        return "full", "open"
    if ph == "frozen":
        return "deterministic", "sample"
    return "sample", "sample"


def steps_graph(ph: str, epoch: int, arch_every: int) -> bool:
    """Whether PPO epoch `epoch` (0-based) steps alpha (True) or the network (False)."""
    return ph == "bilevel" and (epoch + 1) % arch_every == 0


def split_columns(num_envs: int, fraction: float) -> tuple[Tensor, Tensor]:
    """(upper, lower) LongTensors of env columns: the last max(1, round(f*B)) columns go up, at least one stays."""
    if num_envs < 2:
        raise ValueError(f"num_envs={num_envs}; algo.bilevel=split needs >= 2 env columns")
    n_up = min(max(1, round(fraction * num_envs)), num_envs - 1)
    cols = torch.arange(num_envs)
    return cols[num_envs - n_up:], cols[: num_envs - n_up]


@dataclass
class Optimisers:
    network: torch.optim.Optimizer
    graph: torch.optim.Optimizer | None
    network_params: list[nn.Parameter]
    graph_params: list[nn.Parameter]

    @staticmethod
    def build(agent: Agent, algo: AlgoConfig) -> "Optimisers":
        """Adam for the network (the gate in its own group, own lr) and Adam for alpha (learned graphs only)."""
        gate = agent.model.gate
        gate_params = list(gate.parameters()) if gate is not None else []
        gate_ids = {id(p) for p in gate_params}
        net = [p for p in agent.model.parameters() if id(p) not in gate_ids]
        groups = [{"params": net, "lr": algo.lr}]
        if gate_params:
            groups.append({"params": gate_params, "lr": algo.gate_lr})
        network = torch.optim.Adam(groups, lr=algo.lr, eps=algo.adam_eps)
        graph_params = list(agent.graph.parameters())
        graph = torch.optim.Adam(graph_params, lr=algo.graph_lr, eps=algo.adam_eps) if graph_params else None
        return Optimisers(network, graph, net + gate_params, graph_params)

    def step(self, loss: Tensor, upper: bool, max_grad_norm: float) -> float:
        """Backpropagate `loss` and step one level (upper = alpha, else the network); returns the grad norm."""
        self.network.zero_grad(set_to_none=True)
        if self.graph is not None:
            self.graph.zero_grad(set_to_none=True)
        loss.backward()
        opt, params = (self.graph, self.graph_params) if upper else (self.network, self.network_params)
        assert opt is not None, "an upper-level step needs a learned graph"
        norm = nn.utils.clip_grad_norm_(params, max_grad_norm)
        opt.step()
        return float(norm)

    def state_dict(self) -> dict:
        return {"network": self.network.state_dict(),
                "graph": None if self.graph is None else self.graph.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["network"])
        if self.graph is not None and state.get("graph") is not None:
            self.graph.load_state_dict(state["graph"])
