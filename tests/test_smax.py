"""SMAXVecEnv (envs/smax.py): the contract, exact episode ends (won, draw, time limit), dead allies masked,
equality with jaxmarl's own env for the same keys and actions, and seeding.

Only scenario 3m at B = 4 runs in the default set (one compile of reset and step, shared through module fixtures);
other scenarios and B = 1 are slow. Exact cases are set up by editing the batched jaxmarl state (env.jax_state).
"""
import contextlib
import math
import os
import subprocess
import sys
import types
from pathlib import Path

import numpy as np
import pytest
import torch
import yaml
from core_utils import check_step

from envs import smax
from envs.core import random_available
from envs.registry import make_env

with contextlib.suppress(ImportError):
    smax.import_jaxmarl()  # jaxmarl's import prints and resets sys.stdout; this contains both
jaxmarl = pytest.importorskip("jaxmarl")
jax = pytest.importorskip("jax")
from jaxmarl.environments.smax import map_name_to_scenario  # noqa: E402

CONF_ENV = Path(__file__).resolve().parent.parent / "conf" / "env"
B = 4
N, O, S, A = 3, 75, 72, 8  # 3m: 3 allies; obs 13*(2+3)+10; state (10+2)*6; actions 5 + 3 enemies
STOP = smax.NOOP_ACTION
MARINE_HEALTH = 45.0
ATOL = 1e-5


@pytest.fixture(scope="module")
def env():
    e = smax.SMAXVecEnv(B, "cpu", scenario="3m")
    yield e
    e.close()


@pytest.fixture(scope="module")
def raw():
    """jaxmarl's own env, stepped one battle at a time (no vmap, no auto-reset)."""
    return jaxmarl.make("HeuristicEnemySMAX", scenario=map_name_to_scenario("3m"))


def stop(num_envs: int = B) -> torch.Tensor:
    return torch.full((num_envs, N), STOP)


def edit(state, **fields):
    """The batched jaxmarl state with inner SMAX fields replaced: field=fn(array [B,...]) -> array."""
    inner = state.state
    return state.replace(state=inner.replace(**{k: fn(getattr(inner, k)) for k, fn in fields.items()}))


def strong(tree):
    """The pytree without weakly typed leaves (jaxmarl's reset makes some), so raw.step_env compiles once."""
    return jax.tree.map(lambda x: x.astype(x.dtype), tree)


def one(tree, b: int):
    """Env b of a batched pytree."""
    return jax.tree.map(lambda x: x[b], tree)


def raw_view(raw, obs: dict, state) -> tuple:
    """jaxmarl's obs, world state, available actions and ally alive flags as numpy arrays ([N,O], [S], [N,A], [N])."""
    avail = raw.get_avail_actions(state)
    return (np.stack([np.asarray(obs[a]) for a in raw.agents]), np.asarray(obs["world_state"]),
            np.stack([np.asarray(avail[a]) for a in raw.agents]).astype(bool),
            np.asarray(state.state.unit_alive[:N]))


def step_keys(key, num_envs: int) -> tuple:
    """The documented key schedule of one step: (next key, step keys [B], reset keys [B])."""
    key, k_step, k_reset = jax.random.split(key, 3)
    return key, jax.random.split(k_step, num_envs), jax.random.split(k_reset, num_envs)


def assert_view(out, b: int, expected: tuple, final: bool = False) -> None:
    obs, state, avail, alive = expected
    got_obs = out.final_obs if final else out.obs
    got_state = out.final_state if final else out.state
    np.testing.assert_allclose(got_obs[b].numpy(), obs, atol=ATOL, rtol=ATOL)
    np.testing.assert_allclose(got_state[b].numpy(), state, atol=ATOL, rtol=ATOL)
    np.testing.assert_array_equal((out.final_alive if final else out.alive)[b].numpy(), alive)
    if not final:
        np.testing.assert_array_equal(out.avail_actions[b].numpy(), avail)


# ------------------------------------------------------------------------------------------------ contract


def test_spec_and_reset(env):
    spec = env.spec
    assert (spec.n_agents, spec.obs_dim, spec.state_dim, spec.n_actions) == (N, O, S, A)
    assert spec.episode_limit == 100 and spec.task_metrics == ("won",)
    assert spec.agent_names == ("ally_0", "ally_1", "ally_2")
    out = env.reset(seed=0)
    check_step(out, B, spec)
    assert out.alive.all() and out.active.all() and not out.done.any()
    # the teams start 16 apart, beyond every marine's range of 5: moves and stop only
    assert torch.equal(out.avail_actions, torch.tensor([True] * 5 + [False] * 3).expand(B, N, A))
    assert torch.equal(out.final_obs, out.obs) and torch.equal(out.reward, torch.zeros(B, N))
    # own features (last 10): health 1, position in (0, 1), cooldown 0, unit type bit 0 (marine)
    own = out.obs[..., -10:]
    assert torch.equal(own[..., 0], torch.ones(B, N)) and torch.equal(own[..., 3:], torch.eye(7)[1].expand(B, N, 7))
    assert bool(((own[..., 1:3] > 0) & (own[..., 1:3] < 1)).all())


def test_random_play_follows_contract_and_episode_stats(env):
    """Random available actions until several battles end: Step contract, and episode return / length / won
    recomputed here from the per-step rewards (won <=> the last reward holds SMAX's win bonus of 1)."""
    out = env.reset(seed=1)
    gen = torch.Generator().manual_seed(1)
    length, ret, ends = torch.zeros(B), torch.zeros(B, dtype=torch.float64), 0
    for _ in range(60):
        out = env.step(random_available(out.avail_actions, gen))
        check_step(out, B, env.spec)
        assert not (out.terminated & out.truncated).any()
        assert torch.equal(out.active, out.alive)
        # every ally gets the team reward, dead ones included
        assert torch.equal(out.reward, out.reward[:, :1].expand(B, N))
        length += 1
        ret += out.reward.double().mean(dim=1)
        for b in out.done.nonzero().flatten().tolist():
            ends += 1
            assert out.episode["length"][b].item() == length[b].item()
            assert math.isclose(out.episode["return"][b].item(), ret[b].item(), rel_tol=1e-5, abs_tol=1e-5)
            assert out.episode["won"][b].item() == float(out.reward[b, 0].item() >= 1.0)
            assert out.alive[b].all() and length[b] < 100 and out.terminated[b]
            length[b], ret[b] = 0, 0.0
        keep = ~out.done
        assert torch.equal(out.final_obs[keep], out.obs[keep])
        assert torch.equal(out.episode["length"][keep], torch.zeros(int(keep.sum())))
    assert ends >= 4, f"only {ends} battles ended in 60 steps of 4 envs"


# ------------------------------------------------------------------------------------------------ exact ends


def place_duel(state, ally_health: float, enemy_health: float):
    """Every env: ally 0 and enemy 0 (unit 3) 1 apart with ready weapons and the given health; enemies 1-2 dead;
    allies 1-2 alive at full health (ally_health applies to ally 0 only) unless ally_health < 0 kills them too."""
    pos = state.state.unit_positions
    target = pos.at[:, 3].set(pos[:, 0] + jax.numpy.array([1.0, 0.0]))
    allies_alive = ally_health >= 0

    def health(h):
        h = h.at[:, 0].set(abs(ally_health)).at[:, 3].set(enemy_health).at[:, 4:].set(0.0)
        return h if allies_alive else h.at[:, 1:3].set(0.0)

    def alive(a):
        a = a.at[:, 4:].set(False)
        return a if allies_alive else a.at[:, 1:3].set(False)

    return edit(state, unit_positions=lambda _: target, unit_health=health, unit_alive=alive,
                unit_weapon_cooldowns=lambda c: c * 0.0)


def test_one_attack_wins(env):
    """Ally 0 shoots the last enemy (1 health left): won, terminated; reward = its health lost (1/45 spread over 3
    enemies) + the win bonus 1; the next battle has already started."""
    start = env.reset(seed=2)
    env.jax_state = place_duel(env.jax_state, ally_health=MARINE_HEALTH, enemy_health=1.0)
    actions = stop()
    actions[:, 0] = 5  # attack enemy 0
    out = env.step(actions)
    assert out.terminated.all() and not out.truncated.any()
    assert torch.equal(out.episode["won"], torch.ones(B)) and torch.equal(out.episode["length"], torch.ones(B))
    expected = 1.0 + 1.0 / MARINE_HEALTH / 3
    torch.testing.assert_close(out.reward, torch.full((B, N), expected))
    torch.testing.assert_close(out.episode["return"], torch.full((B,), expected))
    assert out.final_alive.all()  # all allies survived the exchange
    assert out.alive.all() and torch.equal(out.avail_actions, start.avail_actions)  # a fresh battle
    assert not torch.equal(out.obs, out.final_obs)


def test_mutual_wipe_out_is_a_draw(env):
    """The last ally and the last enemy (1 health each) shoot each other in the same world step: terminated, not
    won, and SMAX pays no win bonus (JaxMARL counts a win only with an ally alive)."""
    env.reset(seed=3)
    env.jax_state = place_duel(env.jax_state, ally_health=-1.0, enemy_health=1.0)
    actions = stop()
    actions[:, 0] = 5
    out = env.step(actions)
    assert out.terminated.all() and not out.truncated.any()
    assert torch.equal(out.episode["won"], torch.zeros(B))
    torch.testing.assert_close(out.reward, torch.full((B, N), 1.0 / MARINE_HEALTH / 3))
    assert not out.final_alive.any()


def test_time_limit_truncates_and_keeps_final_obs(env, raw):
    """At step 99 of 100, one more step ends every battle by the time limit: truncated, not terminated; final_obs /
    final_state are jaxmarl's observation of that last step, obs already the next battle's first (its reset).
    (SMAX's own done flag tests the step counter before counting the step, so it would run one step more.)"""
    env.reset(seed=4)
    env.jax_state = edit(env.jax_state, step=lambda s: s * 0 + 99)
    before, key = env.jax_state, env.jax_key
    out = env.step(stop())
    assert out.truncated.all() and not out.terminated.any()
    assert torch.equal(out.episode["won"], torch.zeros(B))
    assert torch.equal(out.episode["length"], torch.ones(B))  # steps this env took since its reset
    _, k_step, k_reset = step_keys(key, B)
    for b in range(B):
        act = {a: jax.numpy.int32(STOP) for a in raw.agents}
        obs, state, _, dones, _ = raw.step_env(k_step[b], one(before, b), act)
        assert int(state.state.step) == 100 and not bool(dones["__all__"])
        assert_view(out, b, raw_view(raw, obs, state), final=True)
        assert_view(out, b, raw_view(raw, *raw.reset(k_reset[b])))
    assert not torch.equal(out.obs, out.final_obs)


def test_dead_ally_is_masked(env):
    """Ally 1 dead: zero observation, only stop available, not alive or active; its teammates no longer see it
    (their first unit slot, ally 1 for ally 0, is zero), and it still receives the team reward."""
    env.reset(seed=5)
    env.jax_state = edit(env.jax_state, unit_health=lambda h: h.at[:, 1].set(0.0),
                         unit_alive=lambda a: a.at[:, 1].set(False))
    out = env.step(stop())
    assert not out.done.any()
    assert torch.equal(out.obs[:, 1], torch.zeros(B, O))
    assert torch.equal(out.avail_actions[:, 1], torch.eye(A, dtype=torch.bool)[STOP].expand(B, A))
    assert torch.equal(out.alive, torch.tensor([True, False, True]).expand(B, N))
    assert torch.equal(out.active, out.alive) and torch.equal(out.final_alive, out.alive)
    assert torch.equal(out.obs[:, 0, :13], torch.zeros(B, 13))  # 13 features per observed unit
    assert out.obs[:, 0, -10].eq(1.0).all()  # ally 0 itself is alive at full health
    assert torch.equal(out.reward[:, 1], out.reward[:, 0])


# ------------------------------------------------------------------------------------------------ vs jaxmarl


def test_matches_jaxmarl_for_the_same_keys_and_actions(env, raw):
    """Reset and 8 steps of random available actions: obs, world state, available actions, alive flags and rewards
    equal jaxmarl's unbatched env given the documented key schedule (resets included if a battle ends)."""
    seed = 6
    out = env.reset(seed=seed)
    key, k_reset = jax.random.split(jax.random.PRNGKey(seed))
    raw_states = []
    for b, k in enumerate(jax.random.split(k_reset, B)):
        obs, state = raw.reset(k)
        assert_view(out, b, raw_view(raw, obs, state))
        raw_states.append(strong(state))
    gen = torch.Generator().manual_seed(seed)
    for _ in range(8):
        actions = random_available(out.avail_actions, gen)
        out = env.step(actions)
        key, k_step, k_reset = step_keys(key, B)
        for b in range(B):
            act = {a: jax.numpy.int32(actions[b, i].item()) for i, a in enumerate(raw.agents)}
            obs, state, rewards, dones, _ = raw.step_env(k_step[b], raw_states[b], act)
            np.testing.assert_allclose(out.reward[b].numpy(), [rewards[a] for a in raw.agents], atol=ATOL)
            assert out.done[b].item() == bool(dones["__all__"])
            assert_view(out, b, raw_view(raw, obs, state), final=True)
            if bool(dones["__all__"]):
                obs, state = raw.reset(k_reset[b])
            assert_view(out, b, raw_view(raw, obs, state))
            raw_states[b] = strong(state)


# ------------------------------------------------------------------------------------------------ seeding


def run(env, seed: int, steps: int = 12) -> list:
    out, gen, trace = env.reset(seed=seed), torch.Generator().manual_seed(0), []
    for _ in range(steps):
        out = env.step(random_available(out.avail_actions, gen))
        trace.append(out)
    return trace


def test_same_seed_same_steps(env):
    other = smax.SMAXVecEnv(B, "cpu", scenario="3m")  # shares the compiled functions
    a, b, c = run(env, 7), run(other, 7), run(env, 8)
    fields = ("obs", "state", "avail_actions", "reward", "terminated", "truncated", "alive", "final_obs")
    for x, y in zip(a, b):
        for f in fields:
            assert torch.equal(getattr(x, f), getattr(y, f)), f
        for k in x.episode:
            assert torch.equal(x.episode[k], y.episode[k]), k
    assert not torch.equal(a[0].obs, c[0].obs), "another seed must give other battles"


# ------------------------------------------------------------------------------------------------ errors, config


def test_bad_settings_raise():
    with pytest.raises(ValueError, match=r"env.scenario='4m'; allowed: \[.*'3m'.*\]"):
        smax.SMAXVecEnv(1, "cpu", scenario="4m")
    with pytest.raises(ValueError, match="env.episode_limit=0; must be an integer >= 1 or null"):
        smax.SMAXVecEnv(1, "cpu", episode_limit=0)
    with pytest.raises(ValueError, match="env.episode_limit=2.5; must be an integer >= 1 or null"):
        smax.SMAXVecEnv(1, "cpu", episode_limit=2.5)
    with pytest.raises(ValueError, match=r"env.attack_mode='far'; allowed: \['closest', 'random'\]"):
        smax.SMAXVecEnv(1, "cpu", attack_mode="far")
    with pytest.raises(ValueError, match="num_envs=0; must be >= 1"):
        smax.SMAXVecEnv(0, "cpu")


def test_bad_actions_raise(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match=r"actions must be \[B=4, N=3\], got \(4, 2\)"):
        env.step(torch.zeros(B, 2, dtype=torch.long))
    with pytest.raises(ValueError, match=r"actions must be in \[0, 8\), got values in \[0, 8\]"):
        env.step(torch.tensor([[0, 8, 4]] * B))


def test_missing_jax_names_the_extra(monkeypatch):
    monkeypatch.setitem(sys.modules, "jax", None)
    with pytest.raises(ImportError, match=r"SMAX needs the \[smax\] extra: pip install -e '\.\[smax\]'"):
        smax.import_jaxmarl()


def test_module_import_does_not_import_jax():
    code = "import sys, envs.smax; sys.exit(int(any(m.split('.')[0] in ('jax', 'jaxmarl') for m in sys.modules)))"
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CONF_ENV.parent.parent)


def test_import_loads_only_the_smax_modules_until_more_is_used():
    """import_jaxmarl() leaves jaxmarl's other environments unloaded (their import is most of jaxmarl's cost); the
    first read of a package attribute then loads the whole package, which works as usual."""
    code = "\n".join([
        "import sys, envs.smax_jax as j",
        "j.import_jaxmarl()",
        "loaded = sorted(m for m in sys.modules if m.startswith('jaxmarl.environments.') and m.count('.') == 2)",
        "assert loaded == ['jaxmarl.environments.multi_agent_env', 'jaxmarl.environments.smax',",
        "                  'jaxmarl.environments.spaces'], loaded",
        "import jaxmarl",
        "env = jaxmarl.make('HeuristicEnemySMAX')",
        "assert type(env) is sys.modules['jaxmarl.environments.smax'].HeuristicEnemySMAX",
        "assert 'jaxmarl.environments.storm' in sys.modules and 'SMAX' in jaxmarl.registered_envs",
        "import jaxmarl.environments as E",
        "assert E.SMAX is sys.modules['jaxmarl.environments.smax'].SMAX",
        "assert not hasattr(jaxmarl, 'no_such_name')",
    ])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CONF_ENV.parent.parent, capture_output=True)


def test_compilation_cache_folder(monkeypatch, tmp_path):
    """A folder the user chose (jax config or JAX_COMPILATION_CACHE_DIR) wins; else ~/.cache/commformer/jax. Every
    compile is cached unless the user set JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS."""
    def fake_jax(path):
        config = types.SimpleNamespace(jax_compilation_cache_dir=path)
        config.update = lambda name, value: setattr(config, name, value)
        return types.SimpleNamespace(config=config)

    chosen = fake_jax("/somewhere")
    assert smax.enable_compilation_cache(chosen) == "/somewhere"
    monkeypatch.setenv("JAX_COMPILATION_CACHE_DIR", str(tmp_path / "env"))
    assert smax.enable_compilation_cache(fake_jax(None)) == str(tmp_path / "env")
    monkeypatch.delenv("JAX_COMPILATION_CACHE_DIR")
    monkeypatch.setattr(smax, "DEFAULT_CACHE_DIR", tmp_path / "default")
    jx = fake_jax(None)
    assert smax.enable_compilation_cache(jx) == str(tmp_path / "default") == jx.config.jax_compilation_cache_dir
    assert (tmp_path / "default").is_dir()
    assert jx.config.jax_persistent_cache_min_compile_time_secs == 0.0  # every compile kept, not only those > 1 s
    monkeypatch.setenv("JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS", "2")
    jx = fake_jax(None)
    smax.enable_compilation_cache(jx)
    assert not hasattr(jx.config, "jax_persistent_cache_min_compile_time_secs")  # the user's threshold stands


def test_configs_build_through_the_registry(env):
    cfg = yaml.safe_load((CONF_ENV / "smax_3m.yaml").read_text())
    assert (cfg["name"], cfg["family"], cfg["eval_episodes"], cfg["scenario"]) == ("smax_3m", "smax", 32, "3m")
    made = make_env(cfg, num_envs=B)
    assert made.spec == env.spec
    names = {p.stem for p in CONF_ENV.glob("smax_*.yaml")}
    assert names == {"smax_3m", "smax_2s3z", "smax_5m_vs_6m", "smax_3s5z", "smax_smacv2_5_units",
                     "smax_smacv2_10_units"}
    for path in CONF_ENV.glob("smax_*.yaml"):
        c = yaml.safe_load(path.read_text())
        assert c["name"] == path.stem and c["family"] == "smax" and c["eval_episodes"] == 32
        assert c["scenario"] in smax.scenarios()


# ------------------------------------------------------------------------------------------------ slow


SIZES = {  # scenario: (N, A)
    "2s3z": (5, 10), "5m_vs_6m": (5, 11), "3s5z": (8, 13), "smacv2_5_units": (5, 10), "smacv2_10_units": (10, 15),
}


@pytest.mark.slow
@pytest.mark.parametrize("scenario", sorted(SIZES))
def test_other_scenarios(scenario):
    cfg = yaml.safe_load((CONF_ENV / f"smax_{scenario}.yaml").read_text())
    e = make_env(cfg, num_envs=2)
    n, a = SIZES[scenario]
    assert (e.spec.n_agents, e.spec.n_actions) == (n, a)
    out, gen = e.reset(seed=0), torch.Generator().manual_seed(0)
    for _ in range(5):
        out = e.step(random_available(out.avail_actions, gen))
        check_step(out, 2, e.spec)


@pytest.mark.slow
def test_time_limit_at_batch_one():
    """B = 1, episode_limit 3, the allies hold still: the battle is truncated after exactly 3 steps (too few for
    the enemy to kill a marine), with jaxmarl's third observation as final_obs."""
    e = smax.SMAXVecEnv(1, "cpu", scenario="3m", episode_limit=3)
    lim = jaxmarl.make("HeuristicEnemySMAX", scenario=map_name_to_scenario("3m"), max_steps=3)
    e.reset(seed=9)
    for t in range(3):
        state, key = e.jax_state, e.jax_key
        out = e.step(stop(1))
        assert out.done.item() == (t == 2)
    assert out.truncated.item() and not out.terminated.item() and out.episode["length"].item() == 3.0
    _, k_step, k_reset = step_keys(key, 1)
    obs, st, _, _, _ = lim.step_env(k_step[0], one(state, 0), {a: jax.numpy.int32(STOP) for a in lim.agents})
    assert_view(out, 0, raw_view(lim, obs, st), final=True)
    assert_view(out, 0, raw_view(lim, *lim.reset(k_reset[0])))


# ------------------------------------------------------------------------------------------------ export cache


SETTINGS = ("3m", 100, "closest", True, B, "cpu")


def play(calls, seed: int = 3, steps: int = 12) -> list:
    """Reset and `steps` steps of random available actions through BatchedCalls -> every output as numpy (the
    bool buffer starts with avail_actions [B,N,A], smax_jax.RESET_BOOLS / STEP_BOOLS)."""
    key, leaves, ret, length, floats, bools = calls.reset(jax.random.PRNGKey(seed))
    trace, gen = [np.asarray(floats), np.asarray(bools)], torch.Generator().manual_seed(seed)
    avail = torch.from_numpy(np.asarray(bools)[: B * N * A].reshape(B, N, A).copy())
    for _ in range(steps):
        actions = jax.numpy.asarray(random_available(avail, gen).to(torch.int32).numpy())
        key, leaves, ret, length, floats, bools = calls.step(key, leaves, ret, length, actions)
        trace += [np.asarray(floats), np.asarray(bools), np.asarray(ret), *map(np.asarray, leaves)]
        avail = torch.from_numpy(np.asarray(bools)[: B * N * A].reshape(B, N, A).copy())
    return trace


def test_export_cache_written_then_read_runs_the_same_numbers(tmp_path):
    """A first build exports reset / step into the cache folder; a fresh read of it (no lru) is marked loaded, and
    both run exactly what the directly jitted build_batched functions compute (every buffer and state leaf)."""
    from envs import smax_jax

    written = smax_jax.batched_calls.__wrapped__(*SETTINGS, str(tmp_path))
    entry = tmp_path / "smax_export" / smax_jax.export_key(*SETTINGS)
    assert not written.loaded and sorted(p.name for p in entry.iterdir()) == ["meta.json", "reset.bin", "step.bin"]
    read = smax_jax.batched_calls.__wrapped__(*SETTINGS, str(tmp_path))
    assert read.loaded and read.meta == written.meta
    assert read.meta["agents"] == ["ally_0", "ally_1", "ally_2"] and read.meta["obs_size"] == O
    _, reset_fn, step_fn = smax_jax.build_batched(*SETTINGS[:4])
    treedef = smax_jax.state_treedef(*SETTINGS[:5])

    def direct_reset(key):
        key, states, *rest = reset_fn(key, B)
        return (key, tuple(jax.tree.leaves(states)), *rest)

    def direct_step(key, leaves, ret, length, actions):
        key, states, *rest = step_fn(key, jax.tree.unflatten(treedef, leaves), ret, length, actions)
        return (key, tuple(jax.tree.leaves(states)), *rest)

    direct = smax_jax.BatchedCalls(read.meta, direct_reset, direct_step, False)
    traces = [play(c) for c in (written, read, direct)]
    assert len(traces[0]) == 2 + 12 * (3 + read.meta["n_leaves"])
    for x, y, z in zip(*traces):
        assert np.array_equal(x, y) and np.array_equal(x, z)
    assert not np.array_equal(play(read, seed=4)[0], traces[0][0]), "another seed must give other battles"


def test_export_key_changes_with_every_setting():
    from envs import smax_jax

    keys = {smax_jax.export_key(*SETTINGS)}
    for i, other in enumerate(("2s3z", 50, "random", False, B + 1, "gpu")):
        keys.add(smax_jax.export_key(*SETTINGS[:i], other, *SETTINGS[i + 1:]))
    assert len(keys) == 7


def test_damaged_or_unwritable_export_cache_only_warns(tmp_path, caplog):
    """A damaged entry is exported anew and replaced (one warning naming it), a readable one is never overwritten
    (two runs exporting at once); a cache folder that cannot be written (a file in its place) costs the next run the
    export, not this one its env."""
    from envs import smax_jax

    smax_jax.batched_calls.__wrapped__(*SETTINGS, str(tmp_path))
    entry = tmp_path / "smax_export" / smax_jax.export_key(*SETTINGS)
    (entry / "step.bin").write_bytes(b"not a flatbuffer")
    with caplog.at_level("WARNING", logger="envs.smax_jax"):
        again = smax_jax.batched_calls.__wrapped__(*SETTINGS, str(tmp_path))
    assert not again.loaded and f"SMAX export cache entry {entry} is unreadable" in caplog.text
    assert smax_jax.batched_calls.__wrapped__(*SETTINGS, str(tmp_path)).loaded
    # a readable entry another run wrote first is left as it is (no warning, same files)
    stamps = {p.name: p.stat().st_mtime_ns for p in entry.iterdir()}
    caplog.clear()
    with caplog.at_level("WARNING", logger="envs.smax_jax"):
        smax_jax._write_entry(entry, again.meta, *smax_jax._export(*SETTINGS[:4], B, "cpu")[1:])
    assert caplog.text == "" and {p.name: p.stat().st_mtime_ns for p in entry.iterdir()} == stamps
    assert sorted(p.name for p in entry.parent.iterdir()) == [entry.name]  # no temp folder left
    caplog.clear()
    blocked = tmp_path / "blocked"
    blocked.write_text("a file where the cache folder goes")
    with caplog.at_level("WARNING", logger="envs.smax_jax"):
        calls = smax_jax.batched_calls.__wrapped__(*SETTINGS, str(blocked))
    assert not calls.loaded and "not written" in caplog.text
    assert all(np.array_equal(x, y) for x, y in zip(play(calls), play(again)))


def test_a_cached_env_neither_imports_jaxmarl_nor_traces(tmp_path):
    """With its entry in the cache, building and stepping an env loads no jaxmarl module; jax_state (which needs
    jaxmarl's state types) still works, and a scenario without an entry is still checked."""
    code = "\n".join([
        "import sys, torch",
        "from envs import smax",
        f"smax.SMAXVecEnv({B}, 'cpu', scenario='3m', episode_limit=100).close()",
        "assert any(m.startswith('jaxmarl') for m in sys.modules)",
    ])
    env = {**os.environ, "JAX_COMPILATION_CACHE_DIR": str(tmp_path)}
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CONF_ENV.parent.parent, env=env)
    code = "\n".join([
        "import sys, torch",
        "from envs import smax",
        f"e = smax.SMAXVecEnv({B}, 'cpu', scenario='3m', episode_limit=100)",
        "e.reset(seed=1)",
        f"e.step(torch.full(({B}, {N}), {STOP}))",
        "assert not any(m.startswith('jaxmarl') for m in sys.modules), 'jaxmarl imported'",
        "assert int(e.jax_state.state.step[0]) == 1",
        "try:",
        "    smax.SMAXVecEnv(1, 'cpu', scenario='4m')",
        "except ValueError as err:",
        "    assert 'allowed' in str(err), err",
        "else:",
        "    raise AssertionError('4m accepted')",
    ])
    subprocess.run([sys.executable, "-c", code], check=True, cwd=CONF_ENV.parent.parent, env=env)


def test_jax_state_setter_checks_the_structure(env):
    env.reset(seed=0)
    with pytest.raises(ValueError, match="jax_state: a pytree"):
        env.jax_state = (1, 2)


def test_lowering_platform_names_gpus_as_jax_export_does():
    from envs.smax_jax import lowering_platform

    def device(platform, version=""):
        return types.SimpleNamespace(platform=platform, client=types.SimpleNamespace(platform_version=version))

    assert lowering_platform(jax.devices("cpu")[0]) == "cpu"
    assert lowering_platform(device("gpu", "PJRT C API\ncuda 12080")) == "cuda"
    assert lowering_platform(device("gpu", "rocm 60342")) == "rocm"
    assert lowering_platform(device("tpu")) == "tpu"
