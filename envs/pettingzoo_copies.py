"""Copies of one PettingZoo env: built from "package.module:callable", stepped as a group (in this process or inside
one worker of envs.workers.SharedRowsPool), per-agent dicts in, padded numpy rows out (envs.pettingzoo_layout)."""
from __future__ import annotations

import importlib
from dataclasses import dataclass
from typing import Any, Callable, Mapping

import gymnasium
import numpy as np

from envs.core import EnvConfigError
from envs.pettingzoo_layout import Layout, clear, env_state

# ---------------------------------------------------------------------------------------------------------------------
# Building one env from "package.module:callable"
# ---------------------------------------------------------------------------------------------------------------------

def resolve_factory(factory: str) -> Callable[..., Any]:
    """The callable named by `factory` ("package.module:callable"); ValueError naming what failed."""
    module_name, sep, attr = str(factory).partition(":")
    if not sep or not module_name or not attr:
        raise EnvConfigError(f"env.factory={factory!r}: must be 'package.module:callable' "
                             "(e.g. 'mpe2.simple_spread_v3:parallel_env')")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise EnvConfigError(f"env.factory={factory!r}: cannot import module {module_name!r} "
                             f"({type(e).__name__}: {e})") from None
    if not hasattr(module, attr):
        raise EnvConfigError(f"env.factory={factory!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def build_env(factory: str, kwargs: Mapping[str, Any]) -> Any:
    """One ParallelEnv: the factory called with **kwargs (ValueError when the kwargs do not fit it)."""
    fn = resolve_factory(factory)
    try:
        env = fn(**kwargs)
    except TypeError as e:
        raise EnvConfigError(f"env.kwargs={dict(kwargs)!r}: {factory} rejected them ({e})") from None
    missing = [m for m in ("reset", "step", "possible_agents", "observation_space", "action_space")
               if not hasattr(env, m)]
    if missing:
        raise EnvConfigError(f"env.factory={factory!r}: returned {type(env).__name__}, not a PettingZoo ParallelEnv "
                             f"(lacks {missing}; wrap AEC envs with pettingzoo.utils.aec_to_parallel)")
    return env


# ---------------------------------------------------------------------------------------------------------------------
# A group of copies (run in-process, or inside one worker): dicts in, numpy arrays out
# ---------------------------------------------------------------------------------------------------------------------

class CopyGroup:
    """Copies first..first+n-1 of the env; reset/step return a dict FIELDS -> numpy array with n rows."""

    def __init__(self, factory: str, kwargs: Mapping[str, Any], layout: Layout, first: int, n: int) -> None:
        self.layout = layout
        self.first = first
        self.envs = [build_env(factory, kwargs) for _ in range(n)]
        self.index = {a: i for i, a in enumerate(layout.agents)}
        self.t = np.zeros(n, dtype=np.int64)
        self.ret = np.zeros(n, dtype=np.float64)

    # -- one copy -----------------------------------------------------------------------------------------------------

    def flat_obs(self, i: int, value: Any) -> np.ndarray:
        """Agent i's observation (the "observation" part of a dict) as a flat float32 vector."""
        L = self.layout
        if L.obs_in_dict[i]:
            value = value["observation"]
        if isinstance(L.obs_spaces[i], gymnasium.spaces.Box):
            return np.asarray(value, dtype=np.float32).reshape(-1)
        return np.asarray(gymnasium.spaces.flatten(L.obs_spaces[i], value), dtype=np.float32)

    def action_mask(self, i: int, value: Any, info: Mapping[str, Any]) -> np.ndarray | None:
        """Agent i's own action mask [n_i] bool from its observation dict or info, else None."""
        mask = value["action_mask"] if self.layout.obs_in_dict[i] else info.get("action_mask")
        if mask is None:
            return None
        mask = np.asarray(mask, dtype=bool).reshape(-1)
        if mask.size != self.layout.n_actions[i]:
            raise ValueError(f"agent {self.layout.agents[i]!r}: action_mask has {mask.size} entries for "
                             f"Discrete({self.layout.n_actions[i]})")
        return mask

    def observe(self, observations: Mapping[str, Any], infos: Mapping[str, Any], alive: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray]:
        """Padded (obs [N,O] f32, avail [N,A] bool) of one copy; dead agents: zero obs, only action 0."""
        L = self.layout
        obs = np.zeros((len(L.agents), L.obs_dim), dtype=np.float32)
        avail = np.zeros((len(L.agents), L.max_actions), dtype=bool)
        avail[:, 0] = True
        for i, agent in enumerate(L.agents):
            if not alive[i]:
                continue
            value = observations[agent]
            obs[i, :L.obs_widths[i]] = self.flat_obs(i, value)
            if L.n_types:
                obs[i, L.obs_dim - L.n_types + L.type_ids[i]] = 1.0
            mask = self.action_mask(i, value, infos.get(agent, {}) or {})
            avail[i, :L.n_actions[i]] = True if mask is None else mask
        return obs, avail

    def state(self, env: Any, obs: np.ndarray) -> np.ndarray:
        """[S] f32: env.state() when the env has one, else the concatenated padded observations."""
        return env_state(env) if self.layout.env_state else obs.reshape(-1)

    def present(self, agents: Any) -> np.ndarray:
        """[N] bool: which of the possible agents are in `agents`."""
        alive = np.zeros(len(self.layout.agents), dtype=bool)
        alive[[self.index[a] for a in agents]] = True
        return alive

    def reset_one(self, b: int, seed: int | None) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
        """Reset copy b: (obs [N,O], state [S], avail [N,A], alive [N])."""
        env = self.envs[b]
        observations, infos = env.reset(seed=seed)
        alive = self.present(env.agents)
        obs, avail = self.observe(observations, infos or {}, alive)
        self.t[b], self.ret[b] = 0, 0.0
        return obs, self.state(env, obs), avail, alive

    # -- the group ----------------------------------------------------------------------------------------------------

    def reset(self, seed: int | None, out: dict[str, np.ndarray]) -> None:
        """Reset every copy into `out` (FIELDS -> [n,...], overwritten); copy b gets seed + first + b."""
        clear(out)
        for b in range(len(self.envs)):
            s = None if seed is None else seed + self.first + b
            out["obs"][b], out["state"][b], out["avail_actions"][b], out["alive"][b] = self.reset_one(b, s)
        for src, dst in (("obs", "final_obs"), ("state", "final_state"), ("alive", "final_alive")):
            out[dst][:] = out[src]

    def step(self, actions: np.ndarray, out: dict[str, np.ndarray]) -> None:
        """actions [n,N] int64 (indices into each agent's padded actions); the next arrays go into `out`
        (FIELDS -> [n,...], overwritten); finished copies reset."""
        clear(out)
        for b in range(len(self.envs)):
            self.step_one(b, actions[b], out)

    def step_one(self, b: int, actions: np.ndarray, out: dict[str, np.ndarray]) -> None:
        """Step copy b with actions [N] and write its row of `out` (auto-reset when its episode ends)."""
        L, env = self.layout, self.envs[b]
        acting = list(env.agents)
        sent = {a: int(actions[self.index[a]]) + L.action_starts[self.index[a]] for a in acting}
        observations, rewards, terminations, truncations, infos = env.step(sent)
        infos = infos or {}
        reward = np.array([float(rewards.get(a, 0.0)) for a in L.agents], dtype=np.float32)
        self.t[b] += 1
        self.ret[b] += float(reward.mean())
        out["reward"][b] = reward
        ended = not env.agents or self.t[b] >= L.episode_limit
        if not ended:
            alive = self.present(env.agents)
            obs, avail = self.observe(observations, infos, alive)
            state = self.state(env, obs)
            out["obs"][b], out["state"][b], out["avail_actions"][b], out["alive"][b] = obs, state, avail, alive
            out["final_obs"][b], out["final_state"][b], out["final_alive"][b] = obs, state, alive
            return
        final_alive = self.present([a for a in acting if a in observations])
        final_obs, _ = self.observe(observations, infos, final_alive)
        out["final_obs"][b], out["final_state"][b], out["final_alive"][b] = (
            final_obs, self.state(env, final_obs), final_alive)
        terminated = all(bool(terminations.get(a, False)) for a in acting)
        out["terminated"][b], out["truncated"][b] = terminated, not terminated
        out["ep_return"][b], out["ep_length"][b] = self.ret[b], self.t[b]
        out["obs"][b], out["state"][b], out["avail_actions"][b], out["alive"][b] = self.reset_one(b, None)

    def close(self) -> None:
        for env in self.envs:
            env.close()



@dataclass(frozen=True)
class CopyBuilder:
    """build(first, n) -> CopyGroup over copies first..first+n-1 (picklable: it travels to the workers)."""

    factory: str
    kwargs: dict
    layout: Layout

    def __call__(self, first: int, n: int) -> CopyGroup:
        return CopyGroup(self.factory, self.kwargs, self.layout, first, n)
