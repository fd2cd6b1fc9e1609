"""The CommFormer policy: the network, its communication graph and the bi-level schedule, behind the trainer's
policy protocol (commformer/protocol.py). This is the readable reference; commformer/fast/ computes the same
functions faster (algo.backend=fast).

- act():   rollouts and evaluation: picks the graph (a Gumbel top-k sample, top-k(alpha), or the full graph in
           warm-up) and the gate, encodes, decodes actions autoregressively; stores (graph, noise, gate).
- value(): V of observations under stored decisions (to bootstrap truncated episodes).
- score(): the update's teacher-forced pass over the stored decisions, the gradient reaching alpha
           (straight-through, upper-level epochs) and the gate's p.
Schedule (docs/method.md, "Bi-level schedule"): warm-up on the full graph with open gates, then alpha steps on
every arch_every-th PPO epoch and the network on the others; optionally frozen after a fraction of training.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, NamedTuple, Optional

import torch
from torch import Tensor, nn

from commformer.method.gates import GateChoice, pick_gate, straight_through_gate
from commformer.method.graph import CommGraph, GraphChoice, decoder_mask, messages_per_step, receive_mask
from commformer.method.model import CommFormer
from commformer.protocol import ActOut, BILEVEL, FIXED, FROZEN, WARMUP, Scored
from commformer.tensors import masked_mean


class Acting(NamedTuple):
    """CommFormer's "how" of an acting step: the graph and the gate choice."""

    graph: GraphChoice
    gate: GateChoice

    @staticmethod
    def of(graph: str | GraphChoice, gate: str | GateChoice) -> "Acting":
        """Acting from names; ValueError naming the allowed ones."""
        try:
            g = GraphChoice(graph)
        except ValueError:
            raise ValueError(f"graph choice {graph!r}; allowed: {[c.value for c in GraphChoice]}") from None
        try:
            return Acting(g, GateChoice(gate))
        except ValueError:
            raise ValueError(f"gate choice {gate!r}; allowed: {[c.value for c in GateChoice]}") from None


def split_sizes(num_envs: int, fraction: float) -> tuple[int, int]:
    """(upper, lower) env-column counts of bilevel=split: max(1, round(f*B)) held out, at least one left."""
    n_up = min(max(1, round(fraction * num_envs)), num_envs - 1)
    return n_up, num_envs - n_up


@dataclass(frozen=True)
class Schedule:
    """CommFormer's settings beyond the network (the algo config's keys of the same names)."""

    warmup_iters: int = 10
    freeze_fraction: float = 1.0
    arch_every: int = 5
    bilevel: str = "alternate"
    split_fraction: float = 0.25
    comm_cost: float = 0.0
    decoder_graph_grad: bool = False
    graph_grad: str = "straight_through"  # straight_through (released) | score (ours; docs/method.md, "Bi-level schedule")
    acting_graph: str = "sample"  # sample (a Gumbel top-k per env and step) | topk (top-k(alpha), as released)
    clip: float = 0.2  # the PPO clip of the score-function surrogate
    warmup_every_graph: bool = False  # fixed graphs (full, none, random) warm up on the full graph too


class CommFormerPolicy(nn.Module):
    """decoder_graph_grad (Schedule): whether the decoder's mask D also carries the graph's gradient (w * D). Off by
    default, as the method defines D as a 0/1 condition on M; on the signal game the setting made no measured
    difference (docs/results.md, "Decisions backed by measurements"). The encoder's w * M path carries the gradient
    either way."""

    uses_state = False  # acts on the observations alone
    sequences = False  # memoryless: the update scores single rows

    def __init__(self, model: CommFormer, graph: CommGraph, schedule: Schedule = Schedule()) -> None:
        super().__init__()
        self.model, self.graph, self.schedule = model, graph, schedule
        self.last_graph: Optional[Tensor] = None  # the deterministic graph after the last update (graph_changes)

    # ---- schedule ------------------------------------------------------------------------------------------------
    @property
    def upper_level(self) -> bool:
        return self.graph.learned

    @property
    def comm_graph(self) -> CommGraph:
        return self.graph

    def phase(self, iteration: int, total_iterations: int) -> str:
        """The schedule's phase at a 0-based iteration."""
        s = self.schedule
        if not self.graph.learned:
            warms = self.model.gate is not None or s.warmup_every_graph
            return WARMUP if (warms and iteration < s.warmup_iters) else FIXED
        if iteration < s.warmup_iters:
            return WARMUP
        if s.freeze_fraction < 1.0 and iteration >= s.freeze_fraction * total_iterations:
            return FROZEN
        return BILEVEL

    def acting(self, phase: str, evaluating: bool) -> Acting:
        """Warm-up: the full graph with open gates. Evaluation: top-k(alpha) (or the fixed graph), gate open when
        p > 0.5. Rollouts: both sampled, except that a frozen graph, and with schedule.acting_graph=topk a learned
        one (the released rollouts), act on top-k(alpha)."""
        if phase == WARMUP:
            return Acting(GraphChoice.FULL, GateChoice.OPEN)
        if evaluating:
            return Acting(GraphChoice.DETERMINISTIC, GateChoice.THRESHOLD)
        if phase == FROZEN or (phase == BILEVEL and self.schedule.acting_graph == "topk"):
            return Acting(GraphChoice.DETERMINISTIC, GateChoice.SAMPLE)
        return Acting(GraphChoice.SAMPLE, GateChoice.SAMPLE)

    def steps_upper(self, phase: str, epoch: int) -> bool:
        """Whether PPO epoch `epoch` (0-based) steps alpha (True) or the network (False)."""
        return phase == BILEVEL and (epoch + 1) % self.schedule.arch_every == 0

    def upper_columns(self, num_envs: int, phase: str) -> Optional[tuple[Tensor, Tensor]]:
        """bilevel=split in the bi-level phase: (upper, lower) env columns, the last ones held out; else None."""
        if self.schedule.bilevel != "split" or phase != BILEVEL:
            return None
        if num_envs < 2:  # the config checks this up front; this guards direct callers
            raise ValueError(f"num_envs={num_envs}; algo.bilevel=split needs >= 2 env columns")
        n_up, _ = split_sizes(num_envs, self.schedule.split_fraction)
        cols = torch.arange(num_envs)
        return cols[num_envs - n_up:], cols[: num_envs - n_up]

    def param_groups(self) -> tuple[list[dict[str, Any]], list[nn.Parameter]]:
        """(lower-level groups: the network, then the gate in its own group; upper level: alpha)."""
        gate = list(self.model.gate.parameters()) if self.model.gate is not None else []
        gate_ids = {id(p) for p in gate}
        groups = [{"params": [p for p in self.model.parameters() if id(p) not in gate_ids], "name": "network"}]
        if gate:
            groups.append({"params": gate, "name": "gate"})
        return groups, list(self.graph.parameters())

    # ---- storage and carry ---------------------------------------------------------------------------------------
    def storage(self, num_envs: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        n = self.graph.n_agents
        out = {"graph": ((num_envs, n, n), torch.bool), "noise": ((num_envs, n, n), torch.float32)}
        if self.model.gate is not None:
            out["gate"] = ((num_envs, n), torch.bool)
        if self.score_graph:
            out["graph_logp"] = ((num_envs, n), torch.float32)
        return out

    @property
    def score_graph(self) -> bool:
        """Whether alpha learns by the score-function estimator (schedule.graph_grad=score)."""
        return self.graph.learned and self.schedule.graph_grad == "score"

    def initial_carry(self, num_envs: int) -> None:
        return None  # no memory

    def reset_carry(self, carry: None, starts: Tensor) -> None:
        return None

    # ---- acting --------------------------------------------------------------------------------------------------
    def plan_rollout(self, steps: int, batch: int, how: Acting, generator: torch.Generator | None) -> None:
        return None  # the reference draws as it goes

    def planned_storage(self, plan: Any) -> dict[str, Tensor]:
        return {}

    def act(self, obs: Tensor, avail: Tensor, alive: Tensor, how: Acting, generator: torch.Generator | None,
            deterministic: bool = False, plan: Any = None, t: int = 0, carry: Any = None) -> ActOut:
        """obs [B,N,O], avail [B,N,A] bool, alive [B,N] bool -> ActOut (stored: graph, noise, gate)."""
        with torch.no_grad():
            hard, noise = self.graph.pick(obs.shape[0], how.graph, generator)
            h = self.model.embed(obs)
            p = self.model.gate_prob(h)
            gate = pick_gate(p, how.gate, generator)
            g = None if gate is None else gate.float()
            mask = receive_mask(hard.float(), alive)
            enc, value = self.model.encode(h, mask, g)
            actions, logp = self.model.autoregressive(enc, decoder_mask(mask), g, avail, generator, deterministic)
        return self.act_out(actions, logp, value, hard, noise, gate, p)

    def act_out(self, actions: Tensor, logp: Tensor, value: Tensor, hard: Tensor, noise: Tensor, gate: Tensor | None,
                p: Tensor | None) -> ActOut:
        stored = {"graph": hard, "noise": noise}
        if gate is not None:
            stored["gate"] = gate
        if self.score_graph:  # the sampled graph's log-probability under the acting alpha (the surrogate's "old")
            stored["graph_logp"] = self.graph.log_prob(hard, noise)
        return ActOut(actions, logp, value, stored, None, hard, gate, p)

    def value_draws(self, how: Acting) -> bool:
        """Whether value() draws from the generator (a sampled gate), so that calls must keep step order."""
        return self.model.gate is not None and how.gate is GateChoice.SAMPLE

    def bootstrap_stored(self, batch: int, how: Acting, generator: torch.Generator | None) -> dict[str, Tensor]:
        hard, noise = self.graph.pick(batch, how.graph, generator)
        return {"graph": hard, "noise": noise}

    def value(self, obs: Tensor, alive: Tensor, stored: dict[str, Tensor], carry: Any, how: Acting,
              generator: torch.Generator | None, plan: Any = None) -> Tensor:
        """V [B,N] (normalised units) of obs [B,N,O] under the stored acting graph (the gate is picked afresh)."""
        with torch.no_grad():
            h = self.model.embed(obs)
            gate = pick_gate(self.model.gate_prob(h), how.gate, generator)
            g = None if gate is None else gate.float()
            return self.model.encode(h, receive_mask(stored["graph"].float(), alive), g)[1]

    # ---- the update ----------------------------------------------------------------------------------------------
    def score(self, batch: dict[str, Any], phase: str, upper: bool, relax: bool) -> Scored:
        """Teacher-forced pass over stored rows (obs [R,N,O], avail, alive, actions, graph, noise, gate).

        relax: build the gradient paths (False for the no-grad pass that gives the old log-probs): the graph's
        straight-through relaxation in upper-level steps, the gate's in every phase but warm-up."""
        gate_on = "gate" in batch and phase != WARMUP
        relax_graph = relax and upper and not self.score_graph
        adjacency = self.graph.relaxed(batch["graph"], batch["noise"]) if relax_graph else batch["graph"].float()
        mask = receive_mask(adjacency, batch["alive"])
        h = self.model.embed(batch["obs"])
        p = self.model.gate_prob(h)
        g = None
        if gate_on and p is not None:
            g = straight_through_gate(batch["gate"], p) if relax else batch["gate"].float()
        enc, value = self.model.encode(h, mask, g)
        dmask = decoder_mask(mask if self.schedule.decoder_graph_grad else mask.detach())
        logp, entropy = self.model.teacher_forced(enc, batch["actions"], dmask, g, batch["avail"])
        return self.scored(logp, entropy, value, p, batch, gate_on, upper and relax)

    def scored(self, logp: Tensor, entropy: Tensor, value: Tensor, p: Tensor | None, batch: dict[str, Any],
               gate_on: bool, upper: bool) -> Scored:
        """Scored with the gate's cost comm_cost * mean over alive agents of p (docs/method.md, "Temporal gate") and,
        in an upper-level step with graph_grad=score, the graph's clipped surrogate."""
        out = Scored(logp, entropy, value)
        if p is not None:
            if gate_on and self.schedule.comm_cost > 0:
                out.aux_loss = self.schedule.comm_cost * masked_mean(p, batch["alive"])
            out.stats["comm/gate_p"] = float(masked_mean(p.detach(), batch["alive"]))
        if upper and self.score_graph:
            surrogate = self.graph_surrogate(batch)
            out.aux_loss = surrogate if out.aux_loss is None else out.aux_loss + surrogate
            out.stats["loss/graph_surrogate"] = float(surrogate.detach())
        return out

    def graph_surrogate(self, batch: dict[str, Any]) -> Tensor:
        """The graph as an action (graph_grad=score, ours): -mean over active receivers of
        min(r A, clip(r, 1 - eps, 1 + eps) A), r = P_alpha(senders) / P_acting(senders), A the receiver's discounted
        return normalised over the batch: alpha moves toward the senders whose messages preceded better returns of
        their receiver. Not the PPO advantage: the critic reads the sampled graph (its value of a state with the
        scout heard is high, and the next step's graph is drawn again), so an advantage would charge the heard sender
        for the critic's optimism; alpha does not depend on the state, so the batch mean is a fair baseline.
        batch: graph, noise, graph_logp [R,...], returns, active [R,N]."""
        ratio = torch.exp(self.graph.log_prob(batch["graph"], batch["noise"]) - batch["graph_logp"])
        active, ret = batch["active"], batch["returns"]
        mean = masked_mean(ret, active)
        adv = (ret - mean) / (masked_mean((ret - mean) ** 2, active).sqrt() + 1e-8)
        eps = self.schedule.clip
        surr = torch.minimum(ratio * adv, ratio.clamp(1.0 - eps, 1.0 + eps) * adv)
        return -masked_mean(surr, batch["active"])

    def after_update(self, obs: Tensor, alive: Tensor) -> None:
        """Fold the rollout's observations into the running statistics (algo.obs_norm), after the update, so the
        next rollout and its update see the same statistics."""
        if self.model.obs_norm is not None:
            self.model.obs_norm.update(obs[alive])

    # ---- reporting -----------------------------------------------------------------------------------------------
    def messages(self, stored: dict[str, Tensor], alive: Tensor) -> Tensor:
        """[...] f32 messages per env and step: receivers (gate open) times their alive senders in the stored graph;
        stored graph [...,N,N], gate [...,N], alive [...,N]."""
        lead, n = alive.shape[:-1], alive.shape[-1]
        gate = stored.get("gate")
        return messages_per_step(stored["graph"].reshape(-1, n, n), alive.reshape(-1, n),
                                 None if gate is None else gate.reshape(-1, n)).view(lead)

    def rollout_metrics(self, stored: dict[str, Tensor], alive: Tensor) -> dict[str, float]:
        """comm/gate_open over the rollout's live agents (stored [T,B,...], alive [T,B,N])."""
        if "gate" not in stored:
            return {}
        return {"comm/gate_open": float(stored["gate"][alive].float().mean())}

    def iteration_metrics(self) -> dict[str, float]:
        """comm/graph_changes (senders swapped in top-k(alpha) since the last call) and alpha's row margins."""
        row: dict[str, float] = {}
        if self.graph.learned:
            det = self.graph.deterministic()
            prev = self.last_graph
            row["comm/graph_changes"] = float("nan") if prev is None else int((det != prev).sum()) // 2
            self.last_graph = det
        margins = self.graph.margins()
        if not bool(torch.isnan(margins).all()):
            row["comm/alpha_margin_min"] = float(margins.min())
            row["comm/alpha_margin_mean"] = float(margins.mean())
        return row

    def restored(self) -> None:
        """After a checkpoint load: the graph as the update before the save left it."""
        if self.graph.learned:
            self.last_graph = self.graph.deterministic()

    def summary_lines(self, iteration: int) -> list[str]:
        g = self.graph
        if g.learned and iteration <= self.schedule.warmup_iters:
            return ["graph: full (the run ended in warm-up; alpha never stepped)"]
        if not g.learned:
            return []
        lines = [f"graph (k={g.k}, top-k of alpha, row = receiver): {g.deterministic().int().tolist()}"]
        m = g.margins()
        if not bool(torch.isnan(m).all()):
            lines.append("alpha row margins (k-th minus (k+1)-th): " + ", ".join(f"{x:.3f}" for x in m.tolist()))
        return lines
