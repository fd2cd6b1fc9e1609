"""Recurrent baselines (MAPPO, IPPO, CommNet) on the policy seam: the state carried, reset and replayed exactly, the
defining computation of each method, each with a control that fails (docs/methods/recurrent.md, mappo.md,
commnet.md)."""
import dataclasses
from types import SimpleNamespace

import pytest
import torch
from core_utils import TINY_PP, make_config, read_csv, state_equal, without_perf

from commformer.baselines.commnet import CommNetConfig, CommNetPolicy, count_messages, mean_of_others
from commformer.baselines.mappo import IPPOConfig, IPPOPolicy, MAPPOConfig, MAPPOPolicy
from commformer.protocol import policy_entry
from commformer.training.trainer import Trainer
from commformer.training.update import minibatches, rows

SPEC = SimpleNamespace(n_agents=4, obs_dim=6, state_dim=24, n_actions=5)  # the fields a policy reads
B = 3


def build(name, **keys):
    cfgs = {"mappo": MAPPOConfig, "ippo": IPPOConfig, "commnet": CommNetConfig}
    policies = {"mappo": MAPPOPolicy, "ippo": IPPOPolicy, "commnet": CommNetPolicy}
    return policies[name](cfgs[name](hidden=8, fc=8, **keys), SPEC, seed=0)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(B, SPEC.n_agents, SPEC.obs_dim, generator=g)
    alive = torch.ones(B, SPEC.n_agents, dtype=torch.bool)
    carry_h = torch.randn(B, SPEC.n_agents, 8, generator=g)
    return obs, alive, carry_h


def step_out(policy, obs, alive, h):
    hidden = {n: h for n in policy.state_names}
    state = obs.reshape(obs.shape[0], -1)
    out = policy._advance(obs, alive, state, hidden)
    return out.logits, out.value, out.hidden


@pytest.mark.parametrize("name", ["mappo", "ippo", "commnet"])
def test_built_in_names(name):
    assert policy_entry(name).config.__name__.lower().startswith(name)


# ---- the defining computations --------------------------------------------------------------------------------------
def test_commnet_message_is_the_mean_of_the_alive_others_projected_states():
    torch.manual_seed(1)
    h = torch.randn(B, 4, 8)
    alive = torch.tensor([[True, True, True, True], [True, False, True, True], [False, False, True, False]])
    proj = torch.nn.Linear(8, 5, bias=False)
    got = proj(mean_of_others(h, alive))
    for b in range(B):
        for i in range(4):
            others = [j for j in range(4) if j != i and alive[b, j] and alive[b, i]]
            want = torch.stack([proj(h[b, j]) for j in others]).mean(0) if others else torch.zeros(5)
            assert torch.allclose(got[b, i], want, atol=1e-6), (b, i)
    # control: counting the dead agent 1 of env 1 as a sender changes what agent 0 hears there
    with_dead = proj(h[1, [1, 2, 3]]).mean(0)
    assert not torch.allclose(got[1, 0], with_dead, atol=1e-3)
    assert count_messages(alive).tolist() == [12.0, 6.0, 0.0]


def test_commnet_dead_agent_sends_nothing_and_others_listen():
    policy = build("commnet")
    obs, alive, h = inputs()
    alive[0, 2] = False
    logits, _, _ = step_out(policy, obs, alive, h)
    changed_h = h.clone()
    changed_h[0, 2] += 5.0  # the dead agent's state: nobody hears it
    changed_o = obs.clone()
    changed_o[0, 2] += 5.0
    for o2, h2 in ((obs, changed_h), (changed_o, h)):
        l2, _, _ = step_out(policy, o2, alive, h2)
        assert torch.allclose(l2[0, [0, 1, 3]], logits[0, [0, 1, 3]], atol=1e-6)
    # control: an alive agent's state reaches the others
    changed_h[0, 1] += 5.0
    l3, _, _ = step_out(policy, obs, alive, changed_h)
    assert not torch.allclose(l3[0, 0], logits[0, 0], atol=1e-4)


@pytest.mark.parametrize("name", ["mappo", "ippo"])
def test_a_non_communicating_actor_ignores_the_others(name):
    policy = build(name, **({"critic_input": "joint_obs"} if name == "mappo" else {}))
    obs, alive, h = inputs()
    logits, _, _ = step_out(policy, obs, alive, h)
    other = obs.clone()
    other[:, 1] += 3.0
    logits2, _, _ = step_out(policy, other, alive, h)
    assert torch.equal(logits2[:, [0, 2, 3]], logits[:, [0, 2, 3]])
    assert not torch.allclose(logits2[:, 1], logits[:, 1])  # control: agent 1's own logits move


def test_commnet_actor_hears_the_others():  # the control of the test above: communication moves agent 0's logits
    policy = build("commnet")
    obs, alive, h = inputs()
    other = obs.clone()
    other[:, 1] += 3.0
    assert not torch.allclose(step_out(policy, other, alive, h)[0][:, 0], step_out(policy, obs, alive, h)[0][:, 0])


@pytest.mark.parametrize("critic_input", ["state", "joint_obs"])
def test_centralised_critic_reads_the_others_and_ippos_does_not(critic_input):
    obs, alive, h = inputs()
    other = obs.clone()
    other[:, 1] += 3.0
    ippo, mappo = build("ippo"), build("mappo", critic_input=critic_input)
    assert mappo.uses_state == (critic_input == "state")
    _, v_ippo, _ = step_out(ippo, obs, alive, h)
    _, v_ippo2, _ = step_out(ippo, other, alive, h)
    assert torch.equal(v_ippo2[:, [0, 2, 3]], v_ippo[:, [0, 2, 3]])
    _, v_mappo, _ = step_out(mappo, obs, alive, h)
    _, v_mappo2, _ = step_out(mappo, other, alive, h)  # step_out passes the state of the changed observations
    assert not torch.allclose(v_mappo2[:, 0], v_mappo[:, 0], atol=1e-5)


# ---- the carried state -----------------------------------------------------------------------------------------------
def test_reset_carry_zeroes_exactly_the_envs_that_start():
    policy = build("mappo")
    carry = {n: torch.randn(B, 4, 8) for n in policy.state_names}
    carry["start"] = torch.zeros(B, dtype=torch.bool)
    starts = torch.tensor([False, True, False])
    out = policy.reset_carry(carry, starts)
    for n in policy.state_names:
        assert torch.equal(out[n][1], torch.zeros(4, 8))
        assert torch.equal(out[n][[0, 2]], carry[n][[0, 2]])
    assert out["start"].tolist() == [False, True, False]


def test_dead_agents_state_is_zeroed():
    policy = build("ippo")
    obs, alive, h = inputs()
    alive[1, 3] = False
    _, _, nxt = step_out(policy, obs, alive, h)
    assert torch.equal(nxt["actor"][1, 3], torch.zeros(8))
    assert nxt["actor"][0, 3].abs().sum() > 0


def test_sequence_minibatches_split_env_columns():
    batch = {"obs": torch.arange(5 * 6).view(5, 6, 1).float(), "alive": torch.ones(5, 6, 1, dtype=torch.bool)}
    parts = minibatches(batch, 3, sequences=True)
    cols = []
    for p in parts:
        assert p["obs"].shape[0] == 5  # every step of a column stays
        for c in range(p["obs"].shape[1]):
            col = p["obs"][:, c, 0]
            assert torch.equal(col - col[0], torch.arange(5).float() * 6)  # one env's steps, in order
            cols.append(int(col[0]))
    assert sorted(cols) == list(range(6))


def tiny(run_dir, algo, iterations=4, **over):
    return make_config(run_dir, env=TINY_PP, iterations=iterations, num_envs=4, rollout_length=8,
                       algo={"policy": algo, "name": algo, "hidden": 16, "fc": 16, **over.pop("algo", {})}, **over)


@pytest.mark.parametrize("algo", ["commnet", "mappo"])
def test_a_real_run_replays_the_states_that_acted(tmp_path, algo):
    """pp episodes (up to 20 steps) span rollouts of 8 steps: the update's replay from the stored states gives the
    acting log-probs (gap <= 1e-5); scoring the same rollout from zero states instead does not."""
    tr = Trainer(tiny(tmp_path, algo), tmp_path)
    tr.train()
    _, rows_ = read_csv(tmp_path / "metrics.csv")
    assert all(float(r["loss/acting_log_prob_gap"]) <= 1e-5 for r in rows_)
    ro = tr.collector.collect(tr.policy, tr.policy.acting("fixed", False), lambda x: x)
    batch = rows(ro, None, sequences=True)
    assert not bool(batch["start"][0].all()), "the rollout must start inside episodes for the control to bite"
    with torch.no_grad():
        exact = tr.policy.score(batch, "fixed", False, False).log_prob
        zeroed = dict(batch, **{k: torch.zeros_like(v) for k, v in batch.items() if k.startswith("h_")})
        control = tr.policy.score(zeroed, "fixed", False, False).log_prob
    gap = lambda lp: float(torch.where(ro.active, (ro.log_prob - lp).abs(), 0.0).max())  # noqa: E731
    assert gap(exact) <= 1e-5
    assert gap(control) > 1e-2
    assert float(tr.policy.messages(ro.stored, ro.alive).mean()) == (6.0 if algo == "commnet" else 0.0)
    tr.close()


def test_recurrent_resume_equals_straight_run(tmp_path):
    """pp with rollouts shorter than episodes: a hidden state crosses the checkpoint; 2 + 2 iterations resumed equal
    4 straight in the parameters and every non-timing column of metrics.csv."""
    common = dict(eval_every=2, checkpoint_every=2)
    straight = Trainer(tiny(tmp_path / "straight", "commnet", **common), tmp_path / "straight")
    straight.train()
    first = tiny(tmp_path / "resumed", "commnet", iterations=2, **common)
    half = Trainer(first, first.run_dir)
    half.train()
    carry = half.collector.carry
    assert not bool(carry["start"].all()) and carry["actor"].abs().sum() > 0, "a live state crosses the checkpoint"
    cont = dataclasses.replace(tiny(tmp_path / "resumed", "commnet", **common), resume=str(tmp_path / "resumed"))
    resumed = Trainer(cont, tmp_path / "resumed")
    assert torch.equal(resumed.collector.carry["actor"], carry["actor"])
    resumed.train()
    assert state_equal(resumed.policy.state_dict(), straight.policy.state_dict())
    _, a = read_csv(tmp_path / "straight" / "metrics.csv")
    _, b = read_csv(tmp_path / "resumed" / "metrics.csv")
    assert len(a) == 4 and without_perf(a) == without_perf(b)
    for t in (straight, half, resumed):
        t.close()


@pytest.mark.parametrize("algo", ["mappo", "commnet"])
def test_reevaluating_the_checkpoint_carries_the_state(tmp_path, algo):
    """scripts/evaluate.py's path (load_run, evaluate_run) on the training evaluation's own episodes gives the
    trainer's final success exactly: the state is carried and reset the same way. MAPPO also reads the env's state."""
    from commformer.analysis.loaded_run import load_run
    from commformer.analysis.reevaluate import evaluate_run
    from commformer.training.evaluation import EVAL_SEED_OFFSET

    cfg = tiny(tmp_path, algo, eval_episodes=8)
    final = Trainer(cfg, tmp_path).train()
    run = load_run(tmp_path)
    out = evaluate_run(run, 8, cfg.seed + EVAL_SEED_OFFSET, torch.device("cpu"), "auto", "auto", n_boot=10)
    assert out["metrics"]["success"]["mean"] == final["eval/success"]
    assert out["metrics"]["return"]["mean"] == pytest.approx(final["eval/return"], abs=1e-5)  # per-step actions
    assert out["messages_per_step"] == (6.0 if algo == "commnet" else 0.0)


def test_a_recurrent_baseline_takes_only_a_zero_warm_up():
    from commformer.config import ConfigError

    assert IPPOConfig(warmup_iters=0).warmup_iters == 0  # one study can give every arm algo.warmup_iters=0
    with pytest.raises(ConfigError, match=r"algo.warmup_iters=3; ippo has no warm-up phase"):
        IPPOConfig(warmup_iters=3)


@pytest.mark.parametrize("algo", ["mappo", "ippo", "magic"])
def test_a_split_step_replays_as_the_sequential_loop(tmp_path, algo):
    """MAPPO, IPPO and MAGIC's cores read no message: the update runs only the GRU step by step and the rest once over
    all T steps. On a real rollout (episodes crossing its start, dead agents none on pp) it scores the same log-probs,
    entropies and values as the step-by-step loop of the same policy, and the same gradient; the control, the split
    replay from zero states, does not."""
    tr = Trainer(tiny(tmp_path, algo), tmp_path)
    tr.train()
    ro = tr.collector.collect(tr.policy, tr.policy.acting("fixed", False), lambda x: x)
    batch = rows(ro, None, sequences=True)
    assert tr.policy.splits_recurrence and not bool(batch["start"][0].all())

    def scored(b, split):
        tr.policy.splits_recurrence = split
        tr.policy.zero_grad()
        out = tr.policy.score(b, "fixed", False, False)
        (out.log_prob.sum() + out.value.sum()).backward()
        grads = [p.grad.clone() for p in tr.policy.parameters() if p.grad is not None]
        return out, grads

    split, g_split = scored(batch, True)
    loop, g_loop = scored(batch, False)
    for a, b in [(split.log_prob, loop.log_prob), (split.entropy, loop.entropy), (split.value, loop.value)]:
        assert torch.allclose(a, b, atol=1e-5)
    assert len(g_split) == len(g_loop) and all(torch.allclose(a, b, atol=1e-4) for a, b in zip(g_split, g_loop))
    zeroed = dict(batch, **{k: torch.zeros_like(v) for k, v in batch.items() if k.startswith("h_")})
    control, _ = scored(zeroed, True)
    assert float((control.log_prob - loop.log_prob).detach().abs().max()) > 1e-2
    tr.policy.splits_recurrence = True
    tr.close()


@pytest.mark.parametrize("critic_input", ["state", "joint_obs"])
def test_mappo_critic_embedding_is_the_linear_map_of_joint_and_id(critic_input):
    """The critic's first layer, taken once per env on the joint input plus the id's weight column per agent, equals
    critic_in on the concatenation [joint, one-hot id of agent i]; the control (every agent given agent 0's id) does
    not."""
    policy = build("mappo", critic_input=critic_input)
    obs, _, _ = inputs()
    state = torch.randn(B, SPEC.state_dim)
    joint = state if critic_input == "state" else obs.reshape(B, -1)
    ids = torch.eye(SPEC.n_agents).expand(B, -1, -1)
    cat = torch.cat([joint[:, None, :].expand(B, SPEC.n_agents, -1), ids], dim=-1)
    got = policy.critic_embedding(obs, state)
    assert got.shape == (B, SPEC.n_agents, 8)
    assert torch.allclose(got, policy.critic_in(cat), atol=1e-6)
    same_id = torch.cat([joint[:, None, :].expand(B, SPEC.n_agents, -1), ids[:, :1].expand_as(ids)], dim=-1)
    assert not torch.allclose(got, policy.critic_in(same_id), atol=1e-3)
