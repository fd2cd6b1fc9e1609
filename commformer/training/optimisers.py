"""The optimisers of a run: Adam for the policy's lower level (the network; CommFormer's gate in its own group) and,
where the policy has one, Adam for its upper level (CommFormer's alpha; docs/method.md, "Bi-level schedule").
Each clips its own parameters' gradient norm; a non-finite loss or gradient stops before any parameter changes.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

import torch
from torch import Tensor, nn

from commformer.fast.adam import Adam
from commformer.protocol import Policy


class NonFiniteError(RuntimeError):
    """A loss or gradient that is NaN or infinite; the message names the quantity (no parameter was changed by it)."""


@dataclass
class Optimisers:
    network: Adam  # the lower level (fast.adam.Adam: torch.optim.Adam's updates bit for bit, without its import of
    # torch._dynamo, about 0.9 CPU s per process; tests/test_adam.py)
    graph: Adam | None  # the upper level, or None
    lower_params: list[nn.Parameter]
    upper_params: list[nn.Parameter]

    @staticmethod
    def build(policy: Policy, lrs: dict[str, float], upper_lr: float, eps: float) -> "Optimisers":
        """Adam for the lower level's groups (Policy.param_groups; each group's lr from `lrs` by its name) and Adam
        for the upper level (upper_lr), where the policy has one. Each group keeps its configured lr as
        "initial_lr" (the learning-rate decay scales it)."""
        lower, upper = policy.param_groups()
        groups = [{"params": g["params"], "lr": lrs[g["name"]], "initial_lr": lrs[g["name"]], "name": g["name"]}
                  for g in lower]
        network = Adam(groups, lr=groups[0]["lr"], eps=eps)
        graph = Adam(upper, lr=upper_lr, eps=eps) if upper else None
        return Optimisers(network, graph, [p for g in groups for p in g["params"]], upper)

    def step(self, loss: Tensor, upper: bool, max_grad_norm: float) -> float:
        """Backpropagate `loss` and step one level (upper = alpha, else the network); returns the grad norm."""
        self.network.zero_grad(set_to_none=True)
        if self.graph is not None:
            self.graph.zero_grad(set_to_none=True)
        level = "upper level (alpha)" if upper else "lower level (network)"
        if not bool(torch.isfinite(loss.detach())):
            raise NonFiniteError(f"the PPO loss is not finite ({loss.detach().item()}) in a {level} step")
        loss.backward()
        opt, params = (self.graph, self.upper_params) if upper else (self.network, self.lower_params)
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
