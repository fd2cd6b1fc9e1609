"""The env contract: every environment family is a VecEnv of B envs that steps on batched torch tensors.

Shape letters: B envs, N agents, O observation width, S global-state width, A actions per agent.

A VecEnv auto-resets: when env b finishes at a step (terminated or truncated), the returned ``obs[b]``,
``state[b]``, ``avail_actions[b]``, ``alive[b]`` and ``active[b]`` already belong to the first step of its next
episode, while ``final_obs[b]``, ``final_state[b]`` and ``final_alive[b]`` keep the last observation of the episode
that ended (to bootstrap a truncated episode) and ``episode[...][b]`` holds that episode's statistics.
"""
from __future__ import annotations

from dataclasses import dataclass, field
from typing import Any, ClassVar, Mapping, Protocol, Sequence, runtime_checkable

import gymnasium
import torch
from torch import Tensor

# Keys every finished episode reports in Step.episode; task metrics ("success", "won") come on top.
EPISODE_KEYS = ("return", "length")


class EnvConfigError(ValueError):
    """A bad env config value (a conf/env/*.yaml key or an env.* override, checked by envs.registry or an env's
    constructor); one line naming the key, the value and what is allowed."""


class EnvUnavailableError(RuntimeError):
    """An env needs something outside Python that is missing (e.g. StarCraft II); the message says how to install it."""


@dataclass(frozen=True)
class EnvSpec:
    """Static description of an env family instance (one agent type after padding).

    n_agents N, obs_dim O, state_dim S, n_actions A (the largest action space; extra actions are unavailable),
    episode_limit (steps after which an episode is truncated), agent_names (N names, in agent order),
    observation_spaces / action_spaces: per-agent gymnasium spaces keyed by agent name (the env's own, unpadded),
    task_metrics: names of the per-episode task metrics this env reports (e.g. ("success",) or ("won",)).
    """

    n_agents: int
    obs_dim: int
    state_dim: int
    n_actions: int
    episode_limit: int
    agent_names: tuple[str, ...]
    observation_spaces: Mapping[str, gymnasium.Space]
    action_spaces: Mapping[str, gymnasium.Space]
    task_metrics: tuple[str, ...] = ()

    def __post_init__(self) -> None:
        if len(self.agent_names) != self.n_agents:
            raise ValueError(f"EnvSpec: {len(self.agent_names)} agent_names for n_agents={self.n_agents}")
        if min(self.n_agents, self.obs_dim, self.n_actions, self.episode_limit) < 1:
            raise ValueError(f"EnvSpec: sizes must be >= 1, got {self}")


@dataclass
class Step:
    """What reset() and step() return, all on the env's device.

    obs [B,N,O] f32 | state [B,S] f32 | avail_actions [B,N,A] bool | reward [B,N] f32 (zeros after reset)
    terminated [B] bool (the task ended: no bootstrap) | truncated [B] bool (time limit: bootstrap from final_obs)
    alive [B,N] bool (the agent exists; dead agents have zero obs, only the no-op, and are no senders)
    active [B,N] bool (the agent's action matters; counts in the losses)
    final_obs [B,N,O] f32, final_state [B,S] f32, final_alive [B,N] bool: the last observation of the episode that
        ended, where terminated | truncated; equal to obs / state / alive elsewhere.
    episode: dict of [B] f32 tensors, valid where terminated | truncated: "return" (sum over time of the mean reward
        over agents), "length" (steps), and the spec's task metrics ("success", "won") as 0/1.
    """

    obs: Tensor
    state: Tensor
    avail_actions: Tensor
    reward: Tensor
    terminated: Tensor
    truncated: Tensor
    alive: Tensor
    active: Tensor
    final_obs: Tensor
    final_state: Tensor
    final_alive: Tensor
    episode: dict[str, Tensor] = field(default_factory=dict)

    @property
    def done(self) -> Tensor:
        """[B] bool: the env finished an episode at this step (terminated or truncated)."""
        return self.terminated | self.truncated

    @classmethod
    def alive_is_active(cls, *, obs: Tensor, state: Tensor, avail_actions: Tensor, reward: Tensor,
                        terminated: Tensor, truncated: Tensor, alive: Tensor, final_obs: Tensor, final_state: Tensor,
                        final_alive: Tensor, episode: dict[str, Tensor]) -> "Step":
        """A Step of an env where every live agent acts: active = alive.clone() (the other fields as given)."""
        return cls(obs=obs, state=state, avail_actions=avail_actions, reward=reward, terminated=terminated,
                   truncated=truncated, alive=alive, active=alive.clone(), final_obs=final_obs,
                   final_state=final_state, final_alive=final_alive, episode=episode)

    def to(self, device: torch.device | str) -> "Step":
        """A copy with every tensor moved to `device`."""
        return Step(
            **{k: getattr(self, k).to(device) for k in STEP_TENSORS},
            episode={k: v.to(device) for k, v in self.episode.items()},
        )


STEP_TENSORS = (
    "obs", "state", "avail_actions", "reward", "terminated", "truncated", "alive", "active",
    "final_obs", "final_state", "final_alive",
)


@runtime_checkable
class VecEnv(Protocol):
    """B envs stepped together. Finished envs auto-reset inside step()."""

    num_envs: int
    device: torch.device
    spec: EnvSpec

    def reset(self, seed: int | None = None) -> Step:
        """Reset all B envs; `seed` makes everything after it reproducible."""
        ...

    def step(self, actions: Tensor) -> Step:
        """Advance all B envs by one step; actions LongTensor [B,N] (must be available)."""
        ...

    def close(self) -> None:
        ...


class FamilyInfo:
    """What tools may ask a VecEnv class without building an env; every VecEnv class of the registry inherits it.

    results_note: a caveat to print wherever this family's numbers are shown (None: none).
    unavailable_reason(): why an env of this family cannot be built here (a missing extra, StarCraft II), or None;
    it looks for packages with importlib.util.find_spec only and starts nothing.
    """

    results_note: ClassVar[str | None] = None

    @classmethod
    def unavailable_reason(cls) -> str | None:
        return None


# ---------------------------------------------------------------------------------------------------------------------
# Checks and helpers shared by the env families
# ---------------------------------------------------------------------------------------------------------------------

def plain(value: Any) -> Any:
    """`value` with every mapping turned into a dict (keys as str) and every non-string sequence into a list, at
    every depth (e.g. an OmegaConf node), so it pickles to a worker and the callee may mutate it."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


def check_int(key: str, value: object, low: int, error: type[ValueError] = EnvConfigError) -> int:
    """`value` as an int >= low (bool is not an int here), else `error` naming `key`."""
    if isinstance(value, bool) or not isinstance(value, int):
        raise error(f"{key}={value!r}; must be an integer >= {low}")
    if value < low:
        raise error(f"{key}={value}; must be >= {low}")
    return value


def check_num_envs(num_envs: int) -> int:
    """`num_envs` (B), else ValueError: "num_envs=0; must be >= 1" (or "must be an integer >= 1" for a non-int)."""
    return check_int("num_envs", num_envs, 1, ValueError)


def check_actions(actions: Tensor, num_envs: int, n_agents: int) -> None:
    """Raise ValueError unless actions is an integer tensor of shape [B, N]."""
    if actions.shape != (num_envs, n_agents):
        raise ValueError(f"step(): actions must be [B={num_envs}, N={n_agents}], got {tuple(actions.shape)}")
    if actions.dtype.is_floating_point or actions.dtype == torch.bool:
        raise TypeError(f"step(): actions must be an integer tensor, got {actions.dtype}")


def check_available(actions: Tensor, avail: Tensor, agent_names: Sequence[str]) -> None:
    """ValueError naming the first (env, agent) in row-major order whose action is outside [0, A) or unavailable,
    and the actions it has. actions [B,N] integer | avail [B,N,A] bool (the last Step's avail_actions) |
    agent_names: N names. Runs on avail's device."""
    A = avail.shape[-1]
    acts = actions.to(avail.device, torch.int64)
    in_range = (acts >= 0) & (acts < A)
    ok = in_range & avail.gather(-1, acts.clamp(0, A - 1)[..., None]).squeeze(-1)
    if bool(ok.all()):
        return
    b, i = (int(x) for x in (~ok).nonzero()[0])
    available = avail[b, i].nonzero().flatten().tolist()
    raise ValueError(f"step(): action {int(acts[b, i])} of agent {agent_names[i]!r} in env {b} is not available; "
                     f"available: {available}")


def random_available(avail: Tensor, generator: torch.Generator) -> Tensor:
    """[B,N] long: one action per agent drawn uniformly among its available ones (avail [B,N,A] bool; `generator`
    on avail's device)."""
    keys = torch.rand(avail.shape, generator=generator, device=avail.device)
    return torch.where(avail, keys + 1.0, 0.0).argmax(dim=-1)
