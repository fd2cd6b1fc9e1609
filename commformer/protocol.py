"""The one seam between a policy and the trainer (docs/extending.md).

The rollout, the PPO update, evaluation, checkpoints, the graph history and videos talk to a policy only through
the `Policy` protocol below. A policy is an nn.Module (its state_dict is its checkpoint) that also answers:

- schedule: `phase(iteration, total)` and, per phase, `acting(phase, evaluating)`: an opaque "how" that act() and
  value() receive back (CommFormer's: which graph and gate to act on). `upper_level` policies (CommFormer's graph)
  step a second optimiser on the epochs `steps_upper(phase, epoch)` names, on the env columns
  `upper_columns(num_envs, phase)` gives (None: all of them).
- acting: `plan_rollout` prepares a rollout of T steps (what stays fixed, random numbers drawn at once; None for
  nothing), `planned_storage(plan)` the stored fields already known for all T steps; `act(...)` returns an ActOut
  whose `stored` holds, per env, everything score() needs to replay this step exactly (CommFormer: the acting graph, its Gumbel noise and the gate decisions; a recurrent policy: the hidden
  state it acted from). `storage(num_envs)` declares those fields. `carry` is what a policy keeps from one step to the
  next in an env (a recurrent hidden state; None for memoryless policies): act() receives the carry of the step and
  returns the next one, `reset_carry` clears it where an env's episode starts.
- values: `value(obs, alive, stored, carry, how, ...)`, including the value of a truncated env's final observation
  under the stored decisions and the carry it had before the reset; `bootstrap_stored` gives the stored fields for
  an observation nobody acted on yet (the last one of a rollout).
- the update: `score(batch, phase, upper, relax)` over stored rows, with gradients; `param_groups()`. A policy
  with `sequences` gets whole env columns instead ([T,B',...]: minibatches split the B env columns, never steps),
  so a recurrent policy can replay each column from its stored state at the rollout's first step.
- inputs: `uses_state` policies also get the env's global state (`state` [B,S], keyword) in act() and value(), and
  the update's batch holds it as "state".
- reporting: `messages(stored, alive)` (per env and step, the (receiver, sender) pairs where the receiver heard the
  sender: the project's one definition of a message), `rollout_metrics`, `iteration_metrics`, `summary_lines`, and
  `comm_graph` (an object with mode, k, learned, alpha and margins(), or None) for the graph history.
Shapes: B envs (or R rows in an update), N agents, O obs width, A actions.
"""
from __future__ import annotations

import importlib
from dataclasses import dataclass, field
from typing import Any, Callable, Optional, Protocol, runtime_checkable

import torch
from torch import Tensor

# Phases every policy may use; a policy with one level only ever reports FIXED (and WARMUP if it warms up).
FIXED, WARMUP, BILEVEL, FROZEN = "fixed", "warmup", "bilevel", "frozen"


@dataclass
class ActOut:
    """One acting step of B envs."""

    actions: Tensor  # [B,N] long
    log_prob: Tensor  # [B,N] f32
    value: Tensor  # [B,N] f32 (the value normaliser's units)
    stored: dict[str, Tensor]  # per env, what score() needs to replay the step ([B,...] each)
    carry: Any = None  # the policy's per-env state after this step (None: memoryless)
    graph: Optional[Tensor] = None  # [B,N,N] bool acting graph (receiver i, sender j), for the graph history
    gate: Optional[Tensor] = None  # [B,N] bool gate decisions, where the policy has a gate
    gate_prob: Optional[Tensor] = None  # [B,N] f32


@dataclass
class Scored:
    """The update's pass over R stored rows."""

    log_prob: Tensor  # [R,N] f32, with gradient
    entropy: Tensor  # [R,N] f32
    value: Tensor  # [R,N] f32 (normalised units)
    aux_loss: Optional[Tensor] = None  # scalar added to the PPO loss (CommFormer: the gate's communication cost)
    stats: dict[str, float] = field(default_factory=dict)  # extra diagnostics of the minibatch (e.g. comm/gate_p)


@runtime_checkable
class Policy(Protocol):
    upper_level: bool
    uses_state: bool  # act() and value() take the env's global state as the keyword `state` [B,S]
    sequences: bool  # score() gets whole rollout columns [T,B',...] (recurrent policies), not rows [R,...]

    def phase(self, iteration: int, total_iterations: int) -> str: ...

    def acting(self, phase: str, evaluating: bool) -> Any: ...

    def steps_upper(self, phase: str, epoch: int) -> bool: ...

    def upper_columns(self, num_envs: int, phase: str) -> Optional[tuple[Tensor, Tensor]]: ...

    def storage(self, num_envs: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]: ...

    def initial_carry(self, num_envs: int) -> Any: ...

    def reset_carry(self, carry: Any, starts: Tensor) -> Any: ...

    def plan_rollout(self, steps: int, batch: int, how: Any, generator: Optional[torch.Generator]) -> Any: ...

    def planned_storage(self, plan: Any) -> dict[str, Tensor]: ...

    def act(self, obs: Tensor, avail: Tensor, alive: Tensor, how: Any, generator: Optional[torch.Generator],
            deterministic: bool = False, plan: Any = None, t: int = 0, carry: Any = None) -> ActOut: ...

    def value_draws(self, how: Any) -> bool: ...

    def bootstrap_stored(self, batch: int, how: Any, generator: Optional[torch.Generator]) -> dict[str, Tensor]: ...

    def value(self, obs: Tensor, alive: Tensor, stored: dict[str, Tensor], carry: Any, how: Any,
              generator: Optional[torch.Generator], plan: Any = None) -> Tensor: ...

    def score(self, batch: dict[str, Any], phase: str, upper: bool, relax: bool) -> Scored: ...

    def param_groups(self) -> tuple[list[dict[str, Any]], list[torch.nn.Parameter]]: ...

    def after_update(self, obs: Tensor, alive: Tensor) -> None: ...

    def messages(self, stored: dict[str, Tensor], alive: Tensor) -> Tensor: ...

    def rollout_metrics(self, stored: dict[str, Tensor], alive: Tensor) -> dict[str, float]: ...

    def iteration_metrics(self) -> dict[str, float]: ...

    def summary_lines(self, iteration: int) -> list[str]: ...

    def restored(self) -> None: ...

    @property
    def comm_graph(self) -> Any: ...


@dataclass(frozen=True)
class PolicyEntry:
    """How a run gets its policy: `config`, the algo schema (a dataclass subclassing commformer.config.AlgoConfig,
    checked at composition), and `build(algo, spec, seed) -> Policy` (spec: the env's EnvSpec; the policy's
    parameters initialised from `seed`)."""

    config: type
    build: Callable[[Any, Any, int], Any]


# The built-in policies: `algo.policy` name -> the module:attribute of its PolicyEntry (looked up when a run names
# it, so this module imports none of them).
BUILTIN_POLICIES: dict[str, str] = {
    "commformer": "commformer.policies:COMMFORMER",
    "mappo": "commformer.baselines.mappo:MAPPO",
    "ippo": "commformer.baselines.mappo:IPPO",
    "commnet": "commformer.baselines.commnet:COMMNET",
    "ic3net": "commformer.baselines.ic3net:IC3NET",
    "tarmac": "commformer.baselines.tarmac:TARMAC",
    "gacomm": "commformer.baselines.gacomm:GACOMM",
    "magic": "commformer.baselines.magic:MAGIC",
}


def policy_entry(name: str) -> PolicyEntry:
    """The PolicyEntry of a built-in name (BUILTIN_POLICIES) or of 'package.module:attribute' (a policy of your
    own; docs/extending.md); ValueError naming the value, what went wrong and the built-in names."""
    path = BUILTIN_POLICIES.get(name, name)
    module_name, _, attr = path.partition(":")
    allowed = f"built-in: {', '.join(BUILTIN_POLICIES)}; or module:attribute of a PolicyEntry"
    if not module_name or not attr:
        raise ValueError(f"algo.policy={name!r}; {allowed}")
    try:
        entry = getattr(importlib.import_module(module_name), attr)
    except (ImportError, AttributeError) as e:
        raise ValueError(f"algo.policy={name!r}: {e}; {allowed}") from None
    if not isinstance(entry, PolicyEntry):
        raise ValueError(f"algo.policy={name!r} is a {type(entry).__name__}; expected a PolicyEntry")
    return entry


def state_kwarg(policy: Any, state: Tensor) -> dict[str, Tensor]:
    """{"state": state} for a policy that reads the env's global state (`uses_state`: its act() and value() take
    the keyword `state`, [B,S]), else {} (a policy that does not read it needs no such argument)."""
    return {"state": state} if getattr(policy, "uses_state", False) else {}


class PolicyBase(torch.nn.Module):
    """Defaults for a one-level, memoryless policy that stores nothing beyond its actions: subclass it and write
    act(), value() and score() (docs/extending.md). Every default is one of the protocol's methods."""

    upper_level = False
    uses_state = False
    sequences = False
    comm_graph = None

    def phase(self, iteration: int, total_iterations: int) -> str:
        return FIXED

    def acting(self, phase: str, evaluating: bool) -> Any:
        return None

    def steps_upper(self, phase: str, epoch: int) -> bool:
        return False

    def upper_columns(self, num_envs: int, phase: str) -> None:
        return None

    def storage(self, num_envs: int) -> dict[str, tuple[tuple[int, ...], torch.dtype]]:
        return {}

    def initial_carry(self, num_envs: int) -> Any:
        return None

    def reset_carry(self, carry: Any, starts: Tensor) -> Any:
        return carry

    def plan_rollout(self, steps: int, batch: int, how: Any, generator: Optional[torch.Generator]) -> Any:
        return None

    def planned_storage(self, plan: Any) -> dict[str, Tensor]:
        return {}

    def messages(self, stored: dict[str, Tensor], alive: Tensor) -> Tensor:
        return torch.zeros(alive.shape[:-1], device=alive.device)

    def value_draws(self, how: Any) -> bool:
        return False

    def bootstrap_stored(self, batch: int, how: Any, generator: Optional[torch.Generator]) -> dict[str, Tensor]:
        return {}

    def param_groups(self) -> tuple[list[dict[str, Any]], list[torch.nn.Parameter]]:
        return [{"params": list(self.parameters()), "name": "network"}], []

    def after_update(self, obs: Tensor, alive: Tensor) -> None:
        return None

    def rollout_metrics(self, stored: dict[str, Tensor], alive: Tensor) -> dict[str, float]:
        return {}

    def iteration_metrics(self) -> dict[str, float]:
        return {}

    def summary_lines(self, iteration: int) -> list[str]:
        return []

    def restored(self) -> None:
        return None
