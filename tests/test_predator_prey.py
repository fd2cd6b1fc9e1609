"""Exact behaviour of the batched Predator-Prey and Predator-Capture-Prey envs (docs/tasks.md, "Predator-Prey").

Transition tests run at B=1 and B=64: every env of the batch is placed in the same hand-made state and must take
exactly the same transition.
"""
import pytest
import torch
from core_utils import check_step

from envs import predator_prey
from envs.core import random_available
from envs.predator_prey import (
    CAPTURE, DOWN, LEFT, RIGHT, STAY, UP, PredatorCapturePrey, PredatorPrey,
)
from envs.recycled_buffers import RecycledBuffers

BATCHES = [1, 64]
P = -0.05  # the step penalty of an agent not done


def act(B: int, *actions: int) -> torch.Tensor:
    """The same per-agent actions in all B envs: [B,N] long."""
    return torch.tensor([list(actions)] * B)


def rows(t: torch.Tensor) -> list:
    """Env 0's value, after checking that every env of the batch holds the same value."""
    assert bool((t == t[:1]).all()), f"the envs of the batch disagree: {t}"
    return t[0].tolist()


def reference_obs(env, cells, prey: int) -> torch.Tensor:
    """Observations [N,O] of one env written with plain loops from the rules (a check on the table-driven code).

    cells: N (row, col) agent positions (predators first, then capture agents); prey: the prey's cell id.
    """
    dim, v, D = env.dim, env.vision, env.dim * env.dim
    side, width = 2 * v + 1, D + 4
    n_pred = env.n_predators
    out = torch.zeros(len(cells), side * side * width)
    for i, (r0, c0) in enumerate(cells):
        if i >= n_pred:  # capture agent: its own cell id only
            out[i, r0 * dim + c0] = 1.0
            continue
        for w in range(side * side):
            r, c = r0 + w // side - v, c0 + w % side - v
            base = w * width
            if not (0 <= r < dim and 0 <= c < dim):
                out[i, base + D + 1] = 1.0
                continue
            out[i, base + r * dim + c] = 1.0
            out[i, base + D] = sum(1 for j in range(n_pred, len(cells)) if tuple(cells[j]) == (r, c))
            out[i, base + D + 2] = float(prey == r * dim + c)
            out[i, base + D + 3] = sum(1 for j in range(n_pred) if tuple(cells[j]) == (r, c))
    return out


# ------------------------------------------------------------------------------------------------ moves


@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("start, action", [((0, 2), UP), ((2, 4), RIGHT), ((4, 2), DOWN), ((2, 0), LEFT)],
                         ids=["top", "right", "bottom", "left"])
def test_move_into_wall_stays(B, start, action):
    env = PredatorPrey(num_envs=B)
    env.reset(seed=0)
    env.place(predators=[list(start), [2, 2], [3, 3]], prey=[1, 3])
    out = env.step(act(B, action, STAY, STAY))
    assert rows(env.predator_pos) == [list(start), [2, 2], [3, 3]]
    assert rows(out.reward) == pytest.approx([P, P, P])
    assert not out.terminated.any() and not out.truncated.any()


@pytest.mark.parametrize("B", BATCHES)
@pytest.mark.parametrize("action, end", [(UP, [1, 2]), (RIGHT, [2, 3]), (DOWN, [3, 2]), (LEFT, [2, 1]),
                                         (STAY, [2, 2])], ids=["up", "right", "down", "left", "stay"])
def test_each_action_moves_by_its_delta(B, action, end):
    env = PredatorPrey(num_envs=B)
    env.reset(seed=0)
    env.place(predators=[[2, 2], [0, 0], [4, 0]], prey=[4, 4])
    out = env.step(act(B, action, RIGHT, UP))
    assert rows(env.predator_pos) == [end, [0, 1], [3, 0]]
    assert rows(out.reward) == pytest.approx([P, P, P])
    assert rows(env.prey_pos) == [4, 4]  # the prey never moves


@pytest.mark.parametrize("B", BATCHES)
def test_predator_on_prey_stays_inactive_and_unpenalised(B):
    env = PredatorPrey(num_envs=B)
    env.reset(seed=0)
    env.place(predators=[[2, 1], [0, 0], [4, 4]], prey=[2, 2])
    out = env.step(act(B, RIGHT, STAY, STAY))
    assert rows(env.predator_pos)[0] == [2, 2]
    assert rows(out.reward) == pytest.approx([0.0, P, P])
    assert rows(out.active) == [False, True, True]
    assert rows(out.alive) == [True, True, True]
    assert rows(out.avail_actions) == [[False, False, False, False, True]] + [[True] * 5] * 2
    # its next action is ignored: it stays on the prey and earns 0 from then on
    out = env.step(act(B, UP, STAY, STAY))
    assert rows(env.predator_pos)[0] == [2, 2]
    assert rows(out.reward) == pytest.approx([0.0, P, P])
    assert rows(out.active) == [False, True, True]


@pytest.mark.parametrize("B", BATCHES)
def test_rewards_of_one_step(B):
    env = PredatorPrey(num_envs=B)
    env.reset(seed=0)
    env.place(predators=[[1, 2], [2, 3], [0, 0]], prey=[2, 2])
    # predator 0 moves down onto the prey, predator 1 moves right (away), predator 2 moves down
    out = env.step(act(B, DOWN, RIGHT, DOWN))
    assert rows(env.predator_pos) == [[2, 2], [2, 4], [1, 0]]
    assert rows(out.reward) == pytest.approx([0.0, P, P])
    assert out.reward.dtype == torch.float32
    assert not out.terminated.any() and not out.truncated.any()


@pytest.mark.parametrize("B", BATCHES)
def test_all_on_prey_terminates_with_success(B):
    env = PredatorPrey(num_envs=B)
    env.reset(seed=0)
    env.place(predators=[[1, 2], [2, 1], [3, 2]], prey=[2, 2])
    out = env.step(act(B, DOWN, RIGHT, UP))
    check_step(out, B, env.spec)
    assert out.terminated.all() and not out.truncated.any()
    assert rows(out.reward) == pytest.approx([0.0, 0.0, 0.0])
    assert rows(out.episode["success"]) == 1.0
    assert rows(out.episode["length"]) == 1.0
    assert rows(out.episode["return"]) == pytest.approx(0.0)
    # the final observation shows all three predators and the prey in the centre cell (index 4 of the window)
    centre = out.final_obs[:, 0].view(B, 9, 29)[:, 4]
    assert rows(centre[:, 25:]) == [0.0, 0.0, 1.0, 3.0]
    # the env restarted: new episode, nobody done
    assert rows(out.active) == [True, True, True]
    assert rows(env.elapsed) == 0


@pytest.mark.parametrize("B", BATCHES)
def test_truncation_at_the_limit_keeps_the_last_observation(B):
    env = PredatorPrey(num_envs=B, episode_limit=3)
    env.reset(seed=0)
    placed = env.place(predators=[[0, 0], [0, 4], [4, 0]], prey=[4, 4])
    before = placed.obs.clone()
    for t in range(1, 3):
        out = env.step(act(B, STAY, STAY, STAY))
        assert not out.terminated.any() and not out.truncated.any(), f"ended early at step {t}"
        assert torch.equal(out.final_obs, out.obs)
    last_obs = out.obs.clone()
    out = env.step(act(B, STAY, STAY, STAY))
    assert out.truncated.all() and not out.terminated.any()
    assert torch.equal(out.final_obs, last_obs)
    assert torch.equal(out.final_obs, before)  # nobody moved
    assert torch.equal(out.final_state, last_obs.view(B, -1))
    assert rows(out.episode["length"]) == 3.0
    assert rows(out.episode["success"]) == 0.0
    assert rows(out.episode["return"]) == pytest.approx(3 * P)
    assert rows(env.elapsed) == 0
    # the new episode's predators and prey sit on distinct cells
    cells = torch.cat([env.predator_pos, env.prey_pos[:, None]], 1)
    ids = cells[..., 0] * 5 + cells[..., 1]
    assert all(len(set(r)) == 4 for r in ids.tolist())


@pytest.mark.parametrize("B", BATCHES)
def test_success_on_the_last_step_is_terminated_not_truncated(B):
    env = PredatorPrey(num_envs=B, episode_limit=2)
    env.reset(seed=0)
    env.place(predators=[[0, 2], [2, 1], [3, 2]], prey=[2, 2])
    out = env.step(act(B, DOWN, RIGHT, UP))
    assert not out.terminated.any() and not out.truncated.any()
    out = env.step(act(B, DOWN, STAY, STAY))
    assert out.terminated.all() and not out.truncated.any()
    assert rows(out.episode["success"]) == 1.0
    assert rows(out.episode["length"]) == 2.0


@pytest.mark.parametrize("B", BATCHES)
def test_episode_stats_of_a_hand_played_episode(B):
    env = PredatorPrey(num_envs=B)
    env.reset(seed=0)
    env.place(predators=[[2, 1], [0, 2], [4, 2]], prey=[2, 2])
    rewards = []
    for actions in [(RIGHT, DOWN, STAY), (STAY, DOWN, UP), (STAY, STAY, UP)]:
        out = env.step(act(B, *actions))
        rewards.append(rows(out.reward))
    assert rewards == [pytest.approx([0.0, P, P]), pytest.approx([0.0, 0.0, P]), pytest.approx([0.0, 0.0, 0.0])]
    assert out.terminated.all()
    # return = sum over time of the mean reward over agents = (2P + P + 0) / 3
    assert rows(out.episode["return"]) == pytest.approx(P)
    assert rows(out.episode["length"]) == 3.0
    assert rows(out.episode["success"]) == 1.0


# ------------------------------------------------------------------------------------------------ observations


def parse_cells(lines: list[str]) -> list[float]:
    """Window cells written as strings of single digits (25 cell-id values, then capture, outside, prey, pred)."""
    values = []
    for line in lines:
        digits = line.replace(" ", "")
        assert len(digits) == 29, line
        values += [float(ch) for ch in digits]
    return values


def test_observation_of_a_hand_set_state():
    """5x5, vision 1: predator 0 at (0,1), predators 1 and 2 at (1,1), prey at (1,2)."""
    env = PredatorPrey(num_envs=1)
    env.reset(seed=0)
    out = env.place(predators=[[0, 1], [1, 1], [1, 1]], prey=[1, 2])
    #             cell ids 0..24                 capture outside prey predators
    predator_0 = parse_cells([
        "00000 00000 00000 00000 00000  0 1 0 0",  # (-1, 0) outside the grid
        "00000 00000 00000 00000 00000  0 1 0 0",  # (-1, 1) outside
        "00000 00000 00000 00000 00000  0 1 0 0",  # (-1, 2) outside
        "10000 00000 00000 00000 00000  0 0 0 0",  # (0, 0) id 0
        "01000 00000 00000 00000 00000  0 0 0 1",  # (0, 1) id 1: the observer
        "00100 00000 00000 00000 00000  0 0 0 0",  # (0, 2) id 2
        "00000 10000 00000 00000 00000  0 0 0 0",  # (1, 0) id 5
        "00000 01000 00000 00000 00000  0 0 0 2",  # (1, 1) id 6: predators 1 and 2
        "00000 00100 00000 00000 00000  0 0 1 0",  # (1, 2) id 7: the prey
    ])
    predator_1 = parse_cells([
        "10000 00000 00000 00000 00000  0 0 0 0",  # (0, 0) id 0
        "01000 00000 00000 00000 00000  0 0 0 1",  # (0, 1) id 1: predator 0
        "00100 00000 00000 00000 00000  0 0 0 0",  # (0, 2) id 2
        "00000 10000 00000 00000 00000  0 0 0 0",  # (1, 0) id 5
        "00000 01000 00000 00000 00000  0 0 0 2",  # (1, 1) id 6: the observer and predator 2
        "00000 00100 00000 00000 00000  0 0 1 0",  # (1, 2) id 7: the prey
        "00000 00000 10000 00000 00000  0 0 0 0",  # (2, 0) id 10
        "00000 00000 01000 00000 00000  0 0 0 0",  # (2, 1) id 11
        "00000 00000 00100 00000 00000  0 0 0 0",  # (2, 2) id 12
    ])
    assert len(predator_0) == 261
    assert out.obs[0, 0].tolist() == predator_0
    assert out.obs[0, 1].tolist() == predator_1
    assert out.obs[0, 2].tolist() == predator_1  # predator 2 shares predator 1's cell
    assert out.state[0].tolist() == predator_0 + predator_1 + predator_1


def test_observation_with_vision_0_is_the_own_cell():
    env = PredatorPrey(num_envs=1, vision=0)
    env.reset(seed=0)
    out = env.place(predators=[[3, 4], [3, 4], [0, 0]], prey=[3, 4])
    assert env.spec.obs_dim == 29
    expect = [0.0] * 29
    expect[19] = 1.0  # cell id 3*5 + 4
    expect[27] = 1.0  # the prey
    expect[28] = 2.0  # predators 0 and 1
    assert out.obs[0, 0].tolist() == expect


@pytest.mark.parametrize("cls, kwargs", [
    (PredatorPrey, {}), (PredatorPrey, {"vision": 0}), (PredatorPrey, {"dim": 7, "n_predators": 4, "vision": 2}),
    (PredatorCapturePrey, {}), (PredatorCapturePrey, {"dim": 6, "n_predators": 3, "n_capture": 2}),
], ids=["pp", "pp_v0", "pp_7x7_v2", "pcp", "pcp_6x6_2cap"])
def test_observations_match_a_plain_loop_reference(cls, kwargs):
    env = cls(num_envs=16, **kwargs)
    out = env.reset(seed=3)
    gen = torch.Generator().manual_seed(1)
    for _ in range(12):
        pos = torch.cat([env.predator_pos] + ([env.capture_pos] if hasattr(env, "capture_pos") else []), dim=1)
        prey = env.prey_pos[:, 0] * env.dim + env.prey_pos[:, 1]
        for b in range(env.num_envs):
            assert torch.equal(out.obs[b], reference_obs(env, pos[b].tolist(), int(prey[b]))), f"env {b}"
        out = env.step(random_available(out.avail_actions, gen))


# ------------------------------------------------------------------------------------------------ seeding, resets


def rollout(env, seed: int, steps: int) -> list:
    """Every Step field for `steps` steps of random available actions drawn from a generator seeded `seed`."""
    gen = torch.Generator().manual_seed(seed)
    out = env.reset(seed=seed)
    trace = [out]
    for _ in range(steps):
        out = env.step(random_available(out.avail_actions, gen))
        trace.append(out)
    return trace


def same_steps(a, b) -> bool:
    fields = ("obs", "state", "avail_actions", "reward", "terminated", "truncated", "active", "final_obs")
    return all(torch.equal(getattr(x, f), getattr(y, f)) for x, y in zip(a, b) for f in fields) and all(
        torch.equal(x.episode[k], y.episode[k]) for x, y in zip(a, b) for k in x.episode)


@pytest.mark.parametrize("B", BATCHES)
def test_same_seed_same_trajectory_and_different_seeds_differ(B):
    a = rollout(PredatorPrey(num_envs=B), seed=5, steps=45)
    b = rollout(PredatorPrey(num_envs=B), seed=5, steps=45)
    c = rollout(PredatorPrey(num_envs=B), seed=6, steps=45)
    assert same_steps(a, b)
    assert not torch.equal(a[0].obs, c[0].obs)
    assert any(x.done.any() for x in a)  # the comparison covered at least one auto-reset


def test_reset_none_continues_the_generator():
    env = PredatorPrey(num_envs=8)
    first = env.reset(seed=1).obs.clone()
    second = env.reset().obs.clone()
    assert not torch.equal(first, second)
    assert torch.equal(env.reset(seed=1).obs, first)
    assert torch.equal(env.reset().obs, second)


def test_only_finished_envs_reset():
    B = 64
    env = PredatorPrey(num_envs=B)
    env.reset(seed=0)
    predators = torch.tensor([[1, 2], [2, 1], [3, 2]]).repeat(B, 1, 1)
    predators[1:, 0] = torch.tensor([0, 0])  # in envs 1.. predator 0 starts in the corner, far from the prey
    env.place(predators=predators, prey=[2, 2])
    env.step(act(B, STAY, STAY, STAY))  # one step taken everywhere
    out = env.step(act(B, DOWN, RIGHT, UP))
    assert out.terminated.tolist() == [True] + [False] * (B - 1)
    assert env.elapsed.tolist() == [0] + [2] * (B - 1)
    # envs 1.. kept their state: predator 0 in the corner, 1 and 2 done on the prey
    assert env.predator_pos[1:].tolist() == [[[1, 0], [2, 2], [2, 2]]] * (B - 1)
    assert env.prey_pos[1:].tolist() == [[2, 2]] * (B - 1)
    assert out.active[1:].tolist() == [[True, False, False]] * (B - 1)
    assert torch.equal(out.final_obs[1:], out.obs[1:])
    # env 0 restarted: all active, distinct cells, and its final observation is the finished episode's
    assert out.active[0].tolist() == [True, True, True]
    assert not torch.equal(out.final_obs[0], out.obs[0])
    centre = out.final_obs[0, 0].view(9, 29)[4]
    assert centre[25:].tolist() == [0.0, 0.0, 1.0, 3.0]


@pytest.mark.parametrize("table", [True, False], ids=["tuple_table", "topk"])
def test_spawn_cells_are_distinct_and_uniform(monkeypatch, table):
    if not table:
        monkeypatch.setattr(predator_prey, "SPAWN_TABLE_MAX_ROWS", 0)
    B = 20000
    env = PredatorPrey(num_envs=B)
    assert (env._spawn_table is not None) == table
    env.reset(seed=0)
    cells = torch.cat([env.predator_pos, env.prey_pos[:, None]], 1)
    ids = cells[..., 0] * 5 + cells[..., 1]  # [B,4]
    assert bool((ids.sort(dim=1).values.diff(dim=1) > 0).all()), "two entities spawned on one cell"
    # each entity's cell is uniform over the 25 cells: 800 expected per cell, std ~28
    for k in range(4):
        counts = torch.bincount(ids[:, k], minlength=25)
        assert counts.min() > 650 and counts.max() < 950, counts.tolist()


def test_a_held_step_is_never_overwritten():
    env = PredatorPrey(num_envs=32)
    gen = torch.Generator().manual_seed(0)
    first = env.reset(seed=0)
    kept_obs, kept_state = first.obs.clone(), first.state.clone()
    out = first
    views = []
    for _ in range(30):
        out = env.step(random_available(out.avail_actions, gen))
        views.append((out.final_obs[:, 0], out.final_obs[:, 0].clone()))  # a view outlives its Step
    assert torch.equal(first.obs, kept_obs) and torch.equal(first.state, kept_state)
    assert all(torch.equal(view, copy) for view, copy in views)


def test_fresh_allocation_path_gives_the_same_steps():
    """Without the CPU buffer pool (the CUDA path) every Step is the same."""
    plain = PredatorCapturePrey(num_envs=16)
    plain._obs_buffers = None
    assert same_steps(rollout(PredatorCapturePrey(num_envs=16), seed=2, steps=30), rollout(plain, seed=2, steps=30))


def test_recycled_buffers_reuse_only_released_memory():
    pool = RecycledBuffers((10,), torch.device("cpu"), keep=2)
    a = pool.get()
    ptr = a.data_ptr()
    b = pool.get()
    assert b.data_ptr() != ptr  # a is still held
    del a
    c = pool.get()
    assert c.data_ptr() == ptr  # a was released: its memory comes back
    view = c[3:]
    del c
    assert pool.get().data_ptr() not in (ptr, b.data_ptr())  # a view still holds c's memory
    del view


def test_random_available_draws_only_available_actions():
    avail = torch.zeros(50, 3, 6, dtype=torch.bool)
    avail[:, 0, 4] = True
    avail[:, 1, [1, 5]] = True
    avail[:, 2, :] = True
    a = random_available(avail, torch.Generator().manual_seed(0))
    assert a[:, 0].tolist() == [4] * 50
    assert set(a[:, 1].tolist()) == {1, 5}
    assert set(a[:, 2].tolist()) == set(range(6))


# ------------------------------------------------------------------------------------------------ bad input


@pytest.mark.parametrize("kwargs, message", [
    ({"vision": -1}, "env.vision=-1; must be >= 0"),
    ({"dim": 1}, "env.dim=1"),
    ({"n_predators": 0}, "env.n_predators=0; must be >= 1"),
    ({"episode_limit": 0}, "env.episode_limit=0; must be >= 1"),
    ({"dim": 2.5}, "env.dim=2.5; must be an integer"),
])
def test_bad_settings_raise_value_error(kwargs, message):
    with pytest.raises(ValueError, match=message.replace("(", r"\(").replace(")", r"\)")):
        PredatorPrey(num_envs=2, **kwargs)


def test_bad_actions_raise():
    env = PredatorPrey(num_envs=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must be \[B=2, N=3\]"):
        env.step(torch.zeros(2, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"actions range over \[0, 5\]; must be in \[0, 4\]"):
        env.step(torch.tensor([[0, 1, 5], [2, 3, 4]]))
    with pytest.raises(ValueError, match=r"actions range over \[-1, -1\]; must be in \[0, 4\]"):
        env.step(torch.full((2, 3), -1))
    with pytest.raises(TypeError):
        env.step(torch.zeros(2, 3))


def test_place_checks_its_input():
    env = PredatorPrey(num_envs=2)
    env.reset(seed=0)
    with pytest.raises(ValueError, match="rows and columns must be in"):
        env.place(predators=[[0, 0], [0, 5], [1, 1]], prey=[2, 2])
    with pytest.raises(ValueError, match=r"predators must be \[3, 2\]"):
        env.place(predators=[[0, 0], [1, 1]], prey=[2, 2])


# ------------------------------------------------------------------------------------------------ Predator-Capture-Prey


def test_pcp_spec_and_available_actions():
    env = PredatorCapturePrey(num_envs=2)
    out = env.reset(seed=0)
    assert env.spec.agent_names == ("predator_0", "predator_1", "capture_0")
    assert (env.spec.n_actions, env.spec.obs_dim, env.spec.state_dim) == (6, 261, 783)
    assert env.spec.observation_spaces["capture_0"].shape == (25,)
    assert env.spec.task_metrics == ("success",)
    # capture is never available to a predator, always to a capture agent that has not captured
    assert out.avail_actions[0].tolist() == [[True] * 5 + [False]] * 2 + [[True] * 6]


@pytest.mark.parametrize("B", BATCHES)
def test_pcp_capture_succeeds_only_on_the_prey_cell(B):
    env = PredatorCapturePrey(num_envs=B)
    env.reset(seed=0)
    env.place(predators=[[0, 0], [4, 4]], prey=[2, 2], capture=[[2, 1]])
    out = env.step(act(B, STAY, STAY, CAPTURE))  # next to the prey: nothing happens
    assert rows(out.reward) == pytest.approx([P, P, P])
    assert rows(out.active) == [True, True, True]
    assert rows(env.capture_pos) == [[2, 1]]
    out = env.step(act(B, STAY, STAY, RIGHT))  # onto the prey: not done before capturing
    assert rows(env.capture_pos) == [[2, 2]]
    assert rows(out.reward) == pytest.approx([P, P, P])
    assert rows(out.active) == [True, True, True]
    out = env.step(act(B, STAY, STAY, CAPTURE))
    assert rows(out.reward) == pytest.approx([P, P, 0.0])
    assert rows(out.active) == [True, True, False]
    assert rows(out.avail_actions[:, 2]) == [False] * 4 + [True, False]
    out = env.step(act(B, STAY, STAY, UP))  # frozen after capturing
    assert rows(env.capture_pos) == [[2, 2]]
    assert rows(out.reward) == pytest.approx([P, P, 0.0])
    assert not out.terminated.any()


@pytest.mark.parametrize("B", BATCHES)
def test_pcp_predators_cannot_capture(B):
    env = PredatorCapturePrey(num_envs=B)
    env.reset(seed=0)
    out = env.place(predators=[[2, 0], [0, 0]], prey=[2, 1], capture=[[4, 4]])
    assert rows(out.avail_actions[:, :2, CAPTURE]) == [False, False]
    out = env.step(act(B, CAPTURE, CAPTURE, STAY))  # unavailable: acts as "stay"
    assert rows(env.predator_pos) == [[2, 0], [0, 0]]
    assert rows(out.reward) == pytest.approx([P, P, P])
    assert rows(out.active) == [True, True, True]


@pytest.mark.parametrize("B", BATCHES)
def test_pcp_capture_agent_is_blind(B):
    env = PredatorCapturePrey(num_envs=B)
    env.reset(seed=0)
    seen = []
    for prey, predators in [([0, 0], [[4, 4], [4, 3]]), ([3, 3], [[3, 2], [3, 4]]), ([3, 2], [[2, 2], [3, 3]])]:
        out = env.place(predators=predators, prey=prey, capture=[[3, 3]])
        seen.append(out.obs[:, 2].clone())
    expect = [0.0] * 261
    expect[18] = 1.0  # its own cell id, 3*5 + 3; zeros elsewhere
    assert all(rows(s) == expect for s in seen)


def test_pcp_predators_see_capture_agents_in_their_own_index():
    env = PredatorCapturePrey(num_envs=1)
    env.reset(seed=0)
    out = env.place(predators=[[1, 1], [2, 2]], prey=[0, 0], capture=[[2, 2]])
    cells = out.obs[0, 0].view(9, 29)  # predator 0's window: (0,0) .. (2,2)
    assert cells[0, 25:].tolist() == [0.0, 0.0, 1.0, 0.0]  # (0,0): the prey
    assert cells[4, 25:].tolist() == [0.0, 0.0, 0.0, 1.0]  # (1,1): the observer
    assert cells[8, 25:].tolist() == [1.0, 0.0, 0.0, 1.0]  # (2,2): capture agent (index 25) and predator 1


@pytest.mark.parametrize("B", BATCHES)
def test_pcp_ends_when_predators_are_on_the_prey_and_the_capture_agent_captured(B):
    env = PredatorCapturePrey(num_envs=B)
    env.reset(seed=0)
    env.place(predators=[[1, 2], [2, 1]], prey=[2, 2], capture=[[2, 3]])
    out = env.step(act(B, DOWN, RIGHT, LEFT))  # everyone on the prey, nothing captured yet
    assert not out.terminated.any() and not out.truncated.any()
    assert rows(out.reward) == pytest.approx([0.0, 0.0, P])
    assert rows(out.active) == [False, False, True]
    out = env.step(act(B, STAY, STAY, CAPTURE))
    assert out.terminated.all() and not out.truncated.any()
    assert rows(out.reward) == pytest.approx([0.0, 0.0, 0.0])
    assert rows(out.episode["success"]) == 1.0
    assert rows(out.episode["length"]) == 2.0
    assert rows(out.episode["return"]) == pytest.approx(P / 3)


@pytest.mark.parametrize("B", BATCHES)
def test_pcp_capture_before_the_predators_arrive(B):
    env = PredatorCapturePrey(num_envs=B)
    env.reset(seed=0)
    env.place(predators=[[1, 2], [0, 0]], prey=[2, 2], capture=[[2, 2]])
    out = env.step(act(B, DOWN, STAY, CAPTURE))
    assert rows(out.active) == [False, True, False]
    assert not out.terminated.any()
    assert rows(out.reward) == pytest.approx([0.0, P, 0.0])


def test_pcp_needs_a_capture_agent():
    with pytest.raises(ValueError, match="env.n_capture=0; must be >= 1"):
        PredatorCapturePrey(num_envs=1, n_capture=0)


@pytest.mark.skipif(not torch.cuda.is_available(), reason="needs CUDA")
def test_cuda_matches_cpu_on_a_hand_played_episode():
    envs = [PredatorPrey(num_envs=4, device=d) for d in ("cpu", "cuda")]
    outs = []
    for env in envs:
        env.reset(seed=0)
        env.place(predators=[[2, 1], [0, 2], [4, 2]], prey=[2, 2])
        trace = [env.step(act(4, *a).to(env.device)) for a in [(RIGHT, DOWN, UP), (STAY, DOWN, UP), (STAY, STAY, UP)]]
        outs.append(trace)
    assert same_steps(outs[0], [s.to("cpu") for s in outs[1]])
