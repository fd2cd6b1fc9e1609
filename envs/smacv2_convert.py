"""SMACv2 conversions, pure functions both ways: the env config -> StarCraft2Env keyword arguments, and smacv2's
game outputs (numpy) -> the contract's arrays and Step (envs.smacv2's docstring gives the rules)."""
from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Mapping, Sequence

import gymnasium
import numpy as np
import torch
from torch import Tensor

from envs.core import EnvConfigError, EnvSpec, Step, plain
from envs.smacv2_install import CAPABILITY_PREFIX

# The no-op: the only action of a dead unit in smacv2 (and never available to a living one).
NO_OP = 0
# StarCraft2Env keywords the adapter sets itself (so env_kwargs may not).
RESERVED_GAME_KWARGS = ("map_name", "capability_config", "seed", "continuing_episode")


# ---------------------------------------------------------------------------------------------------------------------
# Config -> StarCraft2Env keyword arguments
# ---------------------------------------------------------------------------------------------------------------------

def _check_count(key: str, value: Any) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 1:
        raise EnvConfigError(f"env.{key}={value!r}; must be an integer >= 1")


def build_game_kwargs(map_name: str, capability_config: Mapping[str, Any] | None, n_units: int | None,
                      n_enemies: int | None, env_kwargs: Mapping[str, Any] | None) -> dict[str, Any]:
    """StarCraft2Env / StarCraftCapabilityEnvWrapper keyword arguments (all but the seed); ValueError on bad values.

    Capability maps (10gen_<race>) need a capability_config of distributions ({"dist_type": ...} each) and the team
    sizes n_units / n_enemies (as arguments or inside capability_config); classic maps take none of the three.
    ``continuing_episode`` is always True so that smacv2 reports its time limit (info["episode_limit"]).
    """
    if not isinstance(map_name, str) or not map_name:
        raise EnvConfigError(f"env.map_name={map_name!r}; must be a smacv2 map name, e.g. '10gen_protoss' or '3m'")
    extra = plain(env_kwargs) if env_kwargs is not None else {}
    if not isinstance(extra, dict):
        raise EnvConfigError(f"env.env_kwargs={env_kwargs!r}; must be a mapping of StarCraft2Env keyword arguments")
    for key in RESERVED_GAME_KWARGS:
        if key in extra:
            raise EnvConfigError(f"env.env_kwargs.{key}={extra[key]!r}; set by the adapter, not allowed in env_kwargs "
                                 f"(reserved: {list(RESERVED_GAME_KWARGS)})")
    kwargs: dict[str, Any] = {"map_name": map_name, **extra, "continuing_episode": True}
    if not map_name.startswith(CAPABILITY_PREFIX):
        for key, value in (("capability_config", capability_config), ("n_units", n_units),
                           ("n_enemies", n_enemies)):
            if value is not None:
                raise EnvConfigError(f"env.{key}={value!r}; classic map {map_name!r} has fixed teams, "
                                     f"only {CAPABILITY_PREFIX}<race> maps take {key}")
        return kwargs
    if capability_config is None:
        raise EnvConfigError(f"env.capability_config=None; map_name={map_name!r} needs one "
                             "(team_gen and start_positions distributions, see conf/env/smacv2_protoss_5_vs_5.yaml)")
    cap = plain(capability_config)
    if not isinstance(cap, dict):
        raise EnvConfigError(f"env.capability_config={capability_config!r}; must be a mapping of distributions")
    for key, value in (("n_units", n_units), ("n_enemies", n_enemies)):
        if value is not None and key in cap and cap[key] != value:
            raise EnvConfigError(f"env.{key}={value!r} but env.capability_config.{key}={cap[key]!r}; give one of them")
        if value is not None:
            cap[key] = value
        if key not in cap:
            raise EnvConfigError(f"env.{key}=None; map_name={map_name!r} needs the team size {key}")
        _check_count(key, cap[key])
    for key, dist in cap.items():
        if key not in ("n_units", "n_enemies") and not (isinstance(dist, dict) and "dist_type" in dist):
            raise EnvConfigError(f"env.capability_config.{key}={dist!r}; must be a distribution with a 'dist_type' key")
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

    return Step.alive_is_active(
        obs=tensor(mask_dead(current.obs, alive), torch.float32),
        state=tensor(current.state, torch.float32),
        avail_actions=tensor(current.avail, torch.bool),
        reward=tensor(reward, torch.float32),
        terminated=tensor(terminated, torch.bool),
        truncated=tensor(truncated, torch.bool),
        alive=tensor(alive, torch.bool),
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
