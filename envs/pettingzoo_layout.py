"""How one PettingZoo env's per-agent dicts map to padded arrays (envs.pettingzoo's docstring gives the rules).

make_layout() inspects one freshly built env once; the resulting Layout (identical for every copy, pickled to the
workers) fixes the padding, the agent types, the state and the step limit. field_specs() gives the per-copy output
arrays that a group of copies fills (FIELDS, first axis = copies).
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Sequence

import gymnasium
import numpy as np

from envs.core import EnvConfigError

# Per-copy arrays a copy group returns for each reset/step, in this order (first axis = copies).
FIELDS = (
    "obs", "state", "avail_actions", "reward", "terminated", "truncated", "alive",
    "final_obs", "final_state", "final_alive", "ep_return", "ep_length",
)
# Attribute names under which PettingZoo envs expose their own step limit.
LIMIT_ATTRS = ("max_cycles", "max_steps")


@dataclass(frozen=True)
class Layout:
    """The padding of one env, identical in every copy.

    agents: N agent names | obs_spaces: per agent, the space of its observation part | obs_in_dict: per agent, the
    observation arrives as {"observation", "action_mask"} | obs_widths, n_actions, action_starts, type_ids: per agent
    | n_types: number of agent types (0 when all agents are alike: no one-hot) | obs_dim O, max_actions A |
    env_state: env.state() works | state_dim S | episode_limit: our step limit.
    """

    agents: tuple[str, ...]
    obs_spaces: tuple[gymnasium.Space, ...]
    obs_in_dict: tuple[bool, ...]
    obs_widths: tuple[int, ...]
    n_actions: tuple[int, ...]
    action_starts: tuple[int, ...]
    type_ids: tuple[int, ...]
    n_types: int
    obs_dim: int
    max_actions: int
    env_state: bool
    state_dim: int
    episode_limit: int


def observation_part(space: gymnasium.Space) -> tuple[gymnasium.Space, bool]:
    """(the space of the observation proper, whether it sits in an {"observation", "action_mask"} dict)."""
    if isinstance(space, gymnasium.spaces.Dict) and "observation" in space.spaces and "action_mask" in space.spaces:
        return space.spaces["observation"], True
    return space, False


def discrete_or_raise(factory: str, agent: str, space: gymnasium.Space) -> gymnasium.spaces.Discrete:
    """The agent's Discrete action space; ValueError for any other kind."""
    if not isinstance(space, gymnasium.spaces.Discrete):
        raise EnvConfigError(f"env.factory={factory!r}: agent {agent!r} has action space {space}; only Discrete action "
                             "spaces are supported (for MPE pass continuous_actions=False)")
    return space


def flat_width(factory: str, agent: str, space: gymnasium.Space) -> int:
    """Width of the flattened observation; ValueError for spaces that do not flatten to a fixed width."""
    try:
        return int(gymnasium.spaces.flatdim(space))
    except (NotImplementedError, ValueError, TypeError):
        raise EnvConfigError(f"env.factory={factory!r}: agent {agent!r} has observation space {space}, which has no "
                             "fixed flat width; supported: Box, Discrete, MultiDiscrete, MultiBinary, Tuple, "
                             "Dict") from None


def agent_types(keys: Sequence[Any]) -> tuple[tuple[int, ...], int]:
    """(type id per agent, number of types; 0 when all keys are equal). Types are numbered in agent order."""
    distinct: list[Any] = []
    ids = []
    for key in keys:
        if key not in distinct:
            distinct.append(key)
        ids.append(distinct.index(key))
    return tuple(ids), (len(distinct) if len(distinct) > 1 else 0)


def env_limit(env: Any) -> int | None:
    """The env's own step limit when it exposes one (max_cycles / max_steps), else None."""
    for target in (env, getattr(env, "unwrapped", env)):
        for name in LIMIT_ATTRS:
            value = getattr(target, name, None)
            if isinstance(value, int) and value > 0:
                return value
    return None


def env_state(env: Any) -> np.ndarray | None:
    """env.state() flattened to float32, or None when the env does not implement it."""
    try:
        return np.asarray(env.state(), dtype=np.float32).reshape(-1)
    except (NotImplementedError, AttributeError):
        return None


def make_layout(factory: str, env: Any, episode_limit: int | None) -> Layout:
    """Inspect one freshly built env (it gets reset with seed 0) and fix the padding of every copy."""
    agents = tuple(env.possible_agents)
    if not agents:
        raise EnvConfigError(f"env.factory={factory!r}: the env has no possible_agents")
    parts = [observation_part(env.observation_space(a)) for a in agents]
    actions = [discrete_or_raise(factory, a, env.action_space(a)) for a in agents]
    widths = tuple(flat_width(factory, a, space) for a, (space, _) in zip(agents, parts))
    type_ids, n_types = agent_types([(space, act) for (space, _), act in zip(parts, actions)])
    obs_dim = max(widths) + n_types
    limit = resolve_limit(factory, env, episode_limit)
    env.reset(seed=0)
    state = env_state(env)
    return Layout(
        agents=agents, obs_spaces=tuple(s for s, _ in parts), obs_in_dict=tuple(d for _, d in parts),
        obs_widths=widths, n_actions=tuple(int(a.n) for a in actions),
        action_starts=tuple(int(a.start) for a in actions), type_ids=type_ids, n_types=n_types,
        obs_dim=obs_dim, max_actions=max(int(a.n) for a in actions), env_state=state is not None,
        state_dim=len(agents) * obs_dim if state is None else int(state.size), episode_limit=limit)


def resolve_limit(factory: str, env: Any, episode_limit: int | None) -> int:
    """Our step limit: `episode_limit`, capped by the env's own limit when it has one."""
    own = env_limit(env)
    if episode_limit is None:
        if own is None:
            raise EnvConfigError(f"env.episode_limit=None: {factory} exposes no max_cycles/max_steps; "
                                 "set env.episode_limit to an int >= 1")
        return own
    return episode_limit if own is None else min(episode_limit, own)


# ---------------------------------------------------------------------------------------------------------------------
# The output arrays: per field, one row per copy
# ---------------------------------------------------------------------------------------------------------------------

def field_specs(layout: Layout, n: int) -> dict[str, tuple[tuple[int, ...], type]]:
    """FIELDS -> (shape, numpy dtype) for n copies."""
    N, O, A, S = len(layout.agents), layout.obs_dim, layout.max_actions, layout.state_dim
    return {
        "obs": ((n, N, O), np.float32), "state": ((n, S), np.float32), "avail_actions": ((n, N, A), np.bool_),
        "reward": ((n, N), np.float32), "terminated": ((n,), np.bool_), "truncated": ((n,), np.bool_),
        "alive": ((n, N), np.bool_), "final_obs": ((n, N, O), np.float32), "final_state": ((n, S), np.float32),
        "final_alive": ((n, N), np.bool_), "ep_return": ((n,), np.float32), "ep_length": ((n,), np.float32),
    }


def new_arrays(layout: Layout, n: int) -> dict[str, np.ndarray]:
    """Fresh zeroed output arrays for n copies."""
    return {k: np.zeros(shape, dtype) for k, (shape, dtype) in field_specs(layout, n).items()}


def clear(arrays: dict[str, np.ndarray]) -> None:
    """Zero every array in place."""
    for a in arrays.values():
        a.fill(0)
