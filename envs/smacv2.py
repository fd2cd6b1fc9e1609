"""SMACv2 on real StarCraft II as a VecEnv: B games in worker processes, smacv2's outputs turned into the contract.

Shape letters: B envs (games), N agents, O obs width, S state width, A actions per agent.

Needs StarCraft II (4.10 for Linux) at $SC2PATH with the SMAC/SMACv2 maps in $SC2PATH/Maps/SMAC_Maps, and the
``smacv2`` package (github.com/oxwhirl/smacv2; PyPI's ``smac`` is SMAC3, unrelated). scripts/install_sc2.sh installs
all three. The constructor checks them in that order before starting anything and raises
envs.core.EnvUnavailableError with one line naming what is missing and the fix. Neither smacv2 nor pysc2 is imported
by this module: only the worker processes import them.

How smacv2's outputs become the batched Step (envs.core), all in the pure functions below:
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

import copy
import importlib.util
import logging
import os
import random
import signal
import threading
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Callable, Mapping, Sequence

import gymnasium
import numpy as np
import torch
from torch import Tensor

from envs.core import EnvSpec, EnvUnavailableError, Step, check_actions
from envs.workers import WorkerPool, chunk_sizes, error_reply, serve, start_context

log = logging.getLogger(__name__)

# The no-op: the only action of a dead unit in smacv2 (and never available to a living one).
NO_OP = 0
# Map file the 10gen_<race> capability scenarios play on (smacv2's map registry).
CAPABILITY_MAP_FILE = "32x32_flat"
# Prefix of smacv2's capability maps (they need a capability_config).
CAPABILITY_PREFIX = "10gen_"
# StarCraft2Env keywords the adapter sets itself (so env_kwargs may not).
RESERVED_GAME_KWARGS = ("map_name", "capability_config", "seed", "continuing_episode")
# StarCraft II executables under $SC2PATH/Versions/Base<build>/ (Linux, macOS, Windows).
SC2_BINARIES = ("SC2_x64", "SC2.app", "SC2_x64.exe")
# Seconds close() waits for a worker to quit (it closes its StarCraft II processes) before terminating it.
CLOSE_TIMEOUT_S = 30.0
# The install script every unavailable-error message points to.
INSTALL_SCRIPT = "scripts/install_sc2.sh"


# ---------------------------------------------------------------------------------------------------------------------
# What the game needs: checks before starting anything
# ---------------------------------------------------------------------------------------------------------------------

def map_file(map_name: str) -> str:
    """Name (without .SC2Map) of the map file smacv2 loads for `map_name`."""
    return CAPABILITY_MAP_FILE if map_name.startswith(CAPABILITY_PREFIX) else map_name


def check_sc2_install(map_name: str, sc2path: str | None) -> None:
    """Raise EnvUnavailableError (one line: what is missing, and the fix) unless StarCraft II and the map are there.

    Order: SC2PATH set and a directory, a binary under $SC2PATH/Versions, the map in $SC2PATH/Maps/SMAC_Maps.
    """
    fix = (f"run {INSTALL_SCRIPT} (needs StarCraft II 4.10 for Linux) and "
           "export SC2PATH=<its --dir, default ~/StarCraftII>")
    if not sc2path:
        raise EnvUnavailableError(f"StarCraft II not found: SC2PATH is unset; {fix}")
    root = Path(sc2path).expanduser()
    if not root.is_dir():
        raise EnvUnavailableError(f"StarCraft II not found: SC2PATH={sc2path!r} is not a directory; {fix}")
    versions = root / "Versions"
    if not any((d / exe).exists() for d in versions.glob("Base*") for exe in SC2_BINARIES):
        raise EnvUnavailableError(
            f"StarCraft II binary not found under {versions} (expected Versions/Base<build>/SC2_x64); "
            f"run {INSTALL_SCRIPT} --dir {root} --accept-eula")
    path = root / "Maps" / "SMAC_Maps" / f"{map_file(map_name)}.SC2Map"
    if not path.is_file():
        raise EnvUnavailableError(
            f"SMACv2 map not found: {path} (map_name={map_name!r}); run {INSTALL_SCRIPT} --dir {root} --skip-game")


def smacv2_installed() -> bool:
    """Whether the smacv2 package can be found (without importing it)."""
    return importlib.util.find_spec("smacv2") is not None


def check_smacv2_package() -> None:
    """Raise EnvUnavailableError unless the smacv2 package is installed."""
    if not smacv2_installed():
        raise EnvUnavailableError(
            "Python package smacv2 not importable: pip install the [smacv2] setup: see "
            f"{INSTALL_SCRIPT} (smacv2 from github.com/oxwhirl/smacv2, not PyPI's smac)")


# ---------------------------------------------------------------------------------------------------------------------
# Config -> StarCraft2Env keyword arguments
# ---------------------------------------------------------------------------------------------------------------------

def to_plain(value: Any) -> Any:
    """`value` with every mapping turned into a dict and every non-string sequence into a list (e.g. OmegaConf
    containers), so smacv2 may mutate it and it pickles cheaply."""
    if isinstance(value, Mapping):
        return {str(k): to_plain(v) for k, v in value.items()}
    if isinstance(value, Sequence) and not isinstance(value, (str, bytes)):
        return [to_plain(v) for v in value]
    return value


def _check_count(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise ValueError(f"env.{key}={value!r}; must be an integer >= 1")


def build_game_kwargs(map_name: str, capability_config: Mapping[str, Any] | None, n_units: int | None,
                      n_enemies: int | None, env_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """StarCraft2Env / StarCraftCapabilityEnvWrapper keyword arguments (all but the seed); ValueError on bad values.

    Capability maps (10gen_<race>) need a capability_config of distributions ({"dist_type": ...} each) and the team
    sizes n_units / n_enemies (as arguments or inside capability_config); classic maps take none of the three.
    ``continuing_episode`` is always True so that smacv2 reports its time limit (info["episode_limit"]).
    """
    if not isinstance(map_name, str) or not map_name:
        raise ValueError(f"env.map_name={map_name!r}; must be a smacv2 map name, e.g. '10gen_protoss' or '3m'")
    extra = to_plain(env_kwargs) if env_kwargs is not None else {}
    if not isinstance(extra, dict):
        raise ValueError(f"env.env_kwargs={env_kwargs!r}; must be a mapping of StarCraft2Env keyword arguments")
    for key in RESERVED_GAME_KWARGS:
        if key in extra:
            raise ValueError(f"env.env_kwargs.{key}={extra[key]!r}; set by the adapter, not allowed in env_kwargs "
                             f"(reserved: {list(RESERVED_GAME_KWARGS)})")
    kwargs: dict[str, Any] = {"map_name": map_name, **extra, "continuing_episode": True}
    if not map_name.startswith(CAPABILITY_PREFIX):
        for key, value in (("capability_config", capability_config), ("n_units", n_units),
                           ("n_enemies", n_enemies)):
            if value is not None:
                raise ValueError(f"env.{key}={value!r}; classic map {map_name!r} has fixed teams, "
                                 f"only {CAPABILITY_PREFIX}<race> maps take {key}")
        return kwargs
    if capability_config is None:
        raise ValueError(f"env.capability_config=None; map_name={map_name!r} needs one "
                         "(team_gen and start_positions distributions, see conf/env/smacv2_protoss_5_vs_5.yaml)")
    cap = to_plain(capability_config)
    if not isinstance(cap, dict):
        raise ValueError(f"env.capability_config={capability_config!r}; must be a mapping of distributions")
    for key, value in (("n_units", n_units), ("n_enemies", n_enemies)):
        if value is not None and key in cap and cap[key] != value:
            raise ValueError(f"env.{key}={value!r} but env.capability_config.{key}={cap[key]!r}; give one of them")
        if value is not None:
            cap[key] = value
        if key not in cap:
            raise ValueError(f"env.{key}=None; map_name={map_name!r} needs the team size {key}")
        _check_count(key, cap[key])
    for key, dist in cap.items():
        if key not in ("n_units", "n_enemies") and not (isinstance(dist, dict) and "dist_type" in dist):
            raise ValueError(f"env.capability_config.{key}={dist!r}; must be a distribution with a 'dist_type' key")
    kwargs["capability_config"] = cap
    return kwargs


# ---------------------------------------------------------------------------------------------------------------------
# smacv2's outputs -> contract arrays (pure functions, numpy in, numpy or torch out)
# ---------------------------------------------------------------------------------------------------------------------

@dataclass
class GameBatch:
    """What B games show: obs [B,N,O] f32 | state [B,S] f32 | avail [B,N,A] bool."""

    obs: np.ndarray
    state: np.ndarray
    avail: np.ndarray


def game_view(game: Any) -> tuple[list, np.ndarray, list]:
    """One game's (get_obs(): N arrays [O], get_state(): [S], N available-action lists of A ints)."""
    obs = game.get_obs()
    return obs, game.get_state(), [game.get_avail_agent_actions(i) for i in range(len(obs))]


def stack_games(views: Sequence[tuple[Sequence, Any, Sequence]]) -> GameBatch:
    """Stack game_view() outputs of B >= 1 games: obs [B,N,O] f32, state [B,S] f32, avail [B,N,A] bool."""
    return GameBatch(
        obs=np.stack([np.stack([np.asarray(o, dtype=np.float32) for o in v[0]]) for v in views]),
        state=np.stack([np.asarray(v[1], dtype=np.float32) for v in views]),
        avail=np.stack([np.asarray(v[2]) != 0 for v in views]),
    )


def concat_batches(batches: Sequence[GameBatch]) -> GameBatch:
    """GameBatches of consecutive game chunks -> one GameBatch (game order kept)."""
    return GameBatch(*(np.concatenate([getattr(b, f) for b in batches]) for f in ("obs", "state", "avail")))


def alive_from_avail(avail: np.ndarray) -> np.ndarray:
    """avail [B,N,A] bool -> alive [B,N] bool: some action other than the no-op is available (smacv2 gives a dead
    unit only the no-op and never offers the no-op to a living one)."""
    return avail[..., NO_OP + 1:].any(-1)


def mask_dead(obs: np.ndarray, alive: np.ndarray) -> np.ndarray:
    """obs [B,N,O] with the rows of dead agents (alive [B,N] False) set to zero."""
    return obs * alive[..., None].astype(obs.dtype)


def outcome_from_infos(finished: np.ndarray, infos: Sequence[Mapping[str, Any]]
                       ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """smacv2's per-game (terminated, info) -> (terminated, truncated, won, interrupted), each [B] bool.

    finished [B] bool is smacv2's `terminated` (any end of the episode). truncated = the time limit
    (info["episode_limit"], set because the adapter uses continuing_episode=True) or a crashed game (info without
    "battle_won"); interrupted flags the latter. A won battle is always a termination.
    """
    limit = np.array([bool(i.get("episode_limit", False)) for i in infos], dtype=bool)
    known = np.array(["battle_won" in i for i in infos], dtype=bool)
    won = finished & np.array([bool(i.get("battle_won", False)) for i in infos], dtype=bool)
    interrupted = finished & ~known
    truncated = finished & ~won & (limit | ~known)
    return finished & ~truncated, truncated, won, interrupted


def broadcast_reward(reward: np.ndarray, n_agents: int) -> np.ndarray:
    """smacv2's shared reward [B] -> [B,N] f32, the same value for every agent."""
    return np.repeat(np.asarray(reward, dtype=np.float32)[:, None], n_agents, axis=1)


def replace_finished(final: GameBatch, fresh: GameBatch | None, finished: np.ndarray) -> GameBatch:
    """The view after auto-reset: `final` (after the step, all B games) with the finished games' rows replaced by
    `fresh` (their first view of the next episode: D rows, D = finished.sum(), in game order)."""
    if not finished.any():
        return final
    if fresh is None or len(fresh.obs) != int(finished.sum()):
        raise AssertionError(f"replace_finished: {int(finished.sum())} finished games, "
                             f"{0 if fresh is None else len(fresh.obs)} fresh views")
    out = GameBatch(final.obs.copy(), final.state.copy(), final.avail.copy())
    out.obs[finished], out.state[finished], out.avail[finished] = fresh.obs, fresh.state, fresh.avail
    return out


def accumulate_episodes(returns: np.ndarray, lengths: np.ndarray, reward: np.ndarray, finished: np.ndarray
                        ) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Running sums after one step -> (episode return [B], episode length [B], next returns [B], next lengths [B]).

    returns / lengths [B] f64: this episode's shared-reward sum and steps before the step; reward [B]: the step's
    shared reward; finished [B] bool. The episode values hold the finished games' totals (0 elsewhere); the running
    sums restart at 0 for them.
    """
    total, steps = returns + reward, lengths + 1
    zero = np.zeros_like(total)
    return (np.where(finished, total, zero), np.where(finished, steps, zero),
            np.where(finished, zero, total), np.where(finished, zero, steps))


def to_step(current: GameBatch, final: GameBatch, reward: np.ndarray, terminated: np.ndarray,
            truncated: np.ndarray, episode: Mapping[str, np.ndarray], device: torch.device) -> Step:
    """Numpy arrays -> Step on `device`. current / final: the views after auto-reset / before it; reward [B,N];
    terminated, truncated [B] bool; episode: [B] arrays ("return", "length", "won"). alive = active from the
    available actions; dead agents' observations are zeroed."""
    alive, final_alive = alive_from_avail(current.avail), alive_from_avail(final.avail)

    def tensor(a: np.ndarray, dtype: torch.dtype) -> Tensor:
        return torch.from_numpy(np.ascontiguousarray(a)).to(device=device, dtype=dtype)

    alive_t = tensor(alive, torch.bool)
    return Step(
        obs=tensor(mask_dead(current.obs, alive), torch.float32),
        state=tensor(current.state, torch.float32),
        avail_actions=tensor(current.avail, torch.bool),
        reward=tensor(reward, torch.float32),
        terminated=tensor(terminated, torch.bool),
        truncated=tensor(truncated, torch.bool),
        alive=alive_t,
        active=alive_t.clone(),
        final_obs=tensor(mask_dead(final.obs, final_alive), torch.float32),
        final_state=tensor(final.state, torch.float32),
        final_alive=tensor(final_alive, torch.bool),
        episode={k: tensor(v, torch.float32) for k, v in episode.items()},
    )


def spec_from_env_info(env_info: Mapping[str, Any]) -> EnvSpec:
    """EnvSpec from smacv2's get_env_info() (n_agents, n_actions, obs_shape, state_shape, episode_limit)."""
    n, obs_dim, n_actions = int(env_info["n_agents"]), int(env_info["obs_shape"]), int(env_info["n_actions"])
    names = tuple(f"agent_{i}" for i in range(n))
    return EnvSpec(
        n_agents=n, obs_dim=obs_dim, state_dim=int(env_info["state_shape"]), n_actions=n_actions,
        episode_limit=int(env_info["episode_limit"]), agent_names=names,
        observation_spaces={a: gymnasium.spaces.Box(-np.inf, np.inf, (obs_dim,), np.float32) for a in names},
        action_spaces={a: gymnasium.spaces.Discrete(n_actions) for a in names},
        task_metrics=("won",),
    )


# ---------------------------------------------------------------------------------------------------------------------
# Games and the worker processes that own them
# ---------------------------------------------------------------------------------------------------------------------

def reseed_generators(obj: Any, seed: int, _found: list | None = None) -> int:
    """Give every numpy Generator held by `obj` (a smacv2 distribution) or by the distributions it holds a fresh
    generator seeded with [seed, k] (k = 0, 1, ... in attribute order). Returns how many were reseeded."""
    found = [] if _found is None else _found
    for name, value in list(vars(obj).items()):
        if isinstance(value, np.random.Generator):
            setattr(obj, name, np.random.default_rng([seed, len(found)]))
            found.append(name)
        elif hasattr(value, "generate") and hasattr(value, "__dict__"):
            reseed_generators(value, seed, found)
    return len(found)


def first_line(e: BaseException) -> str:
    """The first non-empty line of an exception's message."""
    return next((line.strip() for line in str(e).splitlines() if line.strip()), "")


@dataclass(frozen=True)
class SMACv2GameFactory:
    """Builds one smacv2 game (StarCraft II launches at its first reset) from StarCraft2Env keyword arguments."""

    game_kwargs: dict

    def __call__(self, seed: int | None) -> Any:
        try:
            from smacv2.env import StarCraft2Env
            from smacv2.env.starcraft2.wrapper import StarCraftCapabilityEnvWrapper
        except TypeError as e:  # protobuf >= 3.21 cannot load pysc2's generated files
            raise EnvUnavailableError(
                f"smacv2 failed to import (TypeError: {first_line(e)}); export PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION="
                f"python, or use a virtualenv with protobuf < 3.21 made by {INSTALL_SCRIPT}") from None
        except ImportError as e:
            raise EnvUnavailableError(
                f"smacv2 failed to import ({type(e).__name__}: {first_line(e)}); pip install the [smacv2] setup: "
                f"see {INSTALL_SCRIPT}") from None
        kwargs = {**copy.deepcopy(self.game_kwargs), "seed": seed}
        if "capability_config" not in kwargs:
            return StarCraft2Env(**kwargs)
        game = StarCraftCapabilityEnvWrapper(**kwargs)
        if seed is not None:
            for dist in game.env_key_to_distribution_map.values():
                reseed_generators(dist, seed)
        return game


class GameGroup:
    """The games of one worker, built by `factory(seed)`: reset / step them in turn and return numpy results."""

    def __init__(self, factory: Callable[[int | None], Any], n_games: int) -> None:
        self.factory = factory
        self.games = [factory(None) for _ in range(n_games)]

    def env_info(self) -> dict:
        return dict(self.games[0].get_env_info())

    def reset(self, seeds: Sequence[int] | None) -> GameBatch:
        """Start new episodes; with seeds (one per game) first rebuild every game with its seed."""
        if seeds is not None:
            random.seed(int(seeds[0]))  # this worker's own process: smacv2 shuffles teams with `random`
            self.close()
            self.games = [self.factory(int(s)) for s in seeds]
        views = []
        for game in self.games:
            game.reset()
            views.append(game_view(game))
        return stack_games(views)

    def step(self, actions: np.ndarray) -> dict[str, Any]:
        """actions [G,N] int64 -> {"final": GameBatch after the step, "reward" [G] f32, "finished" [G] bool,
        "infos": G dicts, "fresh": GameBatch of the finished games after their reset (or None)}."""
        finals, rewards, finished, infos, fresh = [], [], [], [], []
        for game, act in zip(self.games, actions):
            reward, done, info = game.step(act.tolist())
            finals.append(game_view(game))
            rewards.append(float(reward))
            finished.append(bool(done))
            infos.append(dict(info))
            if done:
                game.reset()
                fresh.append(game_view(game))
        return {"final": stack_games(finals), "reward": np.asarray(rewards, dtype=np.float32),
                "finished": np.asarray(finished, dtype=bool), "infos": infos,
                "fresh": stack_games(fresh) if fresh else None}

    def handle(self, cmd: str, arg: Any) -> Any:
        """A worker command: ("reset", seeds or None) -> reset(); ("step", actions [G,N]) -> step()."""
        return self.reset(arg) if cmd == "reset" else self.step(arg)

    def close(self) -> None:
        for game in self.games:
            game.close()


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def unavailable_or_error(cmd: str, e: Exception) -> tuple[str, str]:
    """A worker's reply to a command (or "start") that raised `e`: ("unavailable", one line) when the game cannot
    start (EnvUnavailableError), else ("error", the command, the exception and the traceback)."""
    if isinstance(e, EnvUnavailableError):
        return "unavailable", str(e)
    return error_reply(cmd, e)


def worker_main(conn: Any, factory: Callable[[int | None], Any], n_games: int) -> None:
    """Worker loop (envs.workers.serve): build a GameGroup, answer ("ok", env_info); then ("reset", seeds) /
    ("step", actions) / ("close", None) with ("ok", result), ("error", text) or, when the game cannot start,
    ("unavailable", one line). SIGTERM (what multiprocessing sends daemonic workers at exit) also closes the games,
    so no StarCraft II process outlives its worker."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)
    serve(conn, lambda: GameGroup(factory, n_games), hello=GameGroup.env_info, reply_to_error=unavailable_or_error)


class SMACv2Pool(WorkerPool):
    """W "spawn" processes, worker w owning games chunks[w]; call() sends to all, then gathers from all. A worker
    whose game cannot start raises EnvUnavailableError here."""

    label = "SMACv2"
    unit = "games"
    close_timeout_s = CLOSE_TIMEOUT_S

    def __init__(self, factory: Callable[[int | None], Any], chunks: list[tuple[int, int]]) -> None:
        super().__init__(chunks)
        self.env_infos = self.start(start_context(), worker_main, [(factory, n) for _, n in chunks],
                                    name="smacv2-worker")

    def failure(self, w: int, status: str, payload: Any) -> Exception:
        """EnvUnavailableError (the worker's one line) when the game cannot start, else RuntimeError with the
        worker's traceback."""
        if status == "unavailable":
            return EnvUnavailableError(payload)
        return super().failure(w, status, payload)


# ---------------------------------------------------------------------------------------------------------------------
# The VecEnv
# ---------------------------------------------------------------------------------------------------------------------

class SMACv2VecEnv:
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
        if isinstance(num_envs, bool) or not isinstance(num_envs, int) or num_envs < 1:
            raise ValueError(f"num_envs={num_envs!r}; must be an integer >= 1")
        if workers is None:
            return min(num_envs, os.cpu_count() or 1)
        if isinstance(workers, bool) or not isinstance(workers, int) or not 1 <= workers <= num_envs:
            raise ValueError(f"env.workers={workers!r}; must be an integer in [1, num_envs={num_envs}]")
        return workers

    def _start(self, num_envs: int, device: torch.device, factory: Callable[[int | None], Any], workers: int) -> None:
        self.num_envs, self.device = num_envs, device
        self._chunks = chunk_sizes(num_envs, workers)
        self._pool = SMACv2Pool(factory, self._chunks)
        infos = self._pool.env_infos
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

    def _check_available(self, actions: Tensor) -> None:
        """ValueError naming the first (env, agent, action) that is out of range or not available."""
        A = self.spec.n_actions
        acts = actions.to(self._avail.device, torch.int64)
        in_range = (acts >= 0) & (acts < A)
        ok = in_range & self._avail.gather(-1, acts.clamp(0, A - 1)[..., None]).squeeze(-1)
        if not bool(ok.all()):
            b, i = (int(x) for x in (~ok).nonzero()[0])
            allowed = self._avail[b, i].nonzero().flatten().tolist()
            raise ValueError(f"step(): actions[{b}, {i}]={int(acts[b, i])} is not available; allowed: {allowed}")

    def step(self, actions: Tensor) -> Step:
        """Advance all B games by one step (actions LongTensor [B,N], each available); finished games reset."""
        if self._avail is None:
            raise RuntimeError("step() before reset(): call reset() first")
        check_actions(actions, self.num_envs, self.spec.n_agents)
        self._check_available(actions)
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
