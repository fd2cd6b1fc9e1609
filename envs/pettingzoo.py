"""Any PettingZoo ParallelEnv as a VecEnv: B copies stepped in-process or in worker processes.

Shape letters: B envs, N agents, O obs width, S state width, A actions per agent.

How one copy's agent-keyed dicts become the batched Step (envs.core):
- Agents are the env's ``possible_agents``, in that order (N of them).
- obs [B,N,O]: each agent's observation, flattened to float32 and zero-padded to the largest width. When agents
  differ in observation or action space, a one-hot of the agent type (one type per distinct (observation space,
  action space) pair, numbered in agent order) is appended, so O = max width + number of types. An observation that
  is a dict {"observation", "action_mask"} (the PettingZoo convention) contributes its "observation" part.
- avail_actions [B,N,A]: A is the largest Discrete size; an agent's own actions come from its "action_mask" (in the
  observation dict, else in its info), else all of them are available; the padded actions are never available.
- state [B,S]: env.state() when the env implements it, else the concatenated padded observations (S = N*O).
- reward [B,N]: the env's rewards (0 for agents absent from the dict).
- Dead agents: an agent that is not in ``env.agents`` while its copy's episode goes on (it left early, or was not
  spawned at reset) is dead: alive False, active False, zero observation, only action 0 available; its action is not
  sent to the env. A live agent is always active (PettingZoo has no "alive but done" state).
- Episode end: a copy ends when ``env.agents`` is empty or after ``episode_limit`` steps (then we stop it ourselves).
  terminated when every agent that acted in the last step terminated; otherwise truncated (time limit or env
  truncation: bootstrap from final_obs). Finished copies reset at once (without a seed: their own RNG continues).
- Episode stats: "return" = sum over time of the mean reward over the N agents, "length" = steps.
- Seeding: reset(seed) resets copy b with seed + b, so a run is reproducible and the same with or without workers.

Workers: ``workers=W >= 2`` splits the B copies into W contiguous chunks (envs.workers.chunk_sizes) stepped
concurrently: the first W-1 by worker processes started from a "forkserver" that preloads this module (so no torch
state of the caller is forked; "spawn" where there is none), the last one by this process while it waits for them
(``workers`` 0 and 1 both step every copy in this process). So W=2 on 2 cores means 2 busy processes, not 3 (one
mostly waiting). The workers write one numpy array per field straight into arrays [B,...] in shared memory (their own
rows; the local chunk writes its rows there too) and read their actions from a shared [B,N] array; the pipes carry
only the commands and the replies, so a step costs the main process two small messages per worker and one copy per
field. An exception in a worker is raised in the main process as RuntimeError carrying the worker's message and
traceback (before any exception of the local chunk, which is raised as it is, as in-process).
Env-only throughput on simple_spread (random available actions, 2 CPU cores, blocks without other load): see
README.md; with the main process stepping a chunk itself workers=2 reached x1.72 (B=16) / x1.82 (B=64) of
in-process in the best of 3 short alternating runs (it was x1.45-1.5 with 2 worker processes and an idle main
process), but single runs on a shared machine ranged x1.3-1.9. When other programs keep the cores busy, workers gain
little.
"""
from __future__ import annotations

import importlib
import logging
from dataclasses import dataclass
from typing import Any, Callable, Mapping, Sequence

import gymnasium
import numpy as np
import torch
from torch import Tensor

from envs.core import EnvSpec, Step, check_actions
from envs.workers import WorkerPool, chunk_sizes, serve, start_context

log = logging.getLogger(__name__)

# Per-copy arrays a copy group returns for each reset/step, in this order (first axis = copies).
FIELDS = (
    "obs", "state", "avail_actions", "reward", "terminated", "truncated", "alive",
    "final_obs", "final_state", "final_alive", "ep_return", "ep_length",
)
# Attribute names under which PettingZoo envs expose their own step limit.
LIMIT_ATTRS = ("max_cycles", "max_steps")
# Seconds close() waits for a worker before terminating it.
CLOSE_TIMEOUT_S = 5.0


# ---------------------------------------------------------------------------------------------------------------------
# Building one env from "package.module:callable"
# ---------------------------------------------------------------------------------------------------------------------

def resolve_factory(factory: str) -> Callable[..., Any]:
    """The callable named by `factory` ("package.module:callable"); ValueError naming what failed."""
    module_name, sep, attr = str(factory).partition(":")
    if not sep or not module_name or not attr:
        raise ValueError(f"env.factory={factory!r}: must be 'package.module:callable' "
                         "(e.g. 'mpe2.simple_spread_v3:parallel_env')")
    try:
        module = importlib.import_module(module_name)
    except ImportError as e:
        raise ValueError(f"env.factory={factory!r}: cannot import module {module_name!r} "
                         f"({type(e).__name__}: {e})") from None
    if not hasattr(module, attr):
        raise ValueError(f"env.factory={factory!r}: module {module_name!r} has no attribute {attr!r}")
    return getattr(module, attr)


def build_env(factory: str, kwargs: Mapping[str, Any]) -> Any:
    """One ParallelEnv: the factory called with **kwargs (ValueError when the kwargs do not fit it)."""
    fn = resolve_factory(factory)
    try:
        env = fn(**kwargs)
    except TypeError as e:
        raise ValueError(f"env.kwargs={dict(kwargs)!r}: {factory} rejected them ({e})") from None
    missing = [m for m in ("reset", "step", "possible_agents", "observation_space", "action_space")
               if not hasattr(env, m)]
    if missing:
        raise ValueError(f"env.factory={factory!r}: returned {type(env).__name__}, not a PettingZoo ParallelEnv "
                         f"(lacks {missing}; wrap AEC envs with pettingzoo.utils.aec_to_parallel)")
    return env


def plain(value: Any) -> Any:
    """`value` with every mapping turned into a dict and every list-like into a list (e.g. from an OmegaConf node),
    so it pickles to a worker and the factory sees ordinary Python values."""
    if isinstance(value, Mapping):
        return {str(k): plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [plain(v) for v in value]
    return value


# ---------------------------------------------------------------------------------------------------------------------
# Layout: how per-agent dicts map to padded arrays (computed once, shared with the workers)
# ---------------------------------------------------------------------------------------------------------------------

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
        raise ValueError(f"env.factory={factory!r}: agent {agent!r} has action space {space}; only Discrete action "
                         "spaces are supported (for MPE pass continuous_actions=False)")
    return space


def flat_width(factory: str, agent: str, space: gymnasium.Space) -> int:
    """Width of the flattened observation; ValueError for spaces that do not flatten to a fixed width."""
    try:
        return int(gymnasium.spaces.flatdim(space))
    except (NotImplementedError, ValueError, TypeError):
        raise ValueError(f"env.factory={factory!r}: agent {agent!r} has observation space {space}, which has no fixed "
                         "flat width; supported: Box, Discrete, MultiDiscrete, MultiBinary, Tuple, Dict") from None


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
        raise ValueError(f"env.factory={factory!r}: the env has no possible_agents")
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
            raise ValueError(f"env.episode_limit=None: {factory} exposes no max_cycles/max_steps; "
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
    for a in arrays.values():
        a.fill(0)


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


# ---------------------------------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------------------------------

def shared_arrays(ctx: Any, specs: Mapping[str, tuple[tuple[int, ...], type]]) -> dict[str, Any]:
    """One zeroed shared-memory block (multiprocessing RawArray) per entry of `specs`."""
    return {k: ctx.RawArray("B", max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1))
            for k, (shape, dtype) in specs.items()}


def numpy_views(raw: Mapping[str, Any], specs: Mapping[str, tuple[tuple[int, ...], type]]) -> dict[str, np.ndarray]:
    """Numpy arrays of the given shapes and dtypes over the shared blocks (no copy)."""
    return {k: np.frombuffer(raw[k], dtype=np.uint8)[:int(np.prod(shape)) * np.dtype(dtype).itemsize]
            .view(dtype).reshape(shape) for k, (shape, dtype) in specs.items()}


class SharedCopies:
    """A worker's CopyGroup over copies first..first+n-1, writing its rows of the shared output arrays and reading
    its actions from its rows of the shared "actions" array (`raw`, laid out by `specs`)."""

    def __init__(self, factory: str, kwargs: dict, layout: Layout, first: int, n: int, raw: dict[str, Any],
                 specs: dict[str, tuple[tuple[int, ...], type]]) -> None:
        views = {k: v[first:first + n] for k, v in numpy_views(raw, specs).items()}
        self.actions = views.pop("actions")
        self.views = views
        self.group = CopyGroup(factory, kwargs, layout, first, n)

    def handle(self, cmd: str, arg: Any) -> None:
        """("reset", seed) or ("step", None): the outputs go to the shared rows (the reply carries nothing)."""
        if cmd == "reset":
            self.group.reset(arg, self.views)
        else:
            self.group.step(self.actions.copy(), self.views)

    def close(self) -> None:
        self.group.close()


def worker_main(conn: Any, factory: str, kwargs: dict, layout: Layout, first: int, n: int, raw: dict[str, Any],
                specs: dict[str, tuple[tuple[int, ...], type]]) -> None:
    """Worker loop (envs.workers.serve): build SharedCopies over copies first..first+n-1, then answer
    ("reset", seed) / ("step", None) (actions read from the shared "actions" rows) / ("close", None) with
    ("ok", None) once the shared output rows are written, or ("error", message with traceback), until closed or the
    pipe breaks."""
    serve(conn, lambda: SharedCopies(factory, kwargs, layout, first, n, raw, specs))


class PettingZooPool(WorkerPool):
    """W processes, worker w holding copies chunks[w] = (first, n), and optionally a share of copies `local` =
    (first, n) after theirs that this process steps itself while the workers step theirs. The outputs (FIELDS) and the
    actions live in shared arrays [B,...] (`arrays`); reset() / step() send a command to all workers, step the local
    share, then wait for all workers (a worker's failure is raised before one of the local share)."""

    label = "PettingZoo"
    unit = "envs"
    close_timeout_s = CLOSE_TIMEOUT_S

    def __init__(self, factory: str, kwargs: dict, layout: Layout, chunks: list[tuple[int, int]],
                 local: tuple[int, int] | None = None) -> None:
        super().__init__(chunks)
        ctx = start_context([__name__])
        num_envs = sum(n for _, n in chunks) + (local[1] if local else 0)
        specs = {**field_specs(layout, num_envs), "actions": ((num_envs, len(layout.agents)), np.int64)}
        raw = shared_arrays(ctx, specs)
        self.arrays = numpy_views(raw, specs)
        self.outs = {k: self.arrays[k] for k in FIELDS}
        self.n_pooled = sum(n for _, n in chunks)
        self.local: CopyGroup | None = None
        self.local_views: dict[str, np.ndarray] = {}
        if local is not None and local[1] > 0:
            first, n = local
            self.local = CopyGroup(factory, kwargs, layout, first, n)
            self.local_views = {k: v[first:first + n] for k, v in self.outs.items()}
        # every worker built its envs (or raise its error)
        try:
            self.start(ctx, worker_main, [(factory, kwargs, layout, first, n, raw, specs) for first, n in chunks])
        except BaseException:
            self.close_local()
            raise
        log.debug("started %d PettingZoo workers for %s (%d copies stepped here)", len(chunks), factory,
                  0 if self.local is None else len(self.local.envs))

    def outputs(self) -> dict[str, np.ndarray]:
        """A copy of the shared outputs (FIELDS -> [B,...])."""
        return {k: v.copy() for k, v in self.outs.items()}

    def run(self, cmd: str, arg: Any, local: Callable[[], None]) -> dict[str, np.ndarray]:
        """Send (cmd, arg) to every worker, run local() meanwhile, then gather the workers (raising the first worker
        failure, else local()'s exception) and return the outputs."""
        for conn in self.conns:
            conn.send((cmd, arg))
        error: Exception | None = None
        if self.local is not None:
            try:
                local()
            except Exception as e:  # raised after the workers' replies are read (theirs first)
                error = e
        self.gather()
        if error is not None:
            raise error
        return self.outputs()

    def reset(self, seed: int | None) -> dict[str, np.ndarray]:
        return self.run("reset", seed, lambda: self.local.reset(seed, self.local_views))

    def step(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """actions [B,N] int64 -> the outputs of all B copies."""
        n = self.n_pooled
        self.arrays["actions"][:n] = actions[:n]
        return self.run("step", None, lambda: self.local.step(actions[n:], self.local_views))

    def close_local(self) -> None:
        if self.local is not None:
            self.local.close()
            self.local = None

    def close(self) -> None:
        """Stop the workers and close the local share; safe to call twice."""
        try:
            super().close()
        finally:
            self.close_local()


# ---------------------------------------------------------------------------------------------------------------------
# The VecEnv
# ---------------------------------------------------------------------------------------------------------------------

class PettingZooVecEnv:
    """B copies of a PettingZoo ParallelEnv behind the VecEnv contract (see the module docstring for the mapping).

    factory: "package.module:callable" building one ParallelEnv from **kwargs (e.g.
    "mpe2.simple_spread_v3:parallel_env" with kwargs {"continuous_actions": False, "max_cycles": 25}).
    workers: 0 or 1 runs the copies in this process; W >= 2 splits them into W chunks, the first W-1 stepped by
    worker processes and the last by this process at the same time (W <= B).
    episode_limit: our step limit (None: the env's own max_cycles / max_steps); capped by the env's own limit.
    """

    def __init__(self, num_envs: int, device: torch.device | str, factory: str, kwargs: Mapping[str, Any] | None = None,
                 workers: int = 0, episode_limit: int | None = None) -> None:
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}; must be >= 1")
        if not 0 <= workers <= num_envs:
            raise ValueError(f"env.workers={workers}; must be in [0, num_envs={num_envs}]")
        if episode_limit is not None and episode_limit < 1:
            raise ValueError(f"env.episode_limit={episode_limit}; must be >= 1 (or null for the env's own limit)")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise ValueError(f"env.kwargs={kwargs!r}; must be a mapping of the factory's keyword arguments")
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.factory = factory
        self.kwargs = plain(kwargs or {})
        self.workers = workers
        probe = build_env(factory, self.kwargs)
        try:
            self.layout = make_layout(factory, probe, episode_limit)
            self.spec = EnvSpec(
                n_agents=len(self.layout.agents), obs_dim=self.layout.obs_dim, state_dim=self.layout.state_dim,
                n_actions=self.layout.max_actions, episode_limit=self.layout.episode_limit,
                agent_names=self.layout.agents,
                observation_spaces={a: probe.observation_space(a) for a in self.layout.agents},
                action_spaces={a: probe.action_space(a) for a in self.layout.agents})
        finally:
            probe.close()
        self.group: CopyGroup | None = None
        self.pool: PettingZooPool | None = None
        if workers <= 1:
            self.group = CopyGroup(factory, self.kwargs, self.layout, 0, num_envs)
        else:
            chunks = chunk_sizes(num_envs, workers)  # the last chunk is stepped here
            self.pool = PettingZooPool(factory, self.kwargs, self.layout, chunks[:-1], chunks[-1])
        self.avail: np.ndarray | None = None  # [B,N,A] bool of the last Step, to check actions

    def reset(self, seed: int | None = None) -> Step:
        """Reset all B copies; copy b is seeded with seed + b (None: unseeded)."""
        if self.group is not None:
            arrays = new_arrays(self.layout, self.num_envs)
            self.group.reset(seed, arrays)
        else:
            arrays = self.live_pool().reset(seed)
        return self.to_step(arrays)

    def step(self, actions: Tensor) -> Step:
        """actions LongTensor [B,N], each available (dead agents: 0) -> the next Step; finished copies auto-reset."""
        if self.avail is None:
            raise RuntimeError("step() before reset(): call reset(seed) first")
        check_actions(actions, self.num_envs, self.spec.n_agents)
        acts = actions.detach().to("cpu", torch.int64).numpy()
        self.check_available(acts)
        if self.group is not None:
            arrays = new_arrays(self.layout, self.num_envs)
            self.group.step(acts, arrays)
        else:
            arrays = self.live_pool().step(acts)
        return self.to_step(arrays)

    def check_available(self, actions: np.ndarray) -> None:
        """ValueError naming the first env, agent and action (in [B,N] int64) that is out of range or unavailable."""
        B, N, A = self.avail.shape
        ok = (actions >= 0) & (actions < A)
        if ok.all():
            ok = self.avail.reshape(-1)[np.arange(0, B * N * A, A) + actions.reshape(-1)].reshape(B, N)
        if ok.all():
            return
        b, i = np.argwhere(~ok)[0].tolist()
        allowed = np.flatnonzero(self.avail[b, i]).tolist()
        raise ValueError(f"step(): action {int(actions[b, i])} of agent {self.spec.agent_names[i]!r} in env {b} "
                         f"is not available; available: {allowed}")

    def live_pool(self) -> PettingZooPool:
        if self.pool is None or not self.pool.conns:
            raise RuntimeError("PettingZooVecEnv is closed")
        return self.pool

    def to_step(self, arrays: dict[str, np.ndarray]) -> Step:
        """The gathered numpy arrays (B rows) as a Step of tensors on self.device."""
        self.avail = arrays["avail_actions"]
        t = {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}
        return Step(
            obs=t["obs"], state=t["state"], avail_actions=t["avail_actions"], reward=t["reward"],
            terminated=t["terminated"], truncated=t["truncated"], alive=t["alive"], active=t["alive"].clone(),
            final_obs=t["final_obs"], final_state=t["final_state"], final_alive=t["final_alive"],
            episode={"return": t["ep_return"], "length": t["ep_length"]})

    def close(self) -> None:
        """Shut the workers down (or close the in-process copies); safe to call twice."""
        if self.pool is not None:
            self.pool.close()
            self.pool = None
        if self.group is not None:
            self.group.close()
            self.group = None

    def __del__(self) -> None:
        try:
            self.close()
        except Exception:  # interpreter shutdown: nothing left to clean
            pass

