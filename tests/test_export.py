"""envs/export.py: the PettingZoo ParallelEnv exports pass PettingZoo's own API test and play exactly the batched
env's episodes."""
import warnings

import gymnasium
import numpy as np
import pytest
import torch
from pettingzoo.test import parallel_api_test

from envs import export
from envs.export import PredatorCapturePreyParallelEnv, PredatorPreyParallelEnv
from envs.core import random_available
from envs.predator_prey import DOWN, RIGHT, STAY, UP, PredatorCapturePrey, PredatorPrey

PAIRS = [(PredatorPreyParallelEnv, PredatorPrey), (PredatorCapturePreyParallelEnv, PredatorCapturePrey)]
IDS = ["pp", "pcp"]


def test_all_lists_the_exports_and_each_builds_without_arguments():
    assert sorted(export.__all__) == ["PredatorCapturePreyParallelEnv", "PredatorPreyParallelEnv"]
    for name in export.__all__:
        env = getattr(export, name)()
        assert env.possible_agents and env.agents == []


@pytest.mark.parametrize("cls", [PredatorPreyParallelEnv, PredatorCapturePreyParallelEnv], ids=IDS)
def test_parallel_api_test_passes_without_warnings(cls, capsys):
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        parallel_api_test(cls(), num_cycles=100)
    assert "Passed Parallel API test" in capsys.readouterr().out


def test_spaces_are_each_agents_own_and_cached():
    env = PredatorCapturePreyParallelEnv()
    assert env.possible_agents == ["predator_0", "predator_1", "capture_0"]
    assert env.observation_space("predator_0").shape == (261,)
    assert env.observation_space("capture_0").shape == (25,)
    assert env.observation_space("predator_0").dtype == np.float32
    assert env.action_space("predator_1") == gymnasium.spaces.Discrete(6)
    for agent in env.possible_agents:
        assert env.observation_space(agent) is env.observation_space(agent)
        assert env.action_space(agent) is env.action_space(agent)
    # a wrapper's spaces are its own: seeding them leaves the batched env's spec alone
    assert env.action_space("capture_0") is not env.env.spec.action_spaces["capture_0"]
    obs, infos = env.reset(seed=0)
    for agent in env.agents:
        assert env.observation_space(agent).contains(obs[agent])
    assert infos["predator_0"]["action_mask"].tolist() == [1, 1, 1, 1, 1, 0]
    assert infos["capture_0"]["action_mask"].tolist() == [1, 1, 1, 1, 1, 1]
    assert env.state().shape == (783,)


def test_keyword_arguments_reach_the_batched_env():
    env = PredatorPreyParallelEnv(dim=10, n_predators=5, vision=1, episode_limit=40)
    assert env.possible_agents == [f"predator_{i}" for i in range(5)]
    assert env.observation_space("predator_4").shape == (9 * 104,)
    assert env.env.episode_limit == 40


@pytest.mark.parametrize("export_cls, batched_cls", PAIRS, ids=IDS)
def test_trajectory_matches_the_batched_env(export_cls, batched_cls):
    par = export_cls()
    vec = batched_cls(num_envs=1)
    names = par.possible_agents
    gen = torch.Generator().manual_seed(3)
    obs, infos = par.reset(seed=11)
    out = vec.reset(seed=11)
    episodes = 0
    for _ in range(70):
        if not par.agents:
            obs, infos = par.reset()
        for i, a in enumerate(names):
            width = par.observation_space(a).shape[0]
            assert np.array_equal(obs[a], out.obs[0, i, :width].numpy()), a
            assert infos[a]["action_mask"].tolist() == out.avail_actions[0, i].int().tolist()
        actions = random_available(out.avail_actions, gen)
        obs, rewards, terms, truncs, infos = par.step({a: int(actions[0, i]) for i, a in enumerate(names)})
        out = vec.step(actions)
        assert [rewards[a] for a in names] == out.reward[0].tolist()
        assert all(terms[a] == bool(out.terminated[0]) and truncs[a] == bool(out.truncated[0]) for a in names)
        if bool(out.done[0]):
            episodes += 1
            assert par.agents == []
            for i, a in enumerate(names):
                width = par.observation_space(a).shape[0]
                assert np.array_equal(obs[a], out.final_obs[0, i, :width].numpy()), a
            assert infos[names[0]]["episode"] == {k: float(v[0]) for k, v in out.episode.items()}
        else:
            assert par.agents == names
    assert episodes >= 3


def test_agents_leave_at_the_end_and_step_then_needs_reset():
    env = PredatorPreyParallelEnv(episode_limit=2)
    env.reset(seed=0)
    stay = dict.fromkeys(env.possible_agents, STAY)
    _, _, terms, truncs, _ = env.step(stay)
    assert env.agents == env.possible_agents and not any(terms.values()) and not any(truncs.values())
    _, _, terms, truncs, infos = env.step(stay)
    assert env.agents == []
    assert truncs == dict.fromkeys(env.possible_agents, True) and not any(terms.values())
    assert infos["predator_0"]["episode"]["length"] == 2.0
    with pytest.raises(RuntimeError, match="call reset"):
        env.step(stay)
    env.reset()
    assert env.agents == env.possible_agents


def test_success_terminates_every_agent():
    env = PredatorPreyParallelEnv()
    env.reset(seed=0)
    env.env.place(predators=[[1, 2], [2, 1], [3, 2]], prey=[2, 2])
    _, rewards, terms, truncs, infos = env.step({"predator_0": DOWN, "predator_1": RIGHT, "predator_2": UP})
    assert terms == dict.fromkeys(env.possible_agents, True) and not any(truncs.values())
    assert rewards == dict.fromkeys(env.possible_agents, 0.0)
    assert infos["predator_2"]["episode"] == {"return": 0.0, "length": 1.0, "success": 1.0}


def test_actions_must_name_exactly_the_live_agents():
    env = PredatorPreyParallelEnv()
    env.reset(seed=0)
    with pytest.raises(ValueError, match="need exactly"):
        env.step({"predator_0": STAY, "predator_1": STAY})
    with pytest.raises(ValueError, match="need exactly"):
        env.step({"predator_0": STAY, "predator_1": STAY, "predator_2": STAY, "prey": STAY})


def test_render_ansi_and_none():
    env = PredatorCapturePreyParallelEnv(render_mode="ansi")
    env.reset(seed=0)
    env.env.place(predators=[[0, 0], [2, 2]], prey=[2, 2], capture=[[4, 1]])
    assert env.render() == "P....\n.....\n..*..\n.....\n.C..."
    quiet = PredatorPreyParallelEnv()
    quiet.reset(seed=0)
    with pytest.warns(UserWarning, match="render_mode"):
        assert quiet.render() is None
    with pytest.raises(ValueError, match="render_mode='human'"):
        PredatorPreyParallelEnv(render_mode="human")
