"""Parity of our SMAX adapter (envs.registry.make_env with conf/env/smax_3m.yaml) with jaxmarl's own env, step by
step over whole trajectories: random available actions (battles lost), a scripted attacker (battles won and lost)
and a time-limit end.

The reference is jaxmarl's HeuristicEnemySMAX built exactly as the adapter builds it (scenario, max_steps,
enemy_shoots, attack_mode from the yaml), stepped one battle at a time with its own ``step_env`` and ``reset`` under
the adapter's documented key schedule (envs/smax.py). Everything the adapter returns is recomputed here from
jaxmarl's outputs alone: obs, world state, available actions, alive, per-ally rewards, terminated / truncated (from
the unit_alive flags and the step counter), won (all enemies dead, an ally alive), final_obs / final_state /
final_alive, the episode return (sum over time of the mean reward over allies) and length, and the reset that
follows an end. A dead ally must look in jaxmarl itself as the adapter shows it (zero observation, only action 4).

Shape letters: B envs, N allies, O obs width, S world-state width, A actions per ally.
"""
import contextlib
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml

from envs import smax
from envs.core import random_available
from envs.registry import make_env

with contextlib.suppress(ImportError):
    smax.import_jaxmarl()  # jaxmarl's import prints and resets sys.stdout; this contains both
jaxmarl = pytest.importorskip("jaxmarl")
jax = pytest.importorskip("jax")
from jaxmarl.environments.smax import map_name_to_scenario  # noqa: E402

CFG = yaml.safe_load((Path(__file__).resolve().parent.parent / "conf" / "env" / "smax_3m.yaml").read_text())
B = 4
STOP, RIGHT, FIRST_ATTACK = 4, 1, 5  # SMAX's discrete ally actions: 0-3 move (1: +x, toward the enemy), 4 stop
ATOL = 1e-6
WIN_BONUS = 1.0  # SMAX's won_battle_bonus (jaxmarl 0.2.0 default)


@pytest.fixture(scope="module")
def env():
    e = make_env(CFG, num_envs=B)
    yield e
    e.close()


@pytest.fixture(scope="module")
def ref():
    """jaxmarl's env with the settings the adapter passes, and its jitted step_env / reset / get_avail_actions."""
    r = jaxmarl.make("HeuristicEnemySMAX", scenario=map_name_to_scenario(CFG["scenario"]),
                     max_steps=CFG["episode_limit"], enemy_shoots=CFG["enemy_shoots"],
                     attack_mode=CFG["attack_mode"])
    return r, jax.jit(r.step_env), jax.jit(r.reset), jax.jit(r.get_avail_actions)


def strong(tree):
    """The pytree without weakly typed leaves (jaxmarl's reset makes some), so step_env compiles once."""
    return jax.tree.map(lambda x: x.astype(x.dtype), tree)


@dataclass
class Expected:
    """One env's fields as jaxmarl gives them: obs [N,O], state [S], avail [N,A] bool, alive [N] bool."""

    obs: np.ndarray
    state: np.ndarray
    avail: np.ndarray
    alive: np.ndarray


class Reference:
    """B jaxmarl battles stepped one at a time with the adapter's key schedule; episode bookkeeping done here."""

    def __init__(self, ref, seed: int):
        self.env, self.step_env, self.reset_env, self.avail_fn = ref
        self.n = self.env.num_allies
        self.limit = CFG["episode_limit"]
        self.key, k = jax.random.split(jax.random.PRNGKey(seed))
        self.states, self.views = [], []
        for kb in jax.random.split(k, B):
            obs, state = self.reset_env(kb)
            self.states.append(strong(state))
            self.views.append(self.view(obs, state))
        self.ep_return, self.ep_length = np.zeros(B), np.zeros(B)

    def view(self, obs, state) -> Expected:
        avail = self.avail_fn(state)
        return Expected(np.stack([np.asarray(obs[a]) for a in self.env.agents]), np.asarray(obs["world_state"]),
                        np.stack([np.asarray(avail[a]) for a in self.env.agents]).astype(bool),
                        np.asarray(state.state.unit_alive[:self.n]))

    def step(self, actions: torch.Tensor) -> list[dict]:
        """Step every battle. Per env a dict: final (Expected, the step's own outcome), next (Expected, after our
        reset where it ended), reward [N], terminated, truncated, won, draw, jaxmarl_done (jaxmarl's own flag),
        step_counter (jaxmarl's after the step), and ret / length where the episode ended."""
        self.key, k_step, k_reset = jax.random.split(self.key, 3)
        step_keys, reset_keys = jax.random.split(k_step, B), jax.random.split(k_reset, B)
        results = []
        for b in range(B):
            act = {a: jax.numpy.int32(int(actions[b, i])) for i, a in enumerate(self.env.agents)}
            obs, state, rewards, dones, _ = self.step_env(step_keys[b], self.states[b], act)
            final = self.view(obs, state)
            reward = np.array([float(rewards[a]) for a in self.env.agents])
            unit_alive = np.asarray(state.state.unit_alive)
            allies_out, enemies_out = not unit_alive[:self.n].any(), not unit_alive[self.n:].any()
            terminated = allies_out or enemies_out
            truncated = int(state.state.step) >= self.limit and not terminated
            self.ep_return[b] += reward.mean()
            self.ep_length[b] += 1
            r = dict(final=final, reward=reward, terminated=terminated, truncated=truncated,
                     won=enemies_out and not allies_out, draw=enemies_out and allies_out,
                     jaxmarl_done=bool(dones["__all__"]), step_counter=int(state.state.step))
            if terminated or truncated:
                r.update(ret=self.ep_return[b], length=self.ep_length[b])
                self.ep_return[b], self.ep_length[b] = 0.0, 0.0
                obs, state = self.reset_env(reset_keys[b])
            self.states[b] = strong(state)
            self.views[b] = r["next"] = self.view(obs, state)
            results.append(r)
        return results


def assert_view(got_obs, got_state, got_alive, want: Expected, got_avail=None) -> None:
    np.testing.assert_allclose(got_obs.numpy(), want.obs, atol=ATOL, rtol=0)
    np.testing.assert_allclose(got_state.numpy(), want.state, atol=ATOL, rtol=0)
    np.testing.assert_array_equal(got_alive.numpy(), want.alive)
    if got_avail is not None:
        np.testing.assert_array_equal(got_avail.numpy(), want.avail)


def assert_step_matches(out, expected: list[dict], A: int) -> list[dict]:
    """Every field of the adapter's Step against the reference; returns the episodes that ended (dicts)."""
    ended = []
    for b, e in enumerate(expected):
        np.testing.assert_allclose(out.reward[b].numpy(), e["reward"], atol=ATOL, rtol=0)
        assert bool(out.terminated[b]) == e["terminated"] and bool(out.truncated[b]) == e["truncated"], b
        assert_view(out.final_obs[b], out.final_state[b], out.final_alive[b], e["final"])
        assert_view(out.obs[b], out.state[b], out.alive[b], e["next"], out.avail_actions[b])
        assert torch.equal(out.active[b], out.alive[b])
        # jaxmarl itself shows a dead ally as the adapter does: zero observation, only stop available
        dead = ~e["final"].alive
        assert (e["final"].obs[dead] == 0).all() and (e["final"].avail[dead] == np.eye(A, dtype=bool)[STOP]).all()
        # jaxmarl's own done flag: the same ends, except that its time limit fires one step later (its counter is
        # tested before it counts the step): here never before step episode_limit + 1
        if e["step_counter"] <= CFG["episode_limit"]:
            assert e["jaxmarl_done"] == e["terminated"], b
        if e["terminated"] or e["truncated"]:
            assert bool(out.episode["won"][b]) == e["won"], b
            # JaxMARL's SMAXLogWrapper counts a win as a last reward >= the win bonus: the same episodes
            assert e["won"] == (e["reward"][0] >= WIN_BONUS), b
            assert out.episode["length"][b].item() == e["length"], b
            np.testing.assert_allclose(out.episode["return"][b].item(), e["ret"], atol=1e-5, rtol=0)
            ended.append(e)
        else:
            assert torch.equal(out.final_obs[b], out.obs[b]) and out.episode["length"][b].item() == 0.0
    return ended


def check_reset(out, reference: Reference) -> None:
    for b in range(B):
        assert_view(out.obs[b], out.state[b], out.alive[b], reference.views[b], out.avail_actions[b])


def scripted_attack(avail: torch.Tensor) -> torch.Tensor:
    """[B,N]: the first available attack, else move toward the enemy side; a dead ally stops (its only action)."""
    attack = avail[..., FIRST_ATTACK:]
    act = torch.where(attack.any(-1), attack.float().argmax(-1) + FIRST_ATTACK, torch.full(attack.shape[:-1], RIGHT))
    return torch.where(avail[..., RIGHT], act, torch.full_like(act, STOP))


def test_random_actions_match_jaxmarl(env, ref):
    """120 steps of random available actions: every field equal; battles end (all lost), auto-resets equal."""
    out, reference = env.reset(seed=11), Reference(ref, seed=11)
    check_reset(out, reference)
    gen = torch.Generator().manual_seed(11)
    ended = []
    for _ in range(120):
        actions = random_available(out.avail_actions, gen)
        out = env.step(actions)
        ended += assert_step_matches(out, reference.step(actions), env.spec.n_actions)
    assert len(ended) >= 10, f"only {len(ended)} battles ended"
    assert all(e["terminated"] for e in ended)


def test_scripted_attacker_wins_and_loses_like_jaxmarl(env, ref):
    """150 steps of a scripted attacker: every field equal, both wins and losses; a win returns exactly 2 (every
    enemy's health, normalised and averaged over enemies, sums to 1, plus the win bonus 1), a draw (both sides wiped
    out in the same step: terminated, no bonus) exactly 1, a loss less than 1."""
    out, reference = env.reset(seed=12), Reference(ref, seed=12)
    check_reset(out, reference)
    ended = []
    for _ in range(150):
        actions = scripted_attack(out.avail_actions)
        out = env.step(actions)
        ended += assert_step_matches(out, reference.step(actions), env.spec.n_actions)
    wins = [e for e in ended if e["won"]]
    draws = [e for e in ended if e["draw"]]
    losses = [e for e in ended if not e["won"] and not e["draw"]]
    assert len(wins) >= 5 and len(losses) >= 5, f"{len(wins)} wins, {len(losses)} losses"
    np.testing.assert_allclose([e["ret"] for e in wins], 2.0, atol=1e-5)
    np.testing.assert_allclose([e["ret"] for e in draws], 1.0, atol=1e-5)
    assert max(e["ret"] for e in losses) < 1.0


def test_time_limit_matches_jaxmarl(env, ref):
    """Two battles moved to step 97 in both envs, allies standing still: those two are truncated after 3 more steps
    (not terminated, not won, final_obs = jaxmarl's last observation) while the other two play on. jaxmarl's own
    done flag is still False there: stepped on without a reset, it fires one step later (step counter 101)."""
    out, reference = env.reset(seed=13), Reference(ref, seed=13)
    late = CFG["episode_limit"] - 3
    batched = env.jax_state
    env.jax_state = batched.replace(state=batched.state.replace(step=batched.state.step.at[:2].set(late)))
    for b in range(2):
        s = reference.states[b]
        reference.states[b] = strong(s.replace(state=s.state.replace(step=s.state.step * 0 + late)))
    start = reference.states[0]
    stop = torch.full((B, env.spec.n_agents), STOP)
    for _ in range(3):
        out = env.step(stop)
        expected = reference.step(stop)
        ended = assert_step_matches(out, expected, env.spec.n_actions)
    assert [bool(x) for x in out.truncated] == [True, True, False, False] and not out.terminated.any()
    assert len(ended) == 2 and all(e["length"] == 3 and not e["won"] for e in ended)
    assert not any(e["jaxmarl_done"] for e in expected)

    _, step_env, _, _ = ref
    noop = {a: jax.numpy.int32(STOP) for a in ref[0].agents}
    state, done_at = start, []
    for t in range(4):
        _, state, _, dones, _ = step_env(jax.random.PRNGKey(t), state, noop)
        state = strong(state)
        done_at.append((int(state.state.step), bool(dones["__all__"])))
    assert done_at == [(98, False), (99, False), (100, False), (101, True)]
