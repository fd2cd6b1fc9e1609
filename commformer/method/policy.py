"""The acting agent: the CommFormer network plus its communication graph, in the three ways a run uses them.

- act():     rollouts and evaluation; draws (or fixes) the graph and gate, decodes actions autoregressively.
- value():   V of given observations under a given acting graph (to bootstrap truncated episodes).
- score():   the update's teacher-forced pass over stored (graph, gate, actions) with gradients to alpha and p.
Shapes: B batch, N agents, O obs width, A actions.
"""
from __future__ import annotations

from dataclasses import dataclass
from enum import Enum
from typing import Optional

import torch
from torch import Tensor, nn

from commformer.method.acting import ActingWeights
from commformer.method.gates import sample_gate, straight_through_gate
from commformer.method.graph import CommGraph, decoder_mask, receive_mask, topk_hot
from commformer.method.kernels import small_tensor_kernels
from commformer.method.model import CommFormer, neg_gumbel


class GraphChoice(str, Enum):
    """How act() picks the graph."""

    SAMPLE = "sample"  # Gumbel top-k (learned); the fixed graph of the other modes
    FULL = "full"  # every other agent (warmup)
    DETERMINISTIC = "deterministic"  # top-k(alpha) without noise (evaluation, after freeze)


class GateChoice(str, Enum):
    """How act() picks the gate."""

    SAMPLE = "sample"  # Bernoulli(p)
    OPEN = "open"  # always open (warmup)
    THRESHOLD = "threshold"  # p > 0.5 (evaluation)


def graph_choice(value: str | GraphChoice) -> GraphChoice:
    """The GraphChoice named by `value`; ValueError naming the allowed ones."""
    try:
        return GraphChoice(value)
    except ValueError:
        raise ValueError(f"graph choice {value!r}; allowed: {[c.value for c in GraphChoice]}") from None


def gate_choice(value: str | GateChoice) -> GateChoice:
    """The GateChoice named by `value`; ValueError naming the allowed ones."""
    try:
        return GateChoice(value)
    except ValueError:
        raise ValueError(f"gate choice {value!r}; allowed: {[c.value for c in GateChoice]}") from None


@dataclass
class ActOut:
    actions: Tensor  # [B,N] long
    log_prob: Tensor  # [B,N] f32
    value: Tensor  # [B,N] f32 (normalised units)
    graph: Tensor  # [B,N,N] bool, the acting graph (no self-loop)
    noise: Tensor  # [B,N,N] f32, its Gumbel noise (zeros unless sampled)
    gate: Optional[Tensor]  # [B,N] bool, or None without a gate
    gate_prob: Optional[Tensor]  # [B,N] f32, or None


@dataclass
class ActingDraws:
    """The randomness of T acting steps, drawn from the generator in one go and in the order that T calls of act()
    would draw it (per step: the graph's Gumbel noise, then each agent's sampling noise), so a rollout acting on it
    makes the same decisions as one drawing step by step. Only where nothing else draws from the generator between
    steps (no sampled gate: Agent.value draws gates).

    hard [T,B,N,N] bool, noise [T,B,N,N] f32: the acting graphs and their noise | action [T,N,B,A] f32: neg_gumbel
    noise of each agent's action sample."""

    hard: Tensor
    noise: Tensor
    action: Tensor


@dataclass
class RolloutPlan:
    """What stays fixed over one rollout, prepared once by Agent.plan_rollout: the fused acting weights (no optimiser
    step happens during a rollout) and, where the generator stream allows it, the rollout's randomness.

    weights: ActingWeights, or None for the readable path | draws: ActingDraws, or None (act() draws as it goes)."""

    weights: Optional[ActingWeights]
    draws: Optional[ActingDraws]


class Agent(nn.Module):
    """decoder_graph_grad: whether the decoder's mask D also carries the graph's gradient (w * D). Off by default:
    through D the loss measures the effect of a sender's sampled action, which on the signal game pushed alpha away
    from the one informative sender (README, "Decisions"); the encoder's w * M path carries the gradient either way."""

    def __init__(self, model: CommFormer, graph: CommGraph, decoder_graph_grad: bool = False) -> None:
        super().__init__()
        self.model, self.graph = model, graph
        self.decoder_graph_grad = decoder_graph_grad
        self._acting: tuple[tuple[tuple[int, int], ...], ActingWeights] | None = None

    def acting_weights(self) -> ActingWeights | None:
        """The fused acting weights of the current parameters (cached; rebuilt after any change of a parameter: an
        optimiser step, load_state_dict, a test's edit), or None where acting takes the readable path (dropout in
        training mode, which draws fresh masks every call). The check walks every parameter (tens of
        microseconds): a rollout checks once, in plan_rollout."""
        if self.model.training and self.model.shape.dropout > 0:
            return None
        key = tuple((p._version, p.data_ptr()) for p in self.model.parameters())
        if self._acting is None or self._acting[0] != key:
            self._acting = (key, ActingWeights.of(self.model))
        return self._acting[1]

    @torch.inference_mode()
    def plan_rollout(self, steps: int, batch: int, graph_how: GraphChoice | str, gate_how: GateChoice | str,
                     generator: torch.Generator | None) -> RolloutPlan:
        """The RolloutPlan of `steps` act() calls (actions sampled) on `batch` envs."""
        return RolloutPlan(self.acting_weights(), self._draws(steps, batch, graph_how, gate_how, generator))

    def _draws(self, steps: int, batch: int, graph_how: GraphChoice | str, gate_how: GateChoice | str,
               generator: torch.Generator | None) -> ActingDraws | None:
        """ActingDraws of `steps` act() calls on `batch` envs that sample their actions (None where act() must draw
        as it goes: with a sampled gate, whose draws in value() fall between steps)."""
        how = graph_choice(graph_how)
        if self.model.gate is not None and gate_choice(gate_how) is GateChoice.SAMPLE:
            return None
        n, a, dev = self.graph.n_agents, self.model.shape.n_actions, self.graph.fixed.device
        sampled = how is GraphChoice.SAMPLE and self.graph.learned
        per_graph = batch * n * n if sampled else 0
        u = torch.rand(steps, per_graph + n * batch * a, generator=generator, device=dev)
        if sampled:
            # graph.gumbel's transform, on the uniforms it would draw at each step
            noise = -torch.log(-torch.log(u[:, :per_graph].clamp_(1e-10, 1.0 - 1e-7))).reshape(steps, batch, n, n)
            hard = topk_hot(self.graph.alpha.detach() + noise, self.graph.k)
        else:
            hard, noise = self.pick_graph(batch, how, None)
            hard, noise = hard.expand(steps, batch, n, n), noise.expand(steps, batch, n, n)
        return ActingDraws(hard, noise, neg_gumbel(u[:, per_graph:]).reshape(steps, n, batch, a))

    def pick_graph(self, batch: int, how: GraphChoice | str,
                   generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(hard [B,N,N] bool, noise [B,N,N] f32) per `how` (a GraphChoice; an unknown one is a ValueError)."""
        how = graph_choice(how)
        if how is GraphChoice.FULL:
            return self.graph.full(batch)
        if how is GraphChoice.DETERMINISTIC:
            n = self.graph.n_agents
            hard = self.graph.deterministic().expand(batch, n, n).clone()
            return hard, torch.zeros(batch, n, n, device=hard.device)
        return self.graph.sample(batch, generator)

    @staticmethod
    def pick_gate(p: Tensor | None, how: GateChoice | str, generator: torch.Generator | None) -> Tensor | None:
        """[B,N] bool decisions from p [B,N] per `how` (a GateChoice; an unknown one is a ValueError); None without
        a gate."""
        how = gate_choice(how)
        if p is None:
            return None
        if how is GateChoice.OPEN:
            return torch.ones_like(p, dtype=torch.bool)
        if how is GateChoice.THRESHOLD:
            return p > 0.5
        return sample_gate(p, generator)

    def act(self, obs: Tensor, avail: Tensor, alive: Tensor, graph_how: str, gate_how: str,
            generator: torch.Generator | None, deterministic: bool = False, plan: RolloutPlan | None = None,
            t: int = 0) -> ActOut:
        """obs [B,N,O], avail [B,N,A] bool, alive [B,N] bool -> ActOut. plan: this rollout's RolloutPlan, and t the
        step within it (then step t's pre-drawn randomness replaces draws from `generator`).

        Runs under torch.inference_mode (about a fifth faster than no_grad here), so every field but `actions`
        (a normal tensor: an env may modify it) is an inference tensor: read or copy it, never modify it in place."""
        with torch.inference_mode():
            out = self._act(obs, avail, alive, graph_how, gate_how, generator, deterministic, plan, t)
        out.actions = out.actions.clone()
        return out

    def _act(self, obs: Tensor, avail: Tensor, alive: Tensor, graph_how: str, gate_how: str,
             generator: torch.Generator | None, deterministic: bool, plan: RolloutPlan | None, t: int) -> ActOut:
        if plan is not None and plan.draws is not None:
            d = plan.draws
            hard, noise, neg_noise = d.hard[t], d.noise[t], d.action[t]
        else:
            hard, noise = self.pick_graph(obs.shape[0], graph_how, generator)
            neg_noise = None
        fast = self.acting_weights() if plan is None else plan.weights
        if fast is None:  # the readable path
            h = self.model.embed(obs)
            p = self.model.gate_prob(h)
            gate = self.pick_gate(p, gate_how, generator)
            g = None if gate is None else gate.float()
            mask = receive_mask(hard.float(), alive)
            enc, value = self.model.encode(h, mask, g)
            actions, logp = self.model.autoregressive(enc, decoder_mask(mask), g, avail, generator, deterministic,
                                                      neg_noise)
            return ActOut(actions, logp, value, hard, noise, gate, p)
        with small_tensor_kernels():
            h = fast.embed(obs)
            p = self.model.gate_prob(h)
            gate = self.pick_gate(p, gate_how, generator)
            g = None if gate is None else gate.float()
            enc, mask_zero = fast.encode(h, hard, alive, g)
            actions, logp, value = fast.decode(enc, mask_zero, g, avail, neg_noise, generator, deterministic)
        return ActOut(actions, logp, value, hard, noise, gate, p)

    @torch.inference_mode()
    def value(self, obs: Tensor, alive: Tensor, hard: Tensor, gate_how: str,
              generator: torch.Generator | None, plan: RolloutPlan | None = None) -> Tensor:
        """V [B,N] (normalised units) of obs [B,N,O] under the acting graph hard [B,N,N] bool (plan: as in act)."""
        fast = self.acting_weights() if plan is None else plan.weights
        if fast is None:
            h = self.model.embed(obs)
            gate = self.pick_gate(self.model.gate_prob(h), gate_how, generator)
            g = None if gate is None else gate.float()
            return self.model.encode(h, receive_mask(hard.float(), alive), g)[1]
        with small_tensor_kernels():
            h = fast.embed(obs)
            gate = self.pick_gate(self.model.gate_prob(h), gate_how, generator)
            g = None if gate is None else gate.float()
            return fast.value(fast.encode(h, hard, alive, g)[0])

    def score(self, obs: Tensor, avail: Tensor, alive: Tensor, actions: Tensor, hard: Tensor, noise: Tensor,
              gate: Tensor | None, relax_graph: bool, relax_gate: bool) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
        """Teacher-forced pass over stored decisions -> (log_prob [B,N], entropy [B,N], value [B,N], p [B,N] or None).

        hard/noise [B,N,N]: the stored acting graph; with relax_graph the gradient reaches the current alpha.
        gate [B,N] bool: the stored gate decisions; with relax_gate the gradient reaches p (straight-through)."""
        adjacency = self.graph.relaxed(hard, noise) if relax_graph else hard.float()
        mask = receive_mask(adjacency, alive)
        h = self.model.embed(obs)
        p = self.model.gate_prob(h)
        g = None
        if gate is not None and p is not None:
            g = straight_through_gate(gate, p) if relax_gate else gate.float()
        enc, value = self.model.encode(h, mask, g)
        dmask = decoder_mask(mask if self.decoder_graph_grad else mask.detach())
        logp, entropy = self.model.teacher_forced(enc, actions, dmask, g, avail)
        return logp, entropy, value, p
