"""CommFormer on the fast backend (algo.backend=fast, the default): the reference policy
(commformer/method/policy.py) with its acting step, value and update pass computed by the fused forms of
fast/acting.py and fast/training.py. Same parameters, same decisions, same checkpoints; values equal to the
reference up to float rounding (tests/test_backends.py).

Beyond the fused forms, a rollout draws its randomness once (ActingDraws: the same numbers, in the order T acting
steps would draw them) and builds the fused acting weights once (RolloutPlan). With dropout in training mode the
fused acting step does not apply (it would need fresh masks per call): acting then runs the reference.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Optional

import torch
from torch import Tensor

from commformer.fast import training as fused
from commformer.fast.acting import ActingWeights
from commformer.fast.kernels import small_tensor_kernels
from commformer.method.gates import GateChoice, pick_gate, straight_through_gate
from commformer.method.graph import GraphChoice, decoder_mask, receive_mask, topk_hot
from commformer.method.model import neg_gumbel
from commformer.method.policy import Acting, CommFormerPolicy
from commformer.protocol import ActOut, Scored, WARMUP


@dataclass
class ActingDraws:
    """The randomness of T acting steps drawn in one go, in the order T act() calls would draw it (per step: the
    graph's Gumbel noise, then each agent's sampling noise). Only where nothing else draws from the generator between
    steps (no sampled gate: value() draws gates).

    hard [T,B,N,N] bool, noise [T,B,N,N] f32: the acting graphs and their noise | action [T,N,B,A] f32: neg_gumbel
    noise of each agent's action sample."""

    hard: Tensor
    noise: Tensor
    action: Tensor


@dataclass
class RolloutPlan:
    """What stays fixed over one rollout: the fused acting weights (no optimiser step happens during a rollout) and,
    where the generator stream allows it, the rollout's randomness (None: act() draws as it goes)."""

    weights: ActingWeights
    draws: Optional[ActingDraws]


class FastCommFormerPolicy(CommFormerPolicy):
    def __init__(self, *args: Any, **kwargs: Any) -> None:
        super().__init__(*args, **kwargs)
        self._acting: tuple[tuple[tuple[int, int], ...], ActingWeights] | None = None
        self._memo = fused.ObsMemo()

    def acting_weights(self) -> ActingWeights | None:
        """The fused acting weights of the current parameters (cached; rebuilt after any change of a parameter), or
        None with dropout in training mode."""
        if self.model.training and self.model.shape.dropout > 0:
            return None
        key = tuple((p._version, p.data_ptr()) for p in self.model.parameters())
        if self._acting is None or self._acting[0] != key:
            self._acting = (key, ActingWeights.of(self.model))
        return self._acting[1]

    @torch.inference_mode()
    def plan_rollout(self, steps: int, batch: int, how: Acting,
                     generator: torch.Generator | None) -> RolloutPlan | None:
        """The RolloutPlan of `steps` act() calls (actions sampled) on `batch` envs."""
        weights = self.acting_weights()
        if weights is None:
            return None
        if self.model.gate is not None and how.gate is GateChoice.SAMPLE:
            return RolloutPlan(weights, None)
        n, a, dev = self.graph.n_agents, self.model.shape.n_actions, self.graph.fixed.device
        sampled = how.graph is GraphChoice.SAMPLE and self.graph.learned
        per_graph = batch * n * n if sampled else 0
        u = torch.rand(steps, per_graph + n * batch * a, generator=generator, device=dev)
        if sampled:
            # graph.gumbel's transform, on the uniforms it would draw at each step
            noise = -torch.log(-torch.log(u[:, :per_graph].clamp_(1e-10, 1.0 - 1e-7))).reshape(steps, batch, n, n)
            hard = topk_hot(self.graph.alpha.detach() + noise, self.graph.k)
        else:
            hard, noise = self.graph.pick(batch, how.graph, None)
            hard, noise = hard.expand(steps, batch, n, n), noise.expand(steps, batch, n, n)
        return RolloutPlan(weights, ActingDraws(hard, noise, neg_gumbel(u[:, per_graph:]).reshape(steps, n, batch, a)))

    def planned_storage(self, plan: RolloutPlan | None) -> dict[str, Tensor]:
        """The acting graphs and their noise of every step, where the plan drew them ([T,B,N,N] each)."""
        if plan is None or plan.draws is None:
            return {}
        return {"graph": plan.draws.hard, "noise": plan.draws.noise}

    def act(self, obs: Tensor, avail: Tensor, alive: Tensor, how: Acting, generator: torch.Generator | None,
            deterministic: bool = False, plan: RolloutPlan | None = None, t: int = 0, carry: Any = None) -> ActOut:
        """As the reference; plan: this rollout's RolloutPlan and t the step within it. Runs under
        torch.inference_mode, so every field but `actions` is an inference tensor: read or copy it, never modify it
        in place."""
        fast = self.acting_weights() if plan is None else plan.weights
        if fast is None:
            return super().act(obs, avail, alive, how, generator, deterministic)
        with torch.inference_mode():
            if plan is not None and plan.draws is not None:
                d = plan.draws
                hard, noise, neg_noise = d.hard[t], d.noise[t], d.action[t]
            else:
                hard, noise = self.graph.pick(obs.shape[0], how.graph, generator)
                neg_noise = None
            with small_tensor_kernels():
                h = fast.embed(obs)
                p = self.model.gate_prob(h)
                gate = pick_gate(p, how.gate, generator)
                g = None if gate is None else gate.float()
                enc, mask_zero = fast.encode(h, hard, alive, g)
                actions, logp, value = fast.decode(enc, mask_zero, g, avail, neg_noise, generator, deterministic)
            out = self.act_out(actions, logp, value, hard, noise, gate, p)
        out.actions = out.actions.clone()
        return out

    @torch.inference_mode()
    def value(self, obs: Tensor, alive: Tensor, stored: dict[str, Tensor], carry: Any, how: Acting,
              generator: torch.Generator | None, plan: RolloutPlan | None = None) -> Tensor:
        fast = self.acting_weights() if plan is None else plan.weights
        if fast is None:
            return super().value(obs, alive, stored, carry, how, generator)
        with small_tensor_kernels():
            h = fast.embed(obs)
            gate = pick_gate(self.model.gate_prob(h), how.gate, generator)
            g = None if gate is None else gate.float()
            return fast.value(fast.encode(h, stored["graph"], alive, g)[0])

    def score(self, batch: dict[str, Any], phase: str, upper: bool, relax: bool) -> Scored:
        gate_on = "gate" in batch and phase != WARMUP
        relax_graph = relax and upper and not self.score_graph
        adjacency = self.graph.relaxed(batch["graph"], batch["noise"]) if relax_graph else batch["graph"].float()
        mask = receive_mask(adjacency, batch["alive"])
        h = fused.embed(self.model, batch["obs"], self._memo)
        p = self.model.gate_prob(h)
        g = None
        if gate_on and p is not None:
            g = straight_through_gate(batch["gate"], p) if relax else batch["gate"].float()
        enc, value = fused.encode(self.model, h, mask, g)
        dmask = decoder_mask(mask if self.schedule.decoder_graph_grad else mask.detach())
        logp, entropy = fused.teacher_forced(self.model, enc, batch["actions"], dmask, g, batch["avail"])
        return self.scored(logp, entropy, value, p, batch, gate_on, upper and relax)
