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

Workers: ``workers=W >= 2`` splits the B copies into W contiguous chunks (envs.workers.worker_chunks) stepped
concurrently: the first W-1 by worker processes started from a "forkserver" that preloads this module (so no torch
state of the caller is forked; "spawn" where there is none), the last one by this process while it waits for them
(``workers`` 0 and 1 both step every copy in this process). So W=2 on 2 cores means 2 busy processes, not 3 (one
mostly waiting). The workers write one numpy array per field straight into arrays [B,...] in shared memory (their own
rows; the local chunk writes its rows there too) and read their actions from a shared [B,N] array; the pipes carry
only the commands and the replies, so a step costs the main process two small messages per worker and one copy per
field. An exception in a worker is raised in the main process as RuntimeError carrying the worker's message and
traceback (before any exception of the local chunk, which is raised as it is, as in-process). The shared-memory
transport is envs.workers.SharedRowsPool; the padding lives in envs.pettingzoo_layout, the copies in
envs.pettingzoo_copies.
Env-only throughput on simple_spread (random available actions, 2 CPU cores, blocks without other load): see
docs/throughput.md; with the main process stepping a chunk itself workers=2 reached x1.72 (B=16) / x1.82 (B=64) of
in-process in the best of 3 short alternating runs (it was x1.45-1.5 with 2 worker processes and an idle main
process), but single runs on a shared machine ranged x1.3-1.9. When other programs keep the cores busy, workers gain
little.
"""
from __future__ import annotations

import logging
from typing import Any, Mapping

import numpy as np
import torch
from torch import Tensor

from envs.core import (
    EnvConfigError, EnvSpec, FamilyInfo, Step, check_actions, check_available, check_num_envs, plain,
)
from envs.pettingzoo_copies import CopyBuilder, CopyGroup, build_env
from envs.pettingzoo_layout import field_specs, make_layout, new_arrays
from envs.workers import SharedRowsPool, worker_chunks

log = logging.getLogger(__name__)


class PettingZooVecEnv(FamilyInfo):
    """B copies of a PettingZoo ParallelEnv behind the VecEnv contract (see the module docstring for the mapping).

    factory: "package.module:callable" building one ParallelEnv from **kwargs (e.g.
    "mpe2.simple_spread_v3:parallel_env" with kwargs {"continuous_actions": False, "max_cycles": 25}).
    workers: 0 or 1 runs the copies in this process; W >= 2 splits them into W chunks, the first W-1 stepped by
    worker processes and the last by this process at the same time (W <= B).
    episode_limit: our step limit (None: the env's own max_cycles / max_steps); capped by the env's own limit.
    """

    def __init__(self, num_envs: int, device: torch.device | str, factory: str, kwargs: Mapping[str, Any] | None = None,
                 workers: int = 0, episode_limit: int | None = None) -> None:
        check_num_envs(num_envs)
        if not 0 <= workers <= num_envs:
            raise EnvConfigError(f"env.workers={workers}; must be in [0, num_envs={num_envs}]")
        if episode_limit is not None and episode_limit < 1:
            raise EnvConfigError(f"env.episode_limit={episode_limit}; must be >= 1 (or null for the env's own limit)")
        if kwargs is not None and not isinstance(kwargs, Mapping):
            raise EnvConfigError(f"env.kwargs={kwargs!r}; must be a mapping of the factory's keyword arguments")
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
        self.pool: SharedRowsPool | None = None
        if workers <= 1:
            self.group = CopyGroup(factory, self.kwargs, self.layout, 0, num_envs)
        else:
            chunks = worker_chunks(num_envs, workers)  # the last chunk is stepped here
            specs = {**field_specs(self.layout, num_envs), "actions": ((num_envs, self.spec.n_agents), np.int64)}
            self.pool = SharedRowsPool(CopyBuilder(factory, self.kwargs, self.layout), specs, chunks[:-1],
                                       chunks[-1], label="PettingZoo", unit="envs", preload=[__name__])
            log.debug("started %d PettingZoo workers for %s (%d copies stepped here)", len(chunks) - 1, factory,
                      0 if self.pool.local is None else len(self.pool.local.envs))
        self.avail: np.ndarray | None = None  # [B,N,A] bool of the last Step, to check actions

    def reset(self, seed: int | None = None) -> Step:
        """Reset all B copies; copy b is seeded with seed + b (None: unseeded)."""
        return self.run("reset", seed)

    def step(self, actions: Tensor) -> Step:
        """actions LongTensor [B,N], each available (dead agents: 0) -> the next Step; finished copies auto-reset."""
        if self.avail is None:
            raise RuntimeError("step() before reset(): call reset(seed) first")
        check_actions(actions, self.num_envs, self.spec.n_agents)
        acts = actions.detach().to("cpu", torch.int64)
        check_available(acts, torch.from_numpy(self.avail), self.spec.agent_names)
        return self.run("step", acts.numpy())

    def run(self, cmd: str, arg: Any) -> Step:
        """reset(seed) / step(actions [B,N] int64) of every copy, in this process or in the pool -> the Step."""
        if self.group is not None:
            arrays = new_arrays(self.layout, self.num_envs)
            getattr(self.group, cmd)(arg, arrays)
        else:
            arrays = getattr(self.live_pool(), cmd)(arg)
        return self.to_step(arrays)

    def live_pool(self) -> SharedRowsPool:
        if self.pool is None or not self.pool.conns:
            raise RuntimeError("PettingZooVecEnv is closed")
        return self.pool

    def to_step(self, arrays: dict[str, np.ndarray]) -> Step:
        """The gathered numpy arrays (B rows) as a Step of tensors on self.device."""
        self.avail = arrays["avail_actions"]
        t = {k: torch.from_numpy(v).to(self.device) for k, v in arrays.items()}
        return Step.alive_is_active(
            obs=t["obs"], state=t["state"], avail_actions=t["avail_actions"], reward=t["reward"],
            terminated=t["terminated"], truncated=t["truncated"], alive=t["alive"],
            final_obs=t["final_obs"], final_state=t["final_state"], final_alive=t["final_alive"],
            episode={"return": t["ep_return"], "length": t["ep_length"]})

    def copy_env(self, env_index: int) -> Any:
        """The ParallelEnv of copy `env_index` when the copies run in this process (workers 0 or 1; a renderer reads
        its world from it); EnvConfigError otherwise."""
        group = self.group
        if group is None or not 0 <= env_index < len(group.envs):
            raise EnvConfigError(f"env_index={env_index}: no in-process copy (num_envs={self.num_envs}, "
                                 f"env.workers={self.workers}; in-process copies need env.workers=0)")
        return group.envs[env_index]

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
