"""SMACv2 adapter (envs/smacv2.py), its configs (conf/env/smacv2_*.yaml) and scripts/install_sc2.sh.

Without StarCraft II: the conversion functions on numpy inputs shaped like smacv2's outputs, the whole VecEnv (worker
processes included) on a scripted game with smacv2's game API, the install checks, the configs and the installer's
argument handling. With StarCraft II (SC2PATH set): random play on real games, marked sc2 and slow.
"""
from __future__ import annotations

import ast
import inspect
import logging
import multiprocessing
import os
import re
import subprocess
import sys
import threading
import types
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from core_utils import check_step

from envs.core import EnvUnavailableError, plain, random_available
from envs.registry import META_KEYS, make_env
from envs.smacv2 import SMACv2VecEnv
from envs.smacv2_convert import (
    accumulate_episodes, alive_from_avail, broadcast_reward, build_game_kwargs, outcome_from_infos, replace_finished,
    spec_from_env_info, stack_games, to_step,
)
from envs.smacv2_games import SMACv2GameFactory, reseed_generators, worker_main
from envs.smacv2_install import check_sc2_install
from envs.workers import worker_chunks
import envs.smacv2 as smacv2_module
import envs.smacv2_convert as smacv2_convert
import envs.smacv2_games as smacv2_games
import envs.smacv2_install as smacv2_install

ROOT = Path(__file__).resolve().parents[1]
CONF = ROOT / "conf" / "env"
SCRIPT = ROOT / "scripts" / "install_sc2.sh"
RACES = ("protoss", "terran", "zerg")
SIZES = ((5, 5), (10, 10), (10, 11), (20, 20), (20, 23))
CLASSIC = ("3m", "8m", "2s3z", "3s5z", "5m_vs_6m", "MMM2", "3s5z_vs_3s6z")
CONFIG_NAMES = sorted([f"smacv2_{r}_{n}_vs_{m}" for r in RACES for n, m in SIZES] + [f"smacv2_{c}" for c in CLASSIC])
# smacv2's published team distributions (smacv2 example configs sc2_gen_<race>.yaml).
TEAMS = {
    "protoss": ({"stalker": 0.45, "zealot": 0.45, "colossus": 0.1}, None),
    "terran": ({"marine": 0.45, "marauder": 0.45, "medivac": 0.1}, ["medivac"]),
    "zerg": ({"zergling": 0.45, "baneling": 0.1, "hydralisk": 0.45}, ["baneling"]),
}


def smac_outputs(obs_rows, state, avail_rows):
    """One game's outputs exactly as smacv2 returns them: get_obs() a list of float32 arrays, get_state() a float32
    array, get_avail_agent_actions(i) lists of ints."""
    return ([np.asarray(r, dtype=np.float32) for r in obs_rows], np.asarray(state, dtype=np.float32),
            [list(map(int, a)) for a in avail_rows])


# ---------------------------------------------------------------------------------------------------------------------
# A scripted game with smacv2's game API (module level, so worker processes can unpickle the factory)
# ---------------------------------------------------------------------------------------------------------------------

N, A, O, S, LIMIT = 3, 8, 5, 4, 4
STOP, CRASH, WIN = 1, 6, 7  # CRASH: the game "crashes" (smacv2 restarts it); WIN ends the battle with a win
DIES_AT = 2  # agent 2 dies at this step of every episode
STEP_REWARD, WIN_BONUS = 0.5, 10.0


class ScriptedGame:
    """obs of agent i = [t, i, seed, episode, 1] (zeros once dead), state = [t, seed, episode, 1]; agent 2 dies at
    t = DIES_AT; any WIN action wins; any CRASH action gets smacv2's answer to a StarCraft II error (it restarts the
    game and returns (0, True, {})); the episode is cut at LIMIT steps (info["episode_limit"])."""

    def __init__(self, seed):
        self.seed = -1 if seed is None else seed
        self.t, self.episode = 0, -1

    def get_env_info(self):
        return {"state_shape": S, "obs_shape": O, "cap_shape": 3, "n_actions": A, "n_agents": N, "episode_limit": LIMIT}

    def dead(self, i):
        return i == 2 and self.t >= DIES_AT

    def reset(self):
        self.t, self.episode = 0, self.episode + 1
        return self.get_obs(), self.get_state()

    def get_obs(self):
        return [np.zeros(O, np.float32) if self.dead(i) else np.array([self.t, i, self.seed, self.episode, 1],
                                                                      np.float32) for i in range(N)]

    def get_state(self):
        return np.array([self.t, self.seed, self.episode, 1], np.float32)

    def get_avail_agent_actions(self, i):
        return [1] + [0] * (A - 1) if self.dead(i) else [0] + [1] * (A - 1)

    def step(self, actions):
        assert all(self.get_avail_agent_actions(i)[a] for i, a in enumerate(actions)), "unavailable action"
        self.t += 1
        if CRASH in actions:
            return 0, True, {}
        if WIN in actions:
            return STEP_REWARD + WIN_BONUS, True, {"battle_won": True, "dead_allies": 1, "dead_enemies": 2}
        if self.t >= LIMIT:
            return STEP_REWARD, True, {"battle_won": False, "episode_limit": True, "dead_allies": 1}
        return STEP_REWARD, False, {"battle_won": False, "dead_allies": int(self.t >= DIES_AT)}

    def close(self):
        pass


def scripted_factory(seed):
    return ScriptedGame(seed)


def unavailable_factory(seed):
    raise EnvUnavailableError("StarCraft II not found: scripted")


def failing_factory(seed):
    raise KeyError("scripted failure")


# ---------------------------------------------------------------------------------------------------------------------
# Pure conversion functions on smacv2-shaped inputs
# ---------------------------------------------------------------------------------------------------------------------

def test_stack_games_shapes_dtypes_and_values():
    g0 = smac_outputs([[1, 2], [3, 4], [0, 0]], [9, 8, 7], [[0, 1, 1, 0], [0, 1, 0, 1], [1, 0, 0, 0]])
    g1 = smac_outputs([[5, 6], [7, 8], [1, 1]], [6, 5, 4], [[0, 1, 0, 0], [0, 1, 1, 1], [0, 1, 0, 0]])
    batch = stack_games([g0, g1])
    assert batch.obs.shape == (2, 3, 2) and batch.obs.dtype == np.float32
    assert batch.state.shape == (2, 3) and batch.state.dtype == np.float32
    assert batch.avail.shape == (2, 3, 4) and batch.avail.dtype == bool
    assert batch.obs[1, 2].tolist() == [1, 1] and batch.state[0].tolist() == [9, 8, 7]
    assert batch.avail[0, 1].tolist() == [False, True, False, True]


def test_dead_agent_is_not_alive_not_active_and_has_zero_obs():
    # agent 1 of game 0 is dead: only the no-op; its (nonzero) observation must still come out as zeros
    game = smac_outputs([[1, 2, 3], [4, 5, 6]], [1, 1], [[0, 1, 1, 0, 1], [1, 0, 0, 0, 0]])
    view = stack_games([game])
    assert alive_from_avail(view.avail).tolist() == [[True, False]]
    step = to_step(view, view, np.zeros((1, 2), np.float32), np.zeros(1, bool), np.zeros(1, bool),
                   {"return": np.zeros(1), "length": np.zeros(1), "won": np.zeros(1)}, torch.device("cpu"))
    assert step.alive.tolist() == [[True, False]] and step.active.tolist() == [[True, False]]
    assert step.obs[0, 1].tolist() == [0.0, 0.0, 0.0] and step.obs[0, 0].tolist() == [1.0, 2.0, 3.0]
    assert step.final_obs[0, 1].tolist() == [0.0, 0.0, 0.0] and step.final_alive.tolist() == [[True, False]]
    assert step.avail_actions[0, 1].tolist() == [True, False, False, False, False]


def test_outcome_time_limit_is_truncation_and_battle_end_is_termination():
    finished = np.array([False, True, True, True, True])
    infos = [
        {"battle_won": False},                          # still running
        {"battle_won": False, "episode_limit": True},   # time limit: truncated, bootstrapped
        {"battle_won": True, "dead_enemies": 5},        # won
        {"battle_won": False, "dead_allies": 5},        # lost
        {},                                             # smacv2 restarted a crashed game
    ]
    terminated, truncated, won, interrupted = outcome_from_infos(finished, infos)
    assert terminated.tolist() == [False, False, True, True, False]
    assert truncated.tolist() == [False, True, False, False, True]
    assert won.tolist() == [False, False, True, False, False]
    assert interrupted.tolist() == [False, False, False, False, True]


def test_outcome_won_wins_over_a_time_limit_flag():
    terminated, truncated, won, _ = outcome_from_infos(np.array([True]), [{"battle_won": True, "episode_limit": True}])
    assert (terminated.tolist(), truncated.tolist(), won.tolist()) == ([True], [False], [True])


def test_shared_reward_is_broadcast_to_every_agent():
    out = broadcast_reward(np.array([0.25, -1.5], dtype=np.float64), 3)
    assert out.dtype == np.float32 and out.tolist() == [[0.25] * 3, [-1.5] * 3]


def test_auto_reset_bookkeeping_keeps_final_view_and_restarts_sums():
    final = stack_games([smac_outputs([[b, 1.0]], [b], [[0, 1]]) for b in (10, 20, 30)])
    fresh = stack_games([smac_outputs([[b, 0.0]], [b], [[0, 1]]) for b in (21, 31)])
    finished = np.array([False, True, True])
    current = replace_finished(final, fresh, finished)
    assert current.obs[:, 0].tolist() == [[10, 1], [21, 0], [31, 0]]
    assert current.state[:, 0].tolist() == [10, 21, 31]
    assert final.obs[:, 0, 0].tolist() == [10, 20, 30], "the final view must not be overwritten"
    assert replace_finished(final, None, np.zeros(3, bool)) is final

    ep_ret, ep_len, ret, length = accumulate_episodes(
        np.array([1.0, 2.0, 3.0]), np.array([4.0, 5.0, 6.0]), np.array([0.5, 0.25, 10.0]), finished)
    assert ep_ret.tolist() == [0.0, 2.25, 13.0] and ep_len.tolist() == [0.0, 6.0, 7.0]
    assert ret.tolist() == [1.5, 0.0, 0.0] and length.tolist() == [5.0, 0.0, 0.0]


def test_to_step_final_fields_after_auto_reset():
    final = stack_games([smac_outputs([[1.0], [2.0]], [3.0], [[0, 1], [1, 0]]),
                         smac_outputs([[4.0], [5.0]], [6.0], [[0, 1], [0, 1]])])
    fresh = stack_games([smac_outputs([[7.0], [8.0]], [9.0], [[0, 1], [0, 1]])])
    finished = np.array([True, False])
    step = to_step(replace_finished(final, fresh, finished), final, broadcast_reward(np.array([1.0, 2.0]), 2),
                   finished, np.array([False, False]),
                   {"return": np.array([5.0, 0.0]), "length": np.array([3.0, 0.0]), "won": np.array([1.0, 0.0])},
                   torch.device("cpu"))
    assert step.obs[:, :, 0].tolist() == [[7.0, 8.0], [4.0, 5.0]]
    assert step.final_obs[:, :, 0].tolist() == [[1.0, 0.0], [4.0, 5.0]]  # game 0's agent 1 died: zero
    assert step.alive.tolist() == [[True, True], [True, True]]
    assert step.final_alive.tolist() == [[True, False], [True, True]]
    assert step.state[:, 0].tolist() == [9.0, 6.0] and step.final_state[:, 0].tolist() == [3.0, 6.0]
    assert step.reward.tolist() == [[1.0, 1.0], [2.0, 2.0]]
    assert step.episode["won"].dtype == torch.float32 and step.episode["won"].tolist() == [1.0, 0.0]


def test_spec_from_env_info():
    spec = spec_from_env_info({"state_shape": 130, "obs_shape": 92, "cap_shape": 3, "n_actions": 11,
                               "n_agents": 5, "episode_limit": 200})
    assert (spec.n_agents, spec.obs_dim, spec.state_dim, spec.n_actions, spec.episode_limit) == (5, 92, 130, 11, 200)
    assert spec.agent_names == tuple(f"agent_{i}" for i in range(5)) and spec.task_metrics == ("won",)
    assert spec.action_spaces["agent_4"].n == 11 and spec.observation_spaces["agent_0"].shape == (92,)


class _Dist:
    """Like a smacv2 distribution: a generate() method, a numpy Generator, maybe a nested distribution."""

    def __init__(self, inner=None):
        self.rng = np.random.default_rng()
        self.inner = inner

    def generate(self):
        return self.rng.random()


def test_reseed_generators_makes_capability_draws_repeatable():
    a, b = _Dist(_Dist()), _Dist(_Dist())
    assert reseed_generators(a, 3) == 2 and reseed_generators(b, 3) == 2
    assert [a.generate(), a.inner.generate()] == [b.generate(), b.inner.generate()]
    assert a.generate() != a.inner.generate(), "nested generators must get different streams"


def test_worker_chunks_split_games_contiguously():
    assert worker_chunks(5, 2) == [(0, 3), (3, 2)]
    assert worker_chunks(4, 4) == [(0, 1), (1, 1), (2, 1), (3, 1)]


# ---------------------------------------------------------------------------------------------------------------------
# Config -> game keyword arguments
# ---------------------------------------------------------------------------------------------------------------------

CAP = {"team_gen": {"dist_type": "weighted_teams", "unit_types": ["marine"], "weights": [1.0]},
       "start_positions": {"dist_type": "surrounded_and_reflect", "p": 0.5, "map_x": 32, "map_y": 32}}


def test_build_game_kwargs_capability_map():
    kwargs = build_game_kwargs("10gen_terran", CAP, 10, 11, {"obs_own_pos": True})
    assert kwargs["continuing_episode"] is True, "needed for info['episode_limit']"
    assert kwargs["capability_config"]["n_units"] == 10 and kwargs["capability_config"]["n_enemies"] == 11
    assert kwargs["map_name"] == "10gen_terran" and kwargs["obs_own_pos"] is True
    assert "n_units" not in CAP, "the caller's config must not be mutated"


def test_omegaconf_configs_become_plain_containers():
    from omegaconf import OmegaConf
    cfg = OmegaConf.load(CONF / "smacv2_terran_10_vs_11.yaml")
    kwargs = build_game_kwargs(cfg.map_name, cfg.capability_config, cfg.n_units, cfg.n_enemies, cfg.env_kwargs)
    cap = kwargs["capability_config"]
    assert type(cap) is dict and type(cap["team_gen"]) is dict and type(cap["team_gen"]["unit_types"]) is list
    assert cap["team_gen"]["exception_unit_types"] == ["medivac"] and cap["n_enemies"] == 11
    assert plain(cfg) == yaml.safe_load((CONF / "smacv2_terran_10_vs_11.yaml").read_text())


def test_build_game_kwargs_classic_map():
    assert build_game_kwargs("3m", None, None, None, None) == {"map_name": "3m", "continuing_episode": True}


@pytest.mark.parametrize("args, message", [
    (("3m", None, 3, None, None), "env.n_units=3; classic map '3m' has fixed teams"),
    (("10gen_zerg", None, 5, 5, None), "env.capability_config=None; map_name='10gen_zerg' needs one"),
    (("10gen_zerg", CAP, None, 5, None), "env.n_units=None; map_name='10gen_zerg' needs the team size n_units"),
    (("10gen_zerg", CAP, 0, 5, None), "env.n_units=0; must be an integer >= 1"),
    (("10gen_zerg", {**CAP, "n_units": 4}, 5, 5, None), "env.n_units=5 but env.capability_config.n_units=4"),
    (("10gen_zerg", {"team_gen": {"weights": [1.0]}}, 5, 5, None), "env.capability_config.team_gen="),
    (("3m", None, None, None, {"seed": 1}), "env.env_kwargs.seed=1; set by the adapter"),
    (("3m", None, None, None, {"continuing_episode": False}), "env.env_kwargs.continuing_episode=False"),
    (("", None, None, None, None), "env.map_name=''"),
])
def test_build_game_kwargs_rejects_bad_values(args, message):
    with pytest.raises(ValueError) as info:
        build_game_kwargs(*args)
    assert str(info.value).startswith(message) and "\n" not in str(info.value)


def test_bad_workers_value_is_rejected_before_any_check(monkeypatch):
    monkeypatch.delenv("SC2PATH", raising=False)
    with pytest.raises(ValueError, match=r"^env.workers=3; must be an integer in \[1, num_envs=2\]$"):
        SMACv2VecEnv(num_envs=2, device="cpu", map_name="3m", workers=3)


# ---------------------------------------------------------------------------------------------------------------------
# Missing StarCraft II: one line, in the documented order
# ---------------------------------------------------------------------------------------------------------------------

def _one_line_error(fn) -> str:
    with pytest.raises(EnvUnavailableError) as info:
        fn()
    message = str(info.value)
    assert "\n" not in message and "scripts/install_sc2.sh" in message
    return message


def test_sc2path_unset_raises_one_line_naming_the_installer(monkeypatch):
    monkeypatch.delenv("SC2PATH", raising=False)
    message = _one_line_error(lambda: SMACv2VecEnv(num_envs=2, device="cpu", map_name="3m"))
    assert message.startswith("StarCraft II not found: SC2PATH is unset; run scripts/install_sc2.sh")
    assert "export SC2PATH=" in message


def test_install_checks_run_in_order(tmp_path, monkeypatch):
    root = tmp_path / "StarCraftII"
    assert "is not a directory" in _one_line_error(lambda: check_sc2_install("10gen_protoss", str(root)))
    root.mkdir()
    assert _one_line_error(lambda: check_sc2_install("10gen_protoss", str(root))).startswith(
        f"StarCraft II binary not found under {root / 'Versions'}")
    (root / "Versions" / "Base75689").mkdir(parents=True)
    (root / "Versions" / "Base75689" / "SC2_x64").touch()
    maps = root / "Maps" / "SMAC_Maps"
    maps.mkdir(parents=True)
    (maps / "3m.SC2Map").touch()
    assert _one_line_error(lambda: check_sc2_install("10gen_protoss", str(root))).startswith(
        f"SMACv2 map not found: {maps / '32x32_flat.SC2Map'} (map_name='10gen_protoss')")
    check_sc2_install("3m", str(root))  # classic map file present: no error
    (maps / "32x32_flat.SC2Map").touch()
    check_sc2_install("10gen_protoss", str(root))
    # everything there but the Python package
    monkeypatch.setenv("SC2PATH", str(root))
    monkeypatch.setattr(smacv2_install, "smacv2_installed", lambda: False)
    message = _one_line_error(lambda: SMACv2VecEnv(num_envs=1, device="cpu", map_name="3m"))
    assert message.startswith("Python package smacv2 not importable: pip install the [smacv2] setup")


def test_factory_turns_import_failures_into_one_line(monkeypatch):
    factory = SMACv2GameFactory(build_game_kwargs("3m", None, None, None, None))
    monkeypatch.setitem(sys.modules, "smacv2", None)  # not installed
    message = _one_line_error(lambda: factory(None))
    assert message.startswith("smacv2 failed to import (ModuleNotFoundError: ") and "[smacv2]" in message

    class OldProtobufFiles(types.ModuleType):  # what pysc2's generated files do under protobuf >= 3.21
        def __getattr__(self, name):
            raise TypeError("Descriptors cannot be created directly.\nIf this call came from a _pb2.py file, ...")

    monkeypatch.setitem(sys.modules, "smacv2", types.ModuleType("smacv2"))
    monkeypatch.setitem(sys.modules, "smacv2.env", OldProtobufFiles("smacv2.env"))
    assert _one_line_error(lambda: factory(None)) == (
        "smacv2 failed to import (TypeError: Descriptors cannot be created directly.); export "
        "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python, or use a virtualenv with protobuf < 3.21 made by "
        "scripts/install_sc2.sh")


def test_make_env_accepts_every_config_and_reaches_the_install_check(monkeypatch):
    monkeypatch.delenv("SC2PATH", raising=False)
    for name in CONFIG_NAMES:
        cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
        with pytest.raises(EnvUnavailableError, match="^StarCraft II not found: SC2PATH is unset"):
            make_env(cfg, num_envs=2)


@pytest.mark.parametrize("module", [smacv2_module, smacv2_convert, smacv2_games, smacv2_install],
                         ids=lambda m: m.__name__)
def test_module_imports_neither_smacv2_nor_pysc2_at_top_level(module):
    tree = ast.parse(Path(module.__file__).read_text())
    names = [alias.name for node in tree.body if isinstance(node, ast.Import) for alias in node.names]
    names += [node.module or "" for node in tree.body if isinstance(node, ast.ImportFrom)]
    assert names and not [n for n in names if n.split(".")[0] in ("smacv2", "pysc2")]


# ---------------------------------------------------------------------------------------------------------------------
# The whole VecEnv (worker processes included) on the scripted game
# ---------------------------------------------------------------------------------------------------------------------

@pytest.fixture(scope="module")
def scripted_env():
    """3 scripted games in 2 worker processes (games [0, 1] and [2]), shared by the tests below (each resets)."""
    env = SMACv2VecEnv.from_game_factory(3, "cpu", scripted_factory, workers=2)
    yield env
    env.close()
    env.close()  # a second close is harmless


def test_vecenv_on_scripted_games(scripted_env):
    env = scripted_env
    assert (env.spec.n_agents, env.spec.obs_dim, env.spec.state_dim, env.spec.n_actions) == (N, O, S, A)
    out = env.reset(seed=5)
    check_step(out, 3, env.spec)
    assert out.obs[:, 0, 2].tolist() == [5.0, 6.0, 7.0], "game b is seeded seed + b"
    assert out.alive.all() and not out.done.any() and out.reward.abs().sum() == 0

    stop = torch.full((3, N), STOP, dtype=torch.long)
    out = env.step(stop)
    check_step(out, 3, env.spec)
    assert out.reward.tolist() == [[STEP_REWARD] * N] * 3 and not out.done.any()
    out = env.step(stop)  # t = 2: agent 2 dies everywhere
    assert out.alive[:, 2].tolist() == [False] * 3 and out.active[:, 2].tolist() == [False] * 3
    assert out.obs[:, 2].abs().sum() == 0 and out.avail_actions[:, 2].tolist() == [[True] + [False] * 7] * 3

    with pytest.raises(ValueError, match=r"^step\(\): action 1 of agent 'agent_2' in env 0 is not available; "
                                         r"available: \[0\]$"):
        env.step(stop)
    acts = stop.clone()
    acts[:, 2] = 0
    acts[1, 0] = WIN
    out = env.step(acts)  # t = 3: game 1 wins
    check_step(out, 3, env.spec)
    assert out.terminated.tolist() == [False, True, False] and not out.truncated.any()
    assert out.episode["won"].tolist() == [0.0, 1.0, 0.0]
    assert out.episode["return"].tolist() == [0.0, 3 * STEP_REWARD + WIN_BONUS, 0.0]
    assert out.episode["length"].tolist() == [0.0, 3.0, 0.0]
    assert out.final_obs[1, 0].tolist() == [3.0, 0.0, 6.0, 0.0, 1.0], "last view of the won episode"
    assert out.obs[1, 0].tolist() == [0.0, 0.0, 6.0, 1.0, 1.0], "first view of game 1's next episode"
    assert out.final_alive[1].tolist() == [True, True, False] and out.alive[1].tolist() == [True] * 3
    assert out.final_state[1].tolist() == [3.0, 6.0, 0.0, 1.0] and out.state[1].tolist() == [0.0, 6.0, 1.0, 1.0]
    for b in (0, 2):  # unfinished games: final_* equal the current view
        assert torch.equal(out.final_obs[b], out.obs[b]) and torch.equal(out.final_state[b], out.state[b])
        assert torch.equal(out.final_alive[b], out.alive[b])

    acts = stop.clone()
    acts[[0, 2], 2] = 0
    out = env.step(acts)  # t = 4 in games 0 and 2: time limit; t = 1 in game 1
    assert out.truncated.tolist() == [True, False, True] and not out.terminated.any()
    assert out.episode["won"].tolist() == [0.0] * 3
    assert out.episode["length"].tolist() == [4.0, 0.0, 4.0]
    assert out.episode["return"].tolist() == [4 * STEP_REWARD, 0.0, 4 * STEP_REWARD]
    assert out.final_obs[0, 0, 0].item() == 4.0 and out.obs[0, 0, 0].item() == 0.0

    out = env.reset()  # no seed: new episodes in the same games
    assert out.obs[:, 0, 2].tolist() == [5.0, 6.0, 7.0] and out.obs[:, 0, 3].tolist() == [2.0, 2.0, 2.0]
    out = env.reset(seed=9)  # new seed: games rebuilt with 9 + b
    assert out.obs[:, 0, 2].tolist() == [9.0, 10.0, 11.0] and out.obs[:, 0, 3].tolist() == [0.0] * 3


def test_crashed_game_counts_as_truncated_and_warns(scripted_env, caplog):
    env = scripted_env
    env.reset(seed=0)
    acts = torch.full((3, N), STOP, dtype=torch.long)
    acts[2, 1] = CRASH
    with caplog.at_level(logging.WARNING, logger="envs.smacv2"):
        out = env.step(acts)
    assert out.truncated.tolist() == [False, False, True] and not out.terminated.any()
    assert out.episode["won"].tolist() == [0.0] * 3 and out.episode["length"].tolist() == [0.0, 0.0, 1.0]
    assert "SMACv2 game 2 was restarted" in caplog.text


def test_out_of_range_action_is_rejected(scripted_env):
    scripted_env.reset()
    acts = torch.full((3, N), STOP, dtype=torch.long)
    acts[1, 1] = A
    with pytest.raises(ValueError, match=rf"^step\(\): action {A} of agent 'agent_1' in env 1 is not available; "
                                         r"available: \[1, 2,"):
        scripted_env.step(acts)


def test_step_before_reset_is_an_error():
    env = SMACv2VecEnv.__new__(SMACv2VecEnv)
    env._avail = None
    with pytest.raises(RuntimeError, match=r"^step\(\) before reset\(\): call reset\(\) first$"):
        env.step(torch.ones((1, N), dtype=torch.long))


def _worker_replies(factory, *commands):
    """Run worker_main in a thread on a pipe; send `commands`; return every reply."""
    parent, child = multiprocessing.Pipe()
    thread = threading.Thread(target=worker_main, args=(child, factory, 1))
    thread.start()
    replies = [parent.recv()]
    if replies[0][0] == "ok":
        for cmd in commands:
            parent.send(cmd)
            if cmd[0] != "close":
                replies.append(parent.recv())
    thread.join(10)
    assert not thread.is_alive()
    return replies


def test_worker_protocol_in_process():
    replies = _worker_replies(scripted_factory, ("reset", [4]), ("step", np.array([[WIN, 1, 1]])), ("close", None))
    assert replies[0] == ("ok", ScriptedGame(None).get_env_info())
    assert replies[1][0] == "ok" and replies[1][1].obs[0, 0].tolist() == [0.0, 0.0, 4.0, 0.0, 1.0]
    result = replies[2][1]
    assert result["finished"].tolist() == [True] and result["reward"].tolist() == [STEP_REWARD + WIN_BONUS]
    assert result["infos"][0]["battle_won"] is True and result["fresh"].obs[0, 0, 3] == 1.0
    [(status, text)] = _worker_replies(failing_factory)
    assert status == "error" and text.startswith("start(): KeyError: 'scripted failure'\n")
    assert _worker_replies(unavailable_factory) == [("unavailable", "StarCraft II not found: scripted")]


@dataclass(frozen=True)
class MarkerFactory:
    """Scripted games whose close() leaves a file in `folder`."""

    folder: str

    def __call__(self, seed):
        game = ScriptedGame(seed)
        game.close = lambda: Path(self.folder, f"closed_{os.getpid()}").touch()
        return game


def test_terminated_worker_still_closes_its_games(tmp_path):
    env = SMACv2VecEnv.from_game_factory(1, "cpu", MarkerFactory(str(tmp_path)), workers=1)
    proc = env._pool.procs[0]
    proc.terminate()  # what multiprocessing does to daemonic workers at interpreter exit
    proc.join(30)
    env.close()
    assert proc.exitcode == 0 and [p.name for p in tmp_path.iterdir()] == [f"closed_{proc.pid}"]


def test_unavailable_game_in_a_worker_raises_env_unavailable():
    with pytest.raises(EnvUnavailableError, match="^StarCraft II not found: scripted$"):
        SMACv2VecEnv.from_game_factory(1, "cpu", unavailable_factory, workers=1)


# ---------------------------------------------------------------------------------------------------------------------
# The 22 configs
# ---------------------------------------------------------------------------------------------------------------------

def test_exactly_the_22_configs_exist():
    assert sorted(p.stem for p in CONF.glob("smacv2_*.yaml")) == CONFIG_NAMES


@pytest.mark.parametrize("name", CONFIG_NAMES)
def test_config_keys_match_the_constructor(name):
    text = (CONF / f"{name}.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert (cfg["name"], cfg["family"], cfg["eval_episodes"]) == (name, "smacv2", 32)
    params = set(inspect.signature(SMACv2VecEnv.__init__).parameters) - {"self", "num_envs", "device"}
    assert set(cfg) - set(META_KEYS) <= params and "map_name" in cfg
    lines = text.splitlines()
    for k, line in enumerate(lines):  # one comment line above every key, nested ones included
        if re.match(r"^\s*\w+:", line):
            assert k > 0 and lines[k - 1].lstrip().startswith("#"), f"{name}: no comment above {line.strip()!r}"
    assert "budget" in text.lower() and "budget_env_steps" not in cfg
    build_game_kwargs(cfg["map_name"], cfg.get("capability_config"), cfg.get("n_units"), cfg.get("n_enemies"),
                      cfg.get("env_kwargs"))


@pytest.mark.parametrize("race", RACES)
@pytest.mark.parametrize("n, m", SIZES)
def test_smacv2_scenario_settings(race, n, m):
    cfg = yaml.safe_load((CONF / f"smacv2_{race}_{n}_vs_{m}.yaml").read_text())
    assert (cfg["map_name"], cfg["n_units"], cfg["n_enemies"]) == (f"10gen_{race}", n, m)
    team = cfg["capability_config"]["team_gen"]
    weights, exceptions = TEAMS[race]
    assert team["dist_type"] == "weighted_teams" and team["observe"] is True
    assert dict(zip(team["unit_types"], team["weights"])) == weights
    assert team.get("exception_unit_types") == exceptions
    assert cfg["capability_config"]["start_positions"] == {"dist_type": "surrounded_and_reflect", "p": 0.5,
                                                           "map_x": 32, "map_y": 32}
    assert cfg["env_kwargs"] == {"obs_own_pos": True, "use_unit_ranges": True, "min_attack_range": 2,
                                 "conic_fov": False}
    assert "~1e7 env steps" in (CONF / f"smacv2_{race}_{n}_vs_{m}.yaml").read_text()


@pytest.mark.parametrize("map_name, budget", [("3m", "5e5"), ("8m", "1e6"), ("3s5z", "3e6"), ("5m_vs_6m", "1e7"),
                                              ("MMM2", "1e7"), ("3s5z_vs_3s6z", "2e7")])
def test_classic_map_configs(map_name, budget):
    text = (CONF / f"smacv2_{map_name}.yaml").read_text()
    cfg = yaml.safe_load(text)
    assert cfg["map_name"] == map_name and "capability_config" not in cfg and cfg["env_kwargs"] == {}
    assert f"Reference training budget: {budget} env steps" in text


# ---------------------------------------------------------------------------------------------------------------------
# scripts/install_sc2.sh (no downloads)
# ---------------------------------------------------------------------------------------------------------------------

def _run_script(*args: str) -> subprocess.CompletedProcess:
    return subprocess.run(["bash", str(SCRIPT), *args], capture_output=True, text=True, stdin=subprocess.DEVNULL,
                          timeout=60)


def test_install_script_syntax_and_help():
    assert subprocess.run(["bash", "-n", str(SCRIPT)], capture_output=True).returncode == 0
    out = _run_script("--help")
    assert out.returncode == 0 and out.stdout.startswith("Usage: scripts/install_sc2.sh")
    for needle in ("--accept-eula", "--dir DIR", "~/StarCraftII", "AI and Machine Learning License",
                   "iagreetotheeula", "--protobuf-workaround", "PROTOCOL_BUFFERS_PYTHON_IMPLEMENTATION=python",
                   "protobuf < 3.21", "export SC2PATH"):
        assert needle in out.stdout, needle
    assert SCRIPT.read_text().splitlines()[6] == "set -euo pipefail"


def test_install_script_refuses_the_game_without_the_license(tmp_path):
    out = _run_script("--dir", str(tmp_path / "sc2"))
    assert out.returncode == 2 and "pass --accept-eula" in out.stderr
    assert list(tmp_path.iterdir()) == [], "nothing may be downloaded or created before the license is accepted"


def test_install_script_ends_with_the_export_line(tmp_path):
    out = _run_script("--dir", str(tmp_path / "sc2"), "--skip-game", "--skip-maps", "--skip-python")
    assert out.returncode == 0, out.stderr
    assert out.stdout.splitlines()[-1] == f"export SC2PATH={tmp_path / 'sc2'}"


def test_install_script_rejects_unknown_options():
    out = _run_script("--bogus")
    assert out.returncode == 2 and "unknown option '--bogus'" in out.stderr


def test_install_script_never_installs_pypi_smac():
    text = SCRIPT.read_text()
    assert "git+${SMACV2_GIT}" in text and "https://github.com/oxwhirl/smacv2.git" in text
    assert not re.search(r"pip install[^\n]*\bsmac\b(?!v2)", text)


# ---------------------------------------------------------------------------------------------------------------------
# Real StarCraft II (skipped without SC2PATH)
# ---------------------------------------------------------------------------------------------------------------------

needs_sc2 = pytest.mark.skipif(not os.environ.get("SC2PATH"),
                               reason="StarCraft II not found: set SC2PATH or run scripts/install_sc2.sh")


def _random_play(name: str, num_envs: int, max_steps: int) -> list[dict]:
    """Random available actions until every game finished an episode; returns each finished episode's stats."""
    cfg = yaml.safe_load((CONF / f"{name}.yaml").read_text())
    env = make_env(cfg, num_envs=num_envs)
    gen = torch.Generator().manual_seed(0)
    episodes = []
    try:
        out = env.reset(seed=0)
        check_step(out, num_envs, env.spec)
        seen = torch.zeros(num_envs, dtype=torch.bool)
        for _ in range(max_steps):
            acts = random_available(out.avail_actions, gen)
            out = env.step(acts)
            check_step(out, num_envs, env.spec)
            assert torch.equal(out.obs[~out.alive], torch.zeros_like(out.obs[~out.alive]))
            for b in out.done.nonzero().flatten().tolist():
                episodes.append({k: float(v[b]) for k, v in out.episode.items()}
                                | {"terminated": bool(out.terminated[b]), "truncated": bool(out.truncated[b])})
            seen |= out.done
            if seen.all():
                break
        assert seen.all(), f"some game never finished within {max_steps} steps"
        limit = env.spec.episode_limit
    finally:
        env.close()
    for ep in episodes:
        assert ep["terminated"] != ep["truncated"] and 1 <= ep["length"] <= limit
        if ep["truncated"]:
            assert ep["length"] == limit and ep["won"] == 0.0
        if ep["won"]:
            assert ep["terminated"]
    return episodes


@pytest.mark.sc2
@pytest.mark.slow
@needs_sc2
def test_sc2_protoss_5_vs_5_random_play():
    episodes = _random_play("smacv2_protoss_5_vs_5", num_envs=2, max_steps=450)
    assert all(ep["return"] >= 0.0 for ep in episodes), "smacv2's default reward is only positive"


@pytest.mark.sc2
@pytest.mark.slow
@needs_sc2
def test_sc2_classic_3m_random_play():
    _random_play("smacv2_3m", num_envs=1, max_steps=130)
