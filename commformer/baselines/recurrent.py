"""Recurrent policies on the policy seam (docs/methods/recurrent.md): a per-agent GRU state carried from step to
step, stored with every rollout step, and replayed over whole rollout columns in the update.

A subclass names its recurrent states (`state_names`, each [B,N,H]), has two heads `actor_out` (features -> action
logits) and `critic_out` (features -> value), and writes one step:
`step(obs, alive, state, hidden, choices, generator, deterministic) -> StepOut` (what each head reads, the next
hidden states, and the step's own random choices: a sender's gate action, a hard graph's Gumbel noise; drawn from
`generator` when `choices` is None, replayed when given). This base does the rest:

- carry: {name: [B,N,H] f32 for each state, "start": [B] bool}; `reset_carry` zeroes the states of the envs whose
  episode starts and marks them; the states of dead agents are zeroed after each step (a dead agent's state then
  carries nothing from its past into the messages or values of anyone).
- stored per step: the states the step acted from (`h_<name>`), the start flag and the step's choices (declared by
  `choice_storage`; a choice that is an action adds its log-probability and entropy to the agent's); `score` (the
  update) takes the
  stored states of each column's first step and unrolls the step function through the column's T steps, zeroing
  where an episode starts: the log-probs it recomputes are those of the states that acted (loss/acting_log_prob_gap
  ~1e-7), and the gradient runs through time over the whole rollout (backpropagation through T steps).
- the value of a truncated env's final observation advances the carry from before the reset by one step, with the
  deterministic choices (no random number is drawn for it).

Shapes: B envs, N agents, O obs width, S global-state width, A actions, H hidden width, T rollout steps.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, Optional

import torch
from torch import Tensor, nn

from commformer.config import AlgoConfig, check
from commformer.protocol import ActOut, PolicyBase, Scored


@dataclass
class RecurrentConfig(AlgoConfig):
    """The keys every recurrent baseline shares (docs/methods/recurrent.md)."""

    hidden: int = 64
    """width of the GRU state"""
    fc: int = 64
    """width of the dense layers before and after the GRU"""
    warmup_iters: int = 0
    """iterations on the full graph first: a recurrent baseline has no warm-up phase, so only 0 (the key exists so
    one study can give every arm the same warm-up rule, algo.warmup_iters=0)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        for key in ("hidden", "fc"):
            check(getattr(self, key) >= 1, f"algo.{key}={getattr(self, key)}; must be >= 1")
        check(self.warmup_iters == 0, f"algo.warmup_iters={self.warmup_iters}; {self.name} has no warm-up phase: "
              "only 0 is allowed")

    def level_rows(self, T: int, B: int) -> dict[str, tuple[int, str]]:
        # minibatches split env columns (whole sequences), never steps
        return {"network": (B, f"num_envs={B} env columns (a recurrent policy trains on whole sequences)")}


@dataclass
class StepOut:
    """One step of a recurrent policy for B envs. The heads (`actor_out`, `critic_out`) are applied by the base, per
    step when acting and once over all T steps in the update (they hold no state, so batching them over time is
    exact up to rounding and leaves only the recurrent core in the sequential loop)."""

    actor_in: Tensor  # [B,N,F] what the policy head reads
    critic_in: Tensor  # [B,N,F'] what the value head reads
    hidden: dict[str, Tensor]  # next states {name: [B,N,H]}
    choices: dict[str, Tensor] = field(default_factory=dict)  # the step's random choices, per env ([B,...] each)
    choice_log_prob: Optional[Tensor] = None  # [B,N]: log-probability of the choices that are actions
    choice_entropy: Optional[Tensor] = None  # [B,N]
    logits: Optional[Tensor] = None  # [B,N,A] before masking, filled by RecurrentPolicy.heads
    value: Optional[Tensor] = None  # [B,N]


def masked_logits(logits: Tensor, avail: Tensor) -> Tensor:
    """logits [...,A], avail [...,A] bool -> logits with unavailable actions at -1e9 (probability ~0)."""
    return logits.masked_fill(~avail, -1e9)


def sample(logits: Tensor, generator: Optional[torch.Generator], deterministic: bool) -> Tensor:
    """Actions [...] from masked logits [...,A]: argmax, or a Gumbel-max draw from `generator`."""
    if deterministic:
        return logits.argmax(-1)
    u = torch.rand(logits.shape, generator=generator, device=logits.device).clamp_(1e-10, 1.0 - 1e-7)
    return (logits - torch.log(-torch.log(u))).argmax(-1)


def gru(cell: nn.GRUCell, x: Tensor, h: Tensor) -> Tensor:
    """One GRU step per agent: x [B,N,X], h [B,N,H] -> [B,N,H] (one cell shared by all agents)."""
    B, N = x.shape[:2]
    return cell(x.reshape(B * N, -1), h.reshape(B * N, -1)).view(B, N, -1)


def mlp(inp: int, width: int, out: int) -> nn.Sequential:
    """Linear(inp, width) -> ReLU -> Linear(width, out)."""
    return nn.Sequential(nn.Linear(inp, width), nn.ReLU(), nn.Linear(width, out))


def agent_ids(B: int, N: int, device: torch.device) -> Tensor:
    """One-hot agent ids [B,N,N]."""
    return torch.eye(N, device=device).expand(B, N, N)


class RecurrentPolicy(PolicyBase):
    """The base of every recurrent baseline: carry, storage, acting and the sequence replay of the update."""

    sequences = True
    state_names: tuple[str, ...] = ("actor",)

    def __init__(self, n_agents: int, hidden: int) -> None:
        super().__init__()
        self.n_agents, self.hidden = n_agents, hidden

    # ---- what a subclass writes ------------------------------------------------------------------------------------
    # Either step(), or, for a method whose recurrent core reads no message (splits_recurrence = True), the three
    # parts of a step: core_inputs (from this step alone), recur (the core) and read (everything after the core).
    # The update then runs only recur step by step and core_inputs / read once over all T steps of a column.
    splits_recurrence = False

    def step(self, obs: Tensor, alive: Tensor, state: Optional[Tensor], hidden: dict[str, Tensor],
             choices: Optional[dict[str, Tensor]], generator: Optional[torch.Generator],
             deterministic: bool) -> StepOut:
        """obs [B,N,O], alive [B,N] bool, state [B,S] or None, hidden {name: [B,N,H]}; choices: the step's stored
        choices to replay, or None to draw them (from generator; their deterministic form when deterministic).
        By default the three parts in turn (a method that does not split its step writes its own)."""
        nxt = self.recur(self.core_inputs(obs, alive, state), hidden)
        return self.read(obs, alive, state, nxt, choices, generator, deterministic)

    def core_inputs(self, obs: Tensor, alive: Tensor, state: Optional[Tensor]) -> dict[str, Tensor]:
        """The core's inputs from this step's observations alone: {name: [B,...]} (splits_recurrence only)."""
        raise NotImplementedError

    def recur(self, x: dict[str, Tensor], hidden: dict[str, Tensor]) -> dict[str, Tensor]:
        """The next states {name: [B,N,H]} from core_inputs' output and the last states (splits_recurrence only)."""
        raise NotImplementedError

    def read(self, obs: Tensor, alive: Tensor, state: Optional[Tensor], nxt: dict[str, Tensor],
             choices: Optional[dict[str, Tensor]], generator: Optional[torch.Generator],
             deterministic: bool) -> StepOut:
        """The step's output from its next states `nxt` (before dead agents' states are zeroed), as step()'s
        (splits_recurrence only)."""
        raise NotImplementedError

    def choice_storage(self, num_envs: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        """Shapes and dtypes of the step's choices (none by default)."""
        return {}

    # ---- carry -----------------------------------------------------------------------------------------------------
    def _device(self) -> torch.device:
        return next(self.parameters()).device

    def initial_carry(self, num_envs: int) -> dict[str, Tensor]:
        dev = self._device()
        carry = {n: torch.zeros(num_envs, self.n_agents, self.hidden, device=dev) for n in self.state_names}
        carry["start"] = torch.ones(num_envs, dtype=torch.bool, device=dev)
        return carry

    def reset_carry(self, carry: dict[str, Tensor], starts: Tensor) -> dict[str, Tensor]:
        """Zero the states of the envs whose episode starts (starts [B] bool) and mark them."""
        out = {n: torch.where(starts[:, None, None], 0.0, carry[n]) for n in self.state_names}
        out["start"] = starts.to(torch.bool).clone()
        return out

    def storage(self, num_envs: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        out: dict[str, tuple[tuple[int, ...], torch.dtype]] = {
            f"h_{n}": ((num_envs, self.n_agents, self.hidden), torch.float32) for n in self.state_names}
        out["start"] = ((num_envs,), torch.bool)
        out.update(self.choice_storage(num_envs))
        return out

    def heads(self, actor_in: Tensor, critic_in: Tensor) -> tuple[Tensor, Tensor]:
        """[...,F], [...,F'] -> (logits [...,A] before masking, value [...])."""
        return self.actor_out(actor_in), self.critic_out(critic_in).squeeze(-1)

    def _advance(self, obs: Tensor, alive: Tensor, state: Optional[Tensor], hidden: dict[str, Tensor],
                 choices: Optional[dict[str, Tensor]] = None, generator: Optional[torch.Generator] = None,
                 deterministic: bool = True, with_heads: bool = True) -> StepOut:
        """step() with dead agents' next states zeroed (and the heads applied, unless with_heads is False)."""
        out = self.step(obs, alive, state, hidden, choices, generator, deterministic)
        keep = alive[..., None].to(out.actor_in.dtype)
        out.hidden = {n: h * keep for n, h in out.hidden.items()}
        if with_heads:
            out.logits, out.value = self.heads(out.actor_in, out.critic_in)
        return out

    # ---- acting ----------------------------------------------------------------------------------------------------
    def act(self, obs: Tensor, avail: Tensor, alive: Tensor, how: Any, generator: Optional[torch.Generator],
            deterministic: bool = False, plan: Any = None, t: int = 0, carry: Any = None,
            state: Optional[Tensor] = None) -> ActOut:
        if carry is None:
            carry = self.initial_carry(obs.shape[0])
        hidden = {n: carry[n] for n in self.state_names}
        with torch.no_grad():
            out = self._advance(obs, alive, state, hidden, None, generator, deterministic)
            logp_all = torch.log_softmax(masked_logits(out.logits, avail), dim=-1)
            actions = sample(logp_all, generator, deterministic)
            logp = logp_all.gather(-1, actions[..., None]).squeeze(-1)
            if out.choice_log_prob is not None:
                logp = logp + out.choice_log_prob
        stored = {f"h_{n}": hidden[n] for n in self.state_names}
        stored["start"] = carry["start"]
        stored.update(out.choices)
        nxt = dict(out.hidden)
        nxt["start"] = torch.zeros_like(carry["start"])
        return ActOut(actions, logp, out.value, stored=stored, carry=nxt, graph=self.acting_graph(out.choices, alive),
                      gate=out.choices.get("gate"))

    def acting_graph(self, choices: dict[str, Tensor], alive: Tensor) -> Optional[Tensor]:
        """[B,N,N] bool (receiver, sender) the step communicated on, for the graph history (None: not drawn)."""
        return None

    def value(self, obs: Tensor, alive: Tensor, stored: dict[str, Tensor], carry: Any, how: Any,
              generator: Optional[torch.Generator], plan: Any = None, state: Optional[Tensor] = None) -> Tensor:
        """V(obs) [B,N] from the carry the env has at obs (for a truncated env's final observation: the carry after
        its last step, before the reset), with the deterministic choices."""
        with torch.no_grad():
            return self._advance(obs, alive, state, {n: carry[n] for n in self.state_names}).value

    # ---- the update ------------------------------------------------------------------------------------------------
    def score(self, batch: dict[str, Any], phase: str, upper: bool, relax: bool) -> Scored:
        """Replay each env column [T,B',...] from its stored states at the first step, with the stored choices (the
        recurrent core step by step, the heads once over all steps); log-probs, entropies and values [T,B',N]."""
        obs, alive, avail, start = batch["obs"], batch["alive"], batch["avail"], batch["start"]
        state = batch.get("state")
        names = list(self.choice_storage(1))
        if self.splits_recurrence:
            actor_in, critic_in, choice_lp, choice_ent = self._replay_split(batch, names)
            return self._scored(batch, actor_in, critic_in, choice_lp, choice_ent)
        hidden = {n: batch[f"h_{n}"][0] for n in self.state_names}
        actor_in, critic_in, choice_lp, choice_ent = [], [], [], []
        for t in range(obs.shape[0]):
            if t > 0:  # a new episode starts from zero states (the stored ones are zero there too)
                hidden = {n: torch.where(start[t][:, None, None], batch[f"h_{n}"][t], h) for n, h in hidden.items()}
            out = self._advance(obs[t], alive[t], None if state is None else state[t], hidden,
                                {k: batch[k][t] for k in names}, with_heads=False)
            hidden = out.hidden
            actor_in.append(out.actor_in)
            critic_in.append(out.critic_in)
            if out.choice_log_prob is not None:
                choice_lp.append(out.choice_log_prob)
                choice_ent.append(out.choice_entropy)
        return self._scored(batch, torch.stack(actor_in), torch.stack(critic_in),
                            torch.stack(choice_lp) if choice_lp else None,
                            torch.stack(choice_ent) if choice_ent else None)

    def _replay_split(self, batch: dict[str, Any], names: list[str]) -> tuple[Tensor, Tensor, Optional[Tensor],
                                                                               Optional[Tensor]]:
        """score()'s replay for a split step: core_inputs and read once over the T x B' steps, recur step by step.
        Returns actor_in [T,B',N,F], critic_in [T,B',N,F'], the choices' log-probs and entropies [T,B',N] or None."""
        obs, alive, start = batch["obs"], batch["alive"], batch["start"]
        state = batch.get("state")
        T, B = obs.shape[:2]
        flat = lambda x: None if x is None else x.reshape(T * B, *x.shape[2:])  # noqa: E731
        steps = lambda x: x.view(T, B, *x.shape[1:])  # noqa: E731
        # unbind, not x[t]: the backward of T selects would fill a zero tensor of all T steps for each of them
        x = {k: steps(v).unbind(0) for k, v in self.core_inputs(flat(obs), flat(alive), flat(state)).items()}
        hidden = {n: batch[f"h_{n}"][0] for n in self.state_names}
        nxt_all: dict[str, list[Tensor]] = {n: [] for n in self.state_names}
        for t in range(T):
            if t > 0:  # a new episode starts from zero states (the stored ones are zero there too)
                hidden = {n: torch.where(start[t][:, None, None], batch[f"h_{n}"][t], h) for n, h in hidden.items()}
            nxt = self.recur({k: v[t] for k, v in x.items()}, hidden)
            keep = alive[t][..., None].to(obs.dtype)
            for n in self.state_names:
                nxt_all[n].append(nxt[n])
            hidden = {n: h * keep for n, h in nxt.items()}
        nxt_flat = {n: torch.stack(v).reshape(T * B, *v[0].shape[1:]) for n, v in nxt_all.items()}
        out = self.read(flat(obs), flat(alive), flat(state), nxt_flat, {k: flat(batch[k]) for k in names}, None, True)
        return (steps(out.actor_in), steps(out.critic_in),
                None if out.choice_log_prob is None else steps(out.choice_log_prob),
                None if out.choice_entropy is None else steps(out.choice_entropy))

    def _scored(self, batch: dict[str, Any], actor_in: Tensor, critic_in: Tensor, choice_lp: Optional[Tensor],
                choice_ent: Optional[Tensor]) -> Scored:
        """The heads once over all steps: actor_in [T,B',N,F], critic_in [T,B',N,F'] -> log-probs of the stored
        actions (plus the choices' when they are actions), entropies and values [T,B',N]."""
        logits, value = self.heads(actor_in, critic_in)
        logp_all = torch.log_softmax(masked_logits(logits, batch["avail"]), dim=-1)
        logp = logp_all.gather(-1, batch["actions"][..., None]).squeeze(-1)
        ent = -(logp_all.exp() * logp_all).sum(-1)
        if choice_lp is not None:
            logp, ent = logp + choice_lp, ent + choice_ent
        return Scored(logp, ent, value)

    def messages(self, stored: dict[str, Tensor], alive: Tensor) -> Tensor:
        return torch.zeros(alive.shape[:-1], device=alive.device)
