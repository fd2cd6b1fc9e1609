"""Adam with torch.optim.Adam's single-tensor arithmetic, its param_groups and its state_dict format.

Why not torch.optim.Adam itself: constructing any torch.optim optimizer imports torch._dynamo (torch wraps
Optimizer.__init__ in a lazy dynamo-disable), which costs about 0.9 CPU-seconds per process on this project's CPU,
about 4% of a 96,000-step Predator-Prey run; nothing here compiles, so the import buys nothing. This class makes
the same updates bit for bit as torch.optim.Adam on CPU with the defaults this project uses (no weight decay, no
amsgrad, foreach/fused off; tests/test_adam.py holds it to that), reads and writes the same state_dict (so
checkpoints move between the two), and honours a changed group["lr"] at the next step, as torch does.
"""
from __future__ import annotations

from typing import Any, Iterable

import torch
from torch import Tensor, nn


# torch.optim.Adam's other group options, at the values whose arithmetic this class makes (written into state_dict
# so that torch.optim.Adam can load it)
TORCH_GROUP_KEYS = {"weight_decay": 0.0, "amsgrad": False, "maximize": False, "foreach": None, "capturable": False,
                    "differentiable": False, "fused": None, "decoupled_weight_decay": False}


class Adam:
    """Adam over parameter groups (list of {"params": [...], "lr": ...} dicts, or one iterable of parameters).

    Per parameter p with gradient g, at step t (torch.optim.Adam, Kingma & Ba 2015):
      m <- lerp(m, g, 1 - beta1);  v <- beta2 v + (1 - beta2) g^2
      p <- p - lr / (1 - beta1^t) * m / (sqrt(v) / sqrt(1 - beta2^t) + eps)
    """

    def __init__(self, params: Iterable[nn.Parameter] | Iterable[dict], lr: float = 1e-3,
                 betas: tuple[float, float] = (0.9, 0.999), eps: float = 1e-8) -> None:
        params = list(params)
        if not params:
            raise ValueError("Adam got an empty parameter list")
        groups = params if isinstance(params[0], dict) else [{"params": params}]
        defaults = {"lr": lr, "betas": tuple(betas), "eps": eps}
        self.param_groups: list[dict[str, Any]] = [{**defaults, **g, "params": list(g["params"])} for g in groups]
        self.state: dict[Tensor, dict[str, Tensor]] = {}

    def zero_grad(self, set_to_none: bool = True) -> None:
        for group in self.param_groups:
            for p in group["params"]:
                if p.grad is None:
                    continue
                if set_to_none:
                    p.grad = None
                else:
                    p.grad.detach_()
                    p.grad.zero_()

    @torch.no_grad()
    def step(self) -> None:
        """One update of every parameter that has a gradient (the others, and their state, are left alone)."""
        for group in self.param_groups:
            lr, (beta1, beta2), eps = group["lr"], group["betas"], group["eps"]
            for p in group["params"]:
                if p.grad is None:
                    continue
                grad = p.grad
                state = self.state.get(p)
                if state is None:
                    state = self.state[p] = {
                        "step": torch.tensor(0.0, dtype=torch.float32),
                        "exp_avg": torch.zeros_like(p, memory_format=torch.preserve_format),
                        "exp_avg_sq": torch.zeros_like(p, memory_format=torch.preserve_format),
                    }
                exp_avg, exp_avg_sq, step_t = state["exp_avg"], state["exp_avg_sq"], state["step"]
                step_t += 1
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                step = step_t.item()
                bias_correction1 = 1 - beta1 ** step
                bias_correction2_sqrt = (1 - beta2 ** step) ** 0.5
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(eps)
                p.addcdiv_(exp_avg, denom, value=-(lr / bias_correction1))

    # ------------------------------------------------------------------ torch.optim's state_dict format

    def state_dict(self) -> dict[str, Any]:
        """{"state": {index: {"step", "exp_avg", "exp_avg_sq"}}, "param_groups": [{..., "params": [indices]}]}."""
        index: dict[int, int] = {}
        groups = []
        for group in self.param_groups:
            for p in group["params"]:
                index.setdefault(id(p), len(index))
            groups.append({**TORCH_GROUP_KEYS, **{k: v for k, v in group.items() if k != "params"},
                           "params": [index[id(p)] for p in group["params"]]})
        state = {index[id(p)]: dict(s) for p, s in self.state.items()}
        return {"state": state, "param_groups": groups}

    def load_state_dict(self, state_dict: dict[str, Any]) -> None:
        """Load a state_dict of this class or of torch.optim.Adam with the same groups (sizes must match)."""
        saved = state_dict["param_groups"]
        for s in saved:
            other = {k: s[k] for k in TORCH_GROUP_KEYS if k in s and s[k] != TORCH_GROUP_KEYS[k]}
            if other:
                raise ValueError(f"loaded state dict uses Adam options this class does not make: {other}")
        if len(saved) != len(self.param_groups) or any(
                len(s["params"]) != len(g["params"]) for s, g in zip(saved, self.param_groups)):
            raise ValueError("loaded state dict has a different number of parameter groups or parameters")
        by_index = {i: p for s, g in zip(saved, self.param_groups) for i, p in zip(s["params"], g["params"])}
        self.state = {}
        for i, s in state_dict["state"].items():
            p = by_index[int(i)]
            self.state[p] = {
                "step": torch.as_tensor(s["step"], dtype=torch.float32).clone(),
                "exp_avg": s["exp_avg"].to(device=p.device, dtype=p.dtype).clone(),
                "exp_avg_sq": s["exp_avg_sq"].to(device=p.device, dtype=p.dtype).clone(),
            }
        for s, g in zip(saved, self.param_groups):
            for key in ("lr", "eps"):
                g[key] = s[key]
            g["betas"] = tuple(s["betas"])
