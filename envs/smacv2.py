"""SMACv2 on real StarCraft II as a VecEnv: B games in worker processes, smacv2's outputs turned into the contract.

Shape letters: B envs (games), N agents, O obs width, S state width, A actions per agent.

Needs StarCraft II (4.10 for Linux) at $SC2PATH with the SMAC/SMACv2 maps in $SC2PATH/Maps/SMAC_Maps, and the
``smacv2`` package (github.com/oxwhirl/smacv2; PyPI's ``smac`` is SMAC3, unrelated). scripts/install_sc2.sh installs
all three. The constructor checks them in that order before starting anything and raises
envs.core.EnvUnavailableError with one line naming what is missing and the fix (envs.smacv2_install). Neither smacv2
nor pysc2 is imported by these modules: only the worker processes import them (envs.smacv2_games).

How smacv2's outputs become the batched Step (envs.core), all in the pure functions of envs.smacv2_convert:
- obs [B,N,O] / state [B,S] / avail_actions [B,N,A]: ``get_obs()`` (N arrays of O), ``get_state()`` (S) and
  ``get_avail_agent_actions(i)`` (A ints) of each game, stacked over the B games.
- Dead agents: smacv2 gives a dead unit only the no-op (action 0) and a zero observation. alive = active = "some
  action other than the no-op is available"; the observation of a dead agent is zeroed here as well.
- reward [B,N]: smacv2's one shared reward (damage, kills, win bonus; smacv2 scales it so that a won episode is worth
  about 20, more with Protoss shield regeneration) broadcast to the N agents.
- terminated vs truncated: the adapter always builds games with ``continuing_episode=True``, so smacv2 marks its
  time limit with ``info["episode_limit"]``: that is a truncation (bootstrapped from final_obs), every other end is a
  termination (one side wiped out). won = ``info["battle_won"]``. A step whose info lacks "battle_won" is smacv2's
  answer to a crashed game (it restarts StarCraft II and returns ``(0, True, {})``): counted as truncated, not won,
  and logged as a warning.
- Episode stats for finished games: "return" (sum of the shared reward = sum over time of the mean over agents),
  "length" (steps) and "won" (0/1).
- Auto-reset: a game that finished is reset inside step(); obs/state/avail/alive then show its next episode while
  final_obs/final_state/final_alive keep the last view of the one that ended.

Workers: ``workers=W`` processes ("spawn" start method), worker w owning a contiguous chunk of the B games; each game
is one StarCraft II process launched at its first reset. A worker steps its games one after the other.

Seeding: reset(seed) gives game b the seed seed + b: it is StarCraft II's game seed (fixed when the game launches, so
a game that already runs is closed and relaunched, which takes seconds), the seed of the numpy generators of the
smacv2 capability distributions (teams, start positions) and, once per worker, of Python's ``random`` in that worker
process (smacv2 shuffles teams with it). reset() without a seed starts new episodes and launches nothing.

Honest limits: StarCraft II is not bit-for-bit reproducible across machines or game versions, so two runs with one
seed may still differ; smacv2's stochastic-attack capability draws from an unseeded generator (not used by the configs
here); every game is a StarCraft II process of about 1-2 GB of memory; smacv2 pins protobuf < 3.21 (pysc2's
generated protobuf files fail to load on newer protobuf unless PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python), which
the project's own wandb pin (protobuf >= 5) does not allow in one environment: scripts/install_sc2.sh builds a
separate virtualenv (Python 3.10 recommended), or keeps the project's protobuf and uses that variable.
Classic SMAC maps (3m, MMM2, ...) run through smacv2's StarCraft2Env: close to SMAC v1, not guaranteed identical.
"""
from __future__ import annotations

import logging
import os
from typing import Any, Callable, Mapping

import numpy as np
import torch
from torch import Tensor

from envs.core import (
    EnvConfigError, EnvUnavailableError, FamilyInfo, Step, check_actions, check_available, check_num_envs,
)
from envs.smacv2_convert import (
    GameBatch, accumulate_episodes, broadcast_reward, build_game_kwargs, concat_batches, outcome_from_infos,
    replace_finished, spec_from_env_info, to_step,
)
from envs.smacv2_games import SMACv2GameFactory, worker_main
from envs.smacv2_install import check_sc2_game, check_sc2_install, check_smacv2_package
from envs.workers import WorkerPool, start_context, worker_chunks

log = logging.getLogger(__name__)

# Seconds close() waits for a worker to quit (it closes its StarCraft II processes) before terminating it.
GAME_CLOSE_TIMEOUT_S = 30.0


class SMACv2VecEnv(FamilyInfo):
    """B SMACv2 (or classic SMAC) games on StarCraft II behind the VecEnv contract (module docstring: the mapping).

    map_name: smacv2 map ("10gen_protoss" / "10gen_terran" / "10gen_zerg", or a classic SMAC map such as "3m").
    capability_config: smacv2's distributions (team_gen, start_positions, ...) for 10gen_* maps; None for classic maps.
    n_units / n_enemies: team sizes of 10gen_* maps (may also sit in capability_config).
    workers: worker processes (default min(num_envs, CPU count)); each owns a contiguous chunk of the games.
    env_kwargs: further StarCraft2Env keyword arguments (e.g. obs_own_pos, use_unit_ranges, difficulty); not
        map_name, capability_config, seed or continuing_episode, which the adapter sets.
    The game and the smacv2 package are checked before any process starts (EnvUnavailableError when missing).
    Workers use the "spawn" start method: a script that builds this env needs an ``if __name__ == "__main__":`` guard.
    """

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """The one-line EnvUnavailableError message when StarCraft II ($SC2PATH and its binary) or the smacv2 package
        is missing, else None (the map is checked per config, by the constructor)."""
        try:
            check_sc2_game(os.environ.get("SC2PATH"))
            check_smacv2_package()
        except EnvUnavailableError as e:
            return str(e)
        return None

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", *, map_name: str,
                 capability_config: Mapping[str, Any] | None = None, n_units: int | None = None,
                 n_enemies: int | None = None, workers: int | None = None,
                 env_kwargs: Mapping[str, Any] | None = None) -> None:
        game_kwargs = build_game_kwargs(map_name, capability_config, n_units, n_enemies, env_kwargs)
        workers = self._check_sizes(num_envs, workers)
        check_sc2_install(map_name, os.environ.get("SC2PATH"))
        check_smacv2_package()
        self._start(num_envs, torch.device(device), SMACv2GameFactory(game_kwargs), workers)

    @classmethod
    def from_game_factory(cls, num_envs: int, device: torch.device | str, factory: Callable[[int | None], Any],
                          workers: int | None = None) -> "SMACv2VecEnv":
        """The adapter on any picklable `factory(seed) -> game` with smacv2's game methods (get_env_info, reset,
        step -> (reward, terminated, info), get_obs, get_state, get_avail_agent_actions, close), without the
        StarCraft II checks: for smacv2-compatible simulators and for tests."""
        env = cls.__new__(cls)
        env._start(num_envs, torch.device(device), factory, cls._check_sizes(num_envs, workers))
        return env

    @staticmethod
    def _check_sizes(num_envs: int, workers: int | None) -> int:
        check_num_envs(num_envs)
        if workers is None:
            return min(num_envs, os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= num_envs:
            raise EnvConfigError(f"env.workers={workers!r}; must be an integer in [1, num_envs={num_envs}]")
        return workers

    def _start(self, num_envs: int, device: torch.device, factory: Callable[[int | None], Any], workers: int) -> None:
        self.num_envs, self.device = num_envs, device
        self._chunks = worker_chunks(num_envs, workers)
        pool = WorkerPool(self._chunks, label="SMACv2", unit="games", close_timeout_s=GAME_CLOSE_TIMEOUT_S)
        # W "spawn" processes; a worker whose game cannot start raises EnvUnavailableError here
        infos = pool.start(start_context(), worker_main, [(factory, n) for _, n in self._chunks], name="smacv2-worker")
        self._pool = pool
        self.spec = spec_from_env_info(infos[0])
        for w, info in enumerate(infos[1:], start=1):
            if spec_from_env_info(info) != self.spec:
                self.close()
                raise RuntimeError(f"SMACv2 worker {w} reports {info}, worker 0 {infos[0]}")
        self._returns = np.zeros(num_envs)
        self._lengths = np.zeros(num_envs)
        self._avail: Tensor | None = None
        log.info("SMACv2: %d games in %d workers, N=%d O=%d S=%d A=%d limit=%d", num_envs, workers,
                 self.spec.n_agents, self.spec.obs_dim, self.spec.state_dim, self.spec.n_actions,
                 self.spec.episode_limit)

    def _check_view(self, view: GameBatch) -> None:
        B, N, O, S, A = (self.num_envs, self.spec.n_agents, self.spec.obs_dim, self.spec.state_dim,
                         self.spec.n_actions)
        want = {"obs": (B, N, O), "state": (B, S), "avail": (B, N, A)}
        for name, shape in want.items():
            got = getattr(view, name).shape
            if got != shape:
                raise RuntimeError(f"smacv2 gave {name} of shape {got}, its get_env_info() promises {shape}")

    def reset(self, seed: int | None = None) -> Step:
        """Start new episodes in all B games; with a seed, game b is rebuilt with seed + b (module docstring)."""
        if seed is not None:
            seeds = [[seed + first + g for g in range(n)] for first, n in self._chunks]
        else:
            seeds = [None] * len(self._chunks)
        view = concat_batches(self._pool.call("reset", seeds))
        self._check_view(view)
        self._returns[:], self._lengths[:] = 0.0, 0.0
        B, N = self.num_envs, self.spec.n_agents
        zeros = np.zeros(B, dtype=np.float32)
        no = np.zeros(B, dtype=bool)
        step = to_step(view, view, np.zeros((B, N), np.float32), no, no,
                       {"return": zeros, "length": zeros, "won": zeros}, self.device)
        self._avail = step.avail_actions
        return step

    def step(self, actions: Tensor) -> Step:
        """Advance all B games by one step (actions LongTensor [B,N], each available); finished games reset."""
        if self._avail is None:
            raise RuntimeError("step() before reset(): call reset() first")
        check_actions(actions, self.num_envs, self.spec.n_agents)
        check_available(actions, self._avail, self.spec.agent_names)
        acts = actions.detach().to("cpu", torch.int64).numpy()
        results = self._pool.call("step", [acts[first:first + n] for first, n in self._chunks])
        final = concat_batches([r["final"] for r in results])
        fresh_parts = [r["fresh"] for r in results if r["fresh"] is not None]
        fresh = concat_batches(fresh_parts) if fresh_parts else None
        reward = np.concatenate([r["reward"] for r in results])
        finished = np.concatenate([r["finished"] for r in results])
        infos = [info for r in results for info in r["infos"]]
        terminated, truncated, won, interrupted = outcome_from_infos(finished, infos)
        for b in np.flatnonzero(interrupted):
            log.warning("SMACv2 game %d was restarted by smacv2 after a StarCraft II error; its episode is counted "
                        "as truncated", b)
        current = replace_finished(final, fresh, finished)
        ep_return, ep_length, self._returns, self._lengths = accumulate_episodes(
            self._returns, self._lengths, reward, finished)
        episode = {"return": ep_return, "length": ep_length, "won": won.astype(np.float32)}
        step = to_step(current, final, broadcast_reward(reward, self.spec.n_agents), terminated, truncated,
                       episode, self.device)
        self._avail = step.avail_actions
        return step

    def close(self) -> None:
        """Close every StarCraft II game and stop the workers (safe to call twice)."""
        if getattr(self, "_pool", None) is not None:
            self._pool.close()
            self._pool = None

    def __enter__(self) -> "SMACv2VecEnv":
        return self

    def __exit__(self, *exc: Any) -> None:
        self.close()
