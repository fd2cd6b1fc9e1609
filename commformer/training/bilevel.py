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

import math
from dataclasses import dataclass
from enum import Enum

import torch
from torch import Tensor, nn

from commformer.config import AlgoConfig, split_sizes
from commformer.method.policy import Agent, GateChoice, GraphChoice
from commformer.training.adam import Adam


class Phase(str, Enum):
    """Where an iteration stands in the schedule."""

    FIXED = "fixed"  # no alpha (graph full / none / random): every epoch steps the network
    WARMUP = "warmup"  # the full graph, gates open, alpha still
    BILEVEL = "bilevel"  # alpha on every arch_every-th epoch, the network on the others
    FROZEN = "frozen"  # alpha still, the deterministic top-k graph acts


def phase(iteration: int, total_iterations: int, algo: AlgoConfig) -> Phase:
    """The schedule's phase at a 0-based iteration."""
    if algo.graph != "learned":
        return Phase.WARMUP if (algo.gate and iteration < algo.warmup_iters) else Phase.FIXED
    if iteration < algo.warmup_iters:
        return Phase.WARMUP
    if algo.freeze_fraction < 1.0 and iteration >= algo.freeze_fraction * total_iterations:
        return Phase.FROZEN
    return Phase.BILEVEL


def choices(ph: Phase | str, evaluating: bool) -> tuple[GraphChoice, GateChoice]:
    """(graph, gate) choices of Agent.act in a phase, for rollouts (evaluating False) or evaluation (True).

    warmup: the full graph with open gates either way. Otherwise evaluation uses top-k(alpha) (or the fixed graph)
    and opens a gate when p > 0.5; rollouts sample both, except that a frozen graph acts deterministically."""
    ph = Phase(ph)
    if ph is Phase.WARMUP:
        return GraphChoice.FULL, GateChoice.OPEN
    if evaluating:
        return GraphChoice.DETERMINISTIC, GateChoice.THRESHOLD
    if ph is Phase.FROZEN:
        return GraphChoice.DETERMINISTIC, GateChoice.SAMPLE
    return GraphChoice.SAMPLE, GateChoice.SAMPLE


def steps_graph(ph: Phase | str, epoch: int, arch_every: int) -> bool:
    """Whether PPO epoch `epoch` (0-based) steps alpha (True) or the network (False)."""
    return ph == Phase.BILEVEL and (epoch + 1) % arch_every == 0


def split_columns(num_envs: int, fraction: float) -> tuple[Tensor, Tensor]:
    """(upper, lower) LongTensors of env columns: the last max(1, round(f*B)) columns go up, at least one stays."""
    if num_envs < 2:  # Config.__post_init__ checks this up front; this guards direct callers
        raise ValueError(f"num_envs={num_envs}; algo.bilevel=split needs >= 2 env columns")
    n_up, _ = split_sizes(num_envs, fraction)
    cols = torch.arange(num_envs)
    return cols[num_envs - n_up:], cols[: num_envs - n_up]


class NonFiniteError(RuntimeError):
    """A loss or gradient that is NaN or infinite; the message names the quantity (no parameter was changed by it)."""


@dataclass
class Optimisers:
    network: Adam
    graph: Adam | None
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
        network = Adam(groups, lr=algo.lr, eps=algo.adam_eps)
        graph_params = list(agent.graph.parameters())
        graph = Adam(graph_params, lr=algo.graph_lr, eps=algo.adam_eps) if graph_params else None
        return Optimisers(network, graph, net + gate_params, graph_params)

    def step(self, loss: Tensor, upper: bool, max_grad_norm: float) -> float:
        """Backpropagate `loss` and step one level (upper = alpha, else the network); returns the grad norm."""
        self.network.zero_grad(set_to_none=True)
        if self.graph is not None:
            self.graph.zero_grad(set_to_none=True)
        level = "upper level (alpha)" if upper else "lower level (network)"
        if not bool(torch.isfinite(loss.detach())):
            raise NonFiniteError(f"the PPO loss is not finite ({loss.detach().item()}) in a {level} step")
        loss.backward()
        opt, params = (self.graph, self.graph_params) if upper else (self.network, self.network_params)
        assert opt is not None, "an upper-level step needs a learned graph"
        norm = float(nn.utils.clip_grad_norm_(params, max_grad_norm))
        if not math.isfinite(norm):
            raise NonFiniteError(f"the gradient norm of the {level} is not finite ({norm})")
        opt.step()
        return norm

    def state_dict(self) -> dict:
        return {"network": self.network.state_dict(),
                "graph": None if self.graph is None else self.graph.state_dict()}

    def load_state_dict(self, state: dict) -> None:
        self.network.load_state_dict(state["network"])
        if self.graph is not None and state.get("graph") is not None:
            self.graph.load_state_dict(state["graph"])
