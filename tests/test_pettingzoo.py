"""PettingZooVecEnv (envs/pettingzoo.py): exact agreement with the raw PettingZoo envs, padding, masks, dead agents,
auto-reset, worker mode, errors, and the MPE configs."""
from __future__ import annotations

import warnings
from pathlib import Path

import gymnasium
import numpy as np
import pytest
import torch
from mpe2 import simple_speaker_listener_v4, simple_spread_v3
from omegaconf import OmegaConf
from core_utils import check_step
from pettingzoo.utils.env import ParallelEnv

from envs.core import STEP_TENSORS, random_available
from envs.pettingzoo import PettingZooVecEnv
from envs.registry import make_env
from envs.workers import worker_chunks

CONF = Path(__file__).resolve().parents[1] / "conf" / "env"
SPREAD = "mpe2.simple_spread_v3:parallel_env"
LISTENER = "mpe2.simple_speaker_listener_v4:parallel_env"
MPE = {"continuous_actions": False, "max_cycles": 25}
LEAVING = f"{__name__}:LeavingEnv"


class LeavingEnv(ParallelEnv):
    """A tiny real ParallelEnv whose agents leave early.

    3 agents, 3 actions each. agent_2 terminates after `leave_at` steps, the others after `end_at` steps.
    Observation of agent i: [i, t + offset] (offset drawn from the reset seed); reward of agent i: action + i.
    agent_0 may not use action 2: its mask [1, 1, 0] comes in the info, or with mask_in_obs in an observation dict
    {"observation", "action_mask"}. With fail_at, step number fail_at raises ValueError. No state().
    """

    metadata = {"name": "leaving_v0"}

    def __init__(self, leave_at: int = 2, end_at: int = 4, mask_in_obs: bool = False, fail_at: int | None = None):
        self.possible_agents = ["agent_0", "agent_1", "agent_2"]
        self.agents: list[str] = []
        self.leave_at, self.end_at, self.mask_in_obs, self.fail_at = leave_at, end_at, mask_in_obs, fail_at
        box = gymnasium.spaces.Box(-1e6, 1e6, (2,), np.float32)
        space = (gymnasium.spaces.Dict({"observation": box,
                                        "action_mask": gymnasium.spaces.Box(0, 1, (3,), np.int8)})
                 if mask_in_obs else box)
        self.obs_spaces = {a: space for a in self.possible_agents}
        self.act_spaces = {a: gymnasium.spaces.Discrete(3) for a in self.possible_agents}
        self.rng = np.random.default_rng()
        self.t, self.offset = 0, 0

    def observation_space(self, agent):
        return self.obs_spaces[agent]

    def action_space(self, agent):
        return self.act_spaces[agent]

    def mask(self, agent: str) -> np.ndarray:
        return np.array([1, 1, 0] if agent == "agent_0" else [1, 1, 1], dtype=np.int8)

    def observe(self, agent: str):
        obs = np.array([self.possible_agents.index(agent), self.t + self.offset], dtype=np.float32)
        return {"observation": obs, "action_mask": self.mask(agent)} if self.mask_in_obs else obs

    def info(self, agent: str) -> dict:
        return {} if self.mask_in_obs else {"action_mask": self.mask(agent)}

    def reset(self, seed=None, options=None):
        if seed is not None:
            self.rng = np.random.default_rng(seed)
        self.t, self.offset = 0, int(self.rng.integers(0, 100))
        self.agents = list(self.possible_agents)
        return {a: self.observe(a) for a in self.agents}, {a: self.info(a) for a in self.agents}

    def step(self, actions):
        if set(actions) != set(self.agents):
            raise ValueError(f"actions for {sorted(actions)}, live agents {self.agents}")
        if self.fail_at == self.t + 1:
            raise ValueError(f"boom at step {self.t + 1}")
        self.t += 1
        rewards = {a: float(actions[a]) + self.possible_agents.index(a) for a in self.agents}
        terms = {a: self.t >= self.end_at or (a == "agent_2" and self.t >= self.leave_at) for a in self.agents}
        truncs = {a: False for a in self.agents}
        obs = {a: self.observe(a) for a in self.agents}
        infos = {a: self.info(a) for a in self.agents}
        self.agents = [a for a in self.agents if not terms[a]]
        return obs, rewards, terms, truncs, infos


def stacked(d: dict, agents) -> np.ndarray:
    return np.stack([np.asarray(d[a], dtype=np.float32) for a in agents])


# ---------------------------------------------------------------------------------------------------------------------
# Exact agreement with the raw env
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("B", [1, 3])
def test_simple_spread_equals_raw_env_step_by_step(B):
    """Same seed (copy b: seed + b) and actions: obs, state, rewards, ends and final_obs equal the env's own, across
    the 25-step truncation and into the next (unseeded) episode."""
    env = PettingZooVecEnv(B, "cpu", SPREAD, {**MPE, "N": 3})
    raws = [simple_spread_v3.parallel_env(**MPE, N=3) for _ in range(B)]
    agents = raws[0].possible_agents
    step = env.reset(seed=11)
    raw_obs = [r.reset(seed=11 + b)[0] for b, r in enumerate(raws)]
    g = torch.Generator().manual_seed(0)
    returns = np.zeros(B)
    for t in range(1, 31):
        check_step(step, B, env.spec)
        for b in range(B):
            assert np.array_equal(step.obs[b].numpy(), stacked(raw_obs[b], agents))
            assert np.array_equal(step.state[b].numpy(), raws[b].state())
        actions = random_available(step.avail_actions, g)
        step = env.step(actions)
        for b, raw in enumerate(raws):
            obs, rew, term, trunc, _ = raw.step({a: int(actions[b, i]) for i, a in enumerate(agents)})
            assert np.array_equal(step.reward[b].numpy(), stacked(rew, agents))
            returns[b] += float(np.float32([rew[a] for a in agents]).mean())
            ended = t == 25
            assert bool(step.truncated[b]) == ended and not bool(step.terminated[b])
            assert ended == (not raw.agents) and ended == all(trunc.values())
            assert np.array_equal(step.final_obs[b].numpy(), stacked(obs, agents))
            if ended:
                assert np.array_equal(step.final_state[b].numpy(), raw.state())
                assert step.episode["length"][b].item() == 25
                assert step.episode["return"][b].item() == pytest.approx(returns[b], rel=1e-6)
                obs = raw.reset()[0]
            raw_obs[b] = obs
        assert step.alive.all() and step.active.all() and step.final_alive.all()


def test_simple_spread_spec():
    env = PettingZooVecEnv(2, "cpu", SPREAD, MPE)
    s = env.spec
    assert (s.n_agents, s.obs_dim, s.state_dim, s.n_actions, s.episode_limit) == (3, 18, 54, 5, 25)
    assert s.agent_names == ("agent_0", "agent_1", "agent_2") and s.task_metrics == ()
    assert env.reset(seed=0).avail_actions.all()


def test_speaker_listener_padding_and_masks():
    """Speaker obs 3 / 3 actions, listener obs 11 / 5 actions: obs padded to 11 + a 2-way type one-hot; the
    speaker's actions 3 and 4 are unavailable and rejected."""
    env = PettingZooVecEnv(2, "cpu", LISTENER, MPE)
    assert (env.spec.n_agents, env.spec.obs_dim, env.spec.n_actions, env.spec.state_dim) == (2, 13, 5, 14)
    step = env.reset(seed=4)
    raw = simple_speaker_listener_v4.parallel_env(**MPE)
    obs, _ = raw.reset(seed=5)  # copy 1
    speaker, listener = step.obs[1].numpy()
    assert np.array_equal(speaker[:3], obs["speaker_0"]) and not speaker[3:11].any()
    assert speaker[11:].tolist() == [1.0, 0.0]
    assert np.array_equal(listener[:11], obs["listener_0"]) and listener[11:].tolist() == [0.0, 1.0]
    assert step.avail_actions[:, 0].tolist() == [[True, True, True, False, False]] * 2
    assert step.avail_actions[:, 1].all()
    step = env.step(torch.tensor([[2, 4], [0, 3]]))
    obs, rew, *_ = raw.step({"speaker_0": 0, "listener_0": 3})
    assert np.array_equal(step.obs[1, 1, :11].numpy(), obs["listener_0"])
    assert np.array_equal(step.reward[1].numpy(), stacked(rew, ["speaker_0", "listener_0"]))
    with pytest.raises(ValueError, match=r"^step\(\): action 3 of agent 'speaker_0' in env 1 is not available; "
                                         r"available: \[0, 1, 2\]$"):
        env.step(torch.tensor([[0, 0], [3, 0]]))


# ---------------------------------------------------------------------------------------------------------------------
# Episode ends
# ---------------------------------------------------------------------------------------------------------------------

def test_own_episode_limit_truncates_and_resets():
    """episode_limit=10 below the env's 25: truncated (not terminated) at step 10, final_obs = the env's step-10
    observation, then the copy continues with the env's next (unseeded) episode."""
    env = PettingZooVecEnv(1, "cpu", SPREAD, MPE, episode_limit=10)
    assert env.spec.episode_limit == 10
    raw = simple_spread_v3.parallel_env(**MPE)
    step, (obs, _) = env.reset(seed=2), raw.reset(seed=2)
    for t in range(1, 11):
        step = env.step(torch.full((1, 3), 1))
        obs, *_ = raw.step({a: 1 for a in raw.agents})
        assert step.truncated.tolist() == [t == 10] and step.terminated.tolist() == [False]
    assert np.array_equal(step.final_obs[0].numpy(), stacked(obs, raw.possible_agents))
    assert step.episode["length"].tolist() == [10.0]
    assert np.array_equal(step.obs[0].numpy(), stacked(raw.reset()[0], raw.possible_agents))


def test_limit_above_env_limit_is_capped():
    assert PettingZooVecEnv(1, "cpu", SPREAD, MPE, episode_limit=40).spec.episode_limit == 25


@pytest.mark.parametrize("mask_in_obs", [False, True])
def test_dead_agent_then_termination(mask_in_obs):
    """agent_2 leaves after step 2: dead (zero obs, only action 0, not sent to the env); the episode terminates at
    step 4 when the last agents terminate, with final_alive [1, 1, 0]; state = concatenated obs."""
    B = 2
    env = PettingZooVecEnv(B, "cpu", LEAVING, {"mask_in_obs": mask_in_obs}, episode_limit=10)
    assert (env.spec.obs_dim, env.spec.state_dim, env.spec.n_actions, env.spec.episode_limit) == (2, 6, 3, 10)
    offsets = [int(np.random.default_rng(7 + b).integers(0, 100)) for b in range(B)]
    step = env.reset(seed=7)
    assert step.obs[:, :, 1].tolist() == [[o] * 3 for o in offsets]
    assert step.avail_actions[0].tolist() == [[True, True, False], [True, True, True], [True, True, True]]
    rewards = []
    for t, acts in enumerate([[1, 1, 1], [0, 2, 1], [1, 1, 0], [0, 0, 0]], start=1):
        step = env.step(torch.tensor([acts] * B))
        check_step(step, B, env.spec)
        rewards.append([a + i if (i < 2 or t <= 2) else 0.0 for i, a in enumerate(acts)])
        assert step.reward.tolist() == [rewards[-1]] * B
        if t in (2, 3):
            assert step.alive.tolist() == [[True, True, False]] * B and torch.equal(step.active, step.alive)
            assert step.obs[:, 2].eq(0).all() and step.obs[:, :2, 1].tolist() == [[t + o] * 2 for o in offsets]
            assert step.avail_actions[:, 2].tolist() == [[True, False, False]] * B
            assert torch.equal(step.state, step.obs.reshape(B, 6)) and not step.done.any()
    assert step.terminated.all() and not step.truncated.any()
    assert step.final_alive.tolist() == [[True, True, False]] * B
    assert step.final_obs[:, :2, 1].tolist() == [[4 + o] * 2 for o in offsets] and step.final_obs[:, 2].eq(0).all()
    assert torch.equal(step.final_state, step.final_obs.reshape(B, 6))
    assert step.episode["length"].tolist() == [4.0] * B
    expected = sum(np.float32(r).mean() for r in rewards)  # 2 + 2 + 1 + 1/3
    assert step.episode["return"].tolist() == pytest.approx([expected] * B) and expected == pytest.approx(16 / 3)
    assert step.alive.all() and step.obs[:, :, 1].ne(step.final_obs[:, :, 1]).any()  # next episode started


def test_dead_agents_then_own_limit_is_truncation():
    env = PettingZooVecEnv(1, "cpu", LEAVING, {"end_at": 50}, episode_limit=3)
    env.reset(seed=0)
    for t in range(3):
        step = env.step(torch.tensor([[1, 1, 0]]))
    assert step.truncated.tolist() == [True] and step.terminated.tolist() == [False]
    assert step.final_alive.tolist() == [[True, True, False]] and step.episode["length"].tolist() == [3.0]


def test_leaving_env_is_a_valid_parallel_env():
    with warnings.catch_warnings():  # pettingzoo.test imports a classic env through a deprecated path
        warnings.simplefilter("ignore", DeprecationWarning)
        from pettingzoo.test import parallel_api_test
    parallel_api_test(LeavingEnv(), num_cycles=10)


# ---------------------------------------------------------------------------------------------------------------------
# Worker processes
# ---------------------------------------------------------------------------------------------------------------------

def test_worker_chunks():
    assert worker_chunks(5, 2) == [(0, 3), (3, 2)] and worker_chunks(4, 4) == [(0, 1), (1, 1), (2, 1), (3, 1)]


@pytest.mark.parametrize("factory,kwargs", [(LISTENER, MPE), (LEAVING, {"leave_at": 3, "end_at": 7})],
                         ids=["speaker_listener", "leaving"])
def test_workers_equal_in_process(factory, kwargs):
    """B=4 over 2 workers gives exactly the Steps of the in-process copies, seed for seed, across episode ends."""
    local = PettingZooVecEnv(4, "cpu", factory, kwargs, episode_limit=25)
    pooled = PettingZooVecEnv(4, "cpu", factory, kwargs, workers=2, episode_limit=25)
    try:
        a, b = local.reset(seed=3), pooled.reset(seed=3)
        g = torch.Generator().manual_seed(1)
        ends = 0
        for _ in range(30):
            for name in STEP_TENSORS:
                assert torch.equal(getattr(a, name), getattr(b, name)), name
            assert a.episode.keys() == b.episode.keys()
            assert all(torch.equal(a.episode[k], b.episode[k]) for k in a.episode)
            ends += int(a.done.sum())
            actions = random_available(a.avail_actions, g)
            a, b = local.step(actions), pooled.step(actions)
        assert ends >= 4  # every copy finished at least one episode
    finally:
        pooled.close()


def test_main_process_steps_the_last_chunk():
    """workers=W: W-1 worker processes step the first chunks, this process the last one; uneven chunks (B=5, W=3)
    still give exactly the in-process Steps; close() stops every worker; workers=1 is in-process."""
    local = PettingZooVecEnv(5, "cpu", LISTENER, MPE, episode_limit=25)
    pooled = PettingZooVecEnv(5, "cpu", LISTENER, MPE, workers=3, episode_limit=25)
    try:
        assert [n for _, n in pooled.pool.chunks] == [2, 2] and len(pooled.pool.procs) == 2
        assert pooled.pool.local is not None and (pooled.pool.local.first, len(pooled.pool.local.envs)) == (4, 1)
        a, b = local.reset(seed=5), pooled.reset(seed=5)
        g = torch.Generator().manual_seed(2)
        for _ in range(30):
            for name in STEP_TENSORS:
                assert torch.equal(getattr(a, name), getattr(b, name)), name
            assert all(torch.equal(a.episode[k], b.episode[k]) for k in a.episode)
            actions = random_available(a.avail_actions, g)
            a, b = local.step(actions), pooled.step(actions)
        procs = list(pooled.pool.procs)
    finally:
        pooled.close()
        local.close()
    assert not any(p.is_alive() for p in procs)
    single = PettingZooVecEnv(2, "cpu", SPREAD, MPE, workers=1)
    try:
        assert single.pool is None and single.group is not None
    finally:
        single.close()


def test_worker_error_reaches_main_process():
    env = PettingZooVecEnv(4, "cpu", LEAVING, {"fail_at": 2}, workers=2, episode_limit=10)
    try:
        env.reset(seed=0)
        env.step(torch.zeros(4, 3, dtype=torch.long))
        with pytest.raises(RuntimeError, match=r"^PettingZoo worker 0 \(envs 0\.\.1\) failed: "
                                               r"step\(\): ValueError: boom at step 2\n"):
            env.step(torch.zeros(4, 3, dtype=torch.long))
    finally:
        env.close()
    with pytest.raises(RuntimeError, match="closed"):
        env.reset(seed=0)


# ---------------------------------------------------------------------------------------------------------------------
# Errors
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("factory,message", [
    ("no_such_pkg.mod:make", r"^env\.factory='no_such_pkg\.mod:make': cannot import module 'no_such_pkg\.mod' "
                             r"\(ModuleNotFoundError: No module named 'no_such_pkg'\)$"),
    ("mpe2.simple_spread_v3:nope", r"^env\.factory='mpe2\.simple_spread_v3:nope': module 'mpe2\.simple_spread_v3' "
                                   r"has no attribute 'nope'$"),
    ("mpe2.simple_spread_v3", r"^env\.factory='mpe2\.simple_spread_v3': must be 'package\.module:callable'"),
])
def test_bad_factory(factory, message):
    with pytest.raises(ValueError, match=message):
        PettingZooVecEnv(1, "cpu", factory, MPE)


def test_continuous_actions_rejected():
    with pytest.raises(ValueError, match=r"^env\.factory='mpe2\.simple_spread_v3:parallel_env': agent 'agent_0' has "
                                         r"action space Box\(0\.0, 1\.0, \(5,\), float32\); only Discrete action "
                                         r"spaces are supported \(for MPE pass continuous_actions=False\)$"):
        PettingZooVecEnv(1, "cpu", SPREAD, {"continuous_actions": True})


@pytest.mark.parametrize("workers", [-1, 3])
def test_bad_worker_count(workers):
    with pytest.raises(ValueError, match=rf"^env\.workers={workers}; must be in \[0, num_envs=2\]$"):
        PettingZooVecEnv(2, "cpu", SPREAD, MPE, workers=workers)


def test_other_bad_values():
    with pytest.raises(ValueError, match=r"^env\.kwargs=\{'max_cyles': 25\}: "):
        PettingZooVecEnv(1, "cpu", LISTENER, {"max_cyles": 25})
    with pytest.raises(ValueError, match=r"^env\.episode_limit=None: .* exposes no max_cycles/max_steps"):
        PettingZooVecEnv(1, "cpu", LEAVING)
    with pytest.raises(ValueError, match=r"^env\.episode_limit=0; must be >= 1"):
        PettingZooVecEnv(1, "cpu", SPREAD, MPE, episode_limit=0)
    env = PettingZooVecEnv(2, "cpu", SPREAD, MPE)
    with pytest.raises(RuntimeError, match=r"^step\(\) before reset\(\)"):
        env.step(torch.zeros(2, 3, dtype=torch.long))
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"^step\(\): action 5 of agent 'agent_1' in env 0 is not available"):
        env.step(torch.tensor([[0, 5, 0], [0, 0, 0]]))


# ---------------------------------------------------------------------------------------------------------------------
# The MPE configs
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("name,n_agents,obs_dim,n_actions", [
    ("mpe_simple_spread", 3, 18, 5), ("mpe_simple_reference", 2, 21, 50), ("mpe_simple_speaker_listener", 2, 13, 5)])
def test_mpe_configs(name, n_agents, obs_dim, n_actions):
    """Each config builds through make_env (kwargs as an OmegaConf node): discrete actions, 25 steps, 32 eval
    episodes; built in-process here (workers=0) to keep the test light."""
    cfg = OmegaConf.load(CONF / f"{name}.yaml")
    assert cfg.name == name and cfg.family == "pettingzoo" and cfg.eval_episodes == 32
    assert cfg.episode_limit == 25 and cfg.kwargs.max_cycles == 25 and cfg.kwargs.continuous_actions is False
    assert cfg.workers in (0, 2)
    cfg.workers = 0
    env = make_env(cfg, num_envs=2)
    s = env.spec
    assert (s.n_agents, s.obs_dim, s.n_actions, s.episode_limit) == (n_agents, obs_dim, n_actions, 25)
    check_step(env.reset(seed=0), 2, s)
    env.close()
