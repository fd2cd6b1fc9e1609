"""The bi-level schedule (docs/method.md, "Bi-level schedule"): phases, which PPO epoch steps which level, the held-out columns of
`split`, what each level's step may change, the exact acting graph in every epoch, and learning the graph of the
signal game end to end with the real Trainer."""
import pytest
import torch
from core_utils import make_config, signal_env

from core_utils import make_agent

from commformer.policies import CommFormerConfig
from commformer.method.policy import Acting, CommFormerPolicy, Schedule
from commformer.policies import build_policy
from commformer.training.optimisers import Optimisers
from commformer.training.trainer import Trainer
from commformer.training.update import ppo_update


def phase(i: int, total: int, mode: str = "learned", gate: bool = False, **schedule) -> str:
    return make_agent(mode=mode, gate=gate, schedule=Schedule(**schedule)).phase(i, total)


choices = make_agent().acting


def build(cfg):
    return build_policy(cfg.algo, type("Spec", (), {"n_agents": 4, "obs_dim": 8, "n_actions": 4}), cfg.seed,
                        torch.device("cpu"))


def optimisers(policy, algo):
    return Optimisers.build(policy, algo.group_lrs(), algo.upper_lr, algo.adam_eps)

# ---- schedule -----------------------------------------------------------------------------------------------------


def test_phase_over_iterations():
    assert [phase(i, 10, warmup_iters=3, freeze_fraction=0.5) for i in range(10)] == \
        ["warmup"] * 3 + ["bilevel"] * 2 + ["frozen"] * 5
    assert [phase(i, 6, warmup_iters=2, freeze_fraction=1.0) for i in range(6)] == ["warmup"] * 2 + ["bilevel"] * 4


def test_phase_without_alpha():
    assert [phase(i, 5, "full", warmup_iters=2) for i in range(5)] == ["fixed"] * 5
    assert [phase(i, 5, "random", gate=True, warmup_iters=2) for i in range(5)] == ["warmup"] * 2 + ["fixed"] * 3
    for mode in ("random", "none", "full"):  # one warm-up rule for every arm
        assert [phase(i, 5, mode, warmup_iters=2, warmup_every_graph=True) for i in range(5)] == \
            ["warmup"] * 2 + ["fixed"] * 3


def test_acting_choices():
    assert choices("warmup", evaluating=False) == ("full", "open")
    assert choices("bilevel", evaluating=False) == ("sample", "sample")
    assert choices("fixed", evaluating=False) == ("sample", "sample")
    assert choices("frozen", evaluating=False) == ("deterministic", "sample")


def test_evaluation_choices():
    assert choices("warmup", evaluating=True) == ("full", "open")
    for ph in ("bilevel", "fixed", "frozen"):
        assert choices(ph, evaluating=True) == ("deterministic", "threshold")


def test_unknown_graph_or_gate_choice_is_an_error():
    with pytest.raises(ValueError, match=r"graph choice 'sampel'; allowed: \['sample', 'full', 'deterministic'\]"):
        Acting.of("sampel", "sample")
    with pytest.raises(ValueError, match="gate choice 'shut'"):
        Acting.of("sample", "shut")


def test_steps_graph_pattern():
    every5, every2 = make_agent(), make_agent(schedule=Schedule(arch_every=2))
    assert [e for e in range(10) if every5.steps_upper("bilevel", e)] == [4, 9]
    assert [e for e in range(6) if every2.steps_upper("bilevel", e)] == [1, 3, 5]
    for ph in ("warmup", "frozen", "fixed"):
        assert not any(every5.steps_upper(ph, e) for e in range(10))


@pytest.mark.parametrize("num_envs,fraction,upper", [
    (8, 0.25, [6, 7]),  # round(2.0) = 2
    (4, 0.25, [3]),  # round(1.0) = 1
    (4, 0.1, [3]),  # round(0.4) = 0 -> at least one
    (3, 0.9, [1, 2]),  # round(2.7) = 3 -> at least one left for the lower level
    (2, 0.5, [1]),
    (10, 0.3, [7, 8, 9]),
])
def test_split_columns(num_envs, fraction, upper):
    policy = make_agent(schedule=Schedule(bilevel="split", split_fraction=fraction))
    up, low = policy.upper_columns(num_envs, "bilevel")
    assert up.tolist() == upper
    assert low.tolist() == [c for c in range(num_envs) if c not in upper]


def test_split_columns_needs_two_columns_and_the_bilevel_phase():
    policy = make_agent(schedule=Schedule(bilevel="split"))
    with pytest.raises(ValueError, match="num_envs=1"):
        policy.upper_columns(1, "bilevel")
    assert policy.upper_columns(8, "warmup") is None and make_agent().upper_columns(8, "bilevel") is None


def test_optimisers_groups():
    cfg = make_config(algo={"gate": True, "lr": 1e-3, "gate_lr": 2e-4, "graph_lr": 5e-2})
    agent = build(cfg)
    opt = optimisers(agent, cfg.algo)
    assert [g["lr"] for g in opt.network.param_groups] == [1e-3, 2e-4]
    gate_ids = {id(p) for p in agent.model.gate.parameters()}
    assert {id(p) for p in opt.network.param_groups[1]["params"]} == gate_ids
    assert opt.graph is not None and opt.graph.param_groups[0]["lr"] == 5e-2
    assert opt.upper_params == [agent.graph.alpha]
    assert all(id(p) != id(agent.graph.alpha) for g in opt.network.param_groups for p in g["params"])
    full_cfg = make_config(algo={"graph": "full"})
    assert optimisers(build(full_cfg), full_cfg.algo).graph is None
    assert isinstance(cfg.algo, CommFormerConfig)


# ---- one update -----------------------------------------------------------------------------------------------------

def trainer_with_rollout(tmp_path, ph="bilevel", **algo):
    """A Trainer on the signal game (8 envs x 4 steps, 10 PPO epochs) and one collected rollout."""
    cfg = make_config(tmp_path, num_envs=8, rollout_length=4, ppo_epochs=10, algo={"arch_every": 5, **algo})
    tr = Trainer(cfg, tmp_path)
    ro = tr.collector.collect(tr.policy, choices(ph, evaluating=False), tr.vnorm.denormalize)
    return tr, ro


def spy_levels(monkeypatch, tr):
    """Record, per optimiser step: (upper, network changed, alpha changed)."""
    record = []
    original = tr.opt.step

    def step(loss, upper, max_grad_norm):
        net = [p.detach().clone() for p in tr.opt.lower_params]
        alpha = [p.detach().clone() for p in tr.opt.upper_params]
        out = original(loss, upper, max_grad_norm)
        net_changed = any(not torch.equal(a, p) for a, p in zip(net, tr.opt.lower_params))
        alpha_changed = any(not torch.equal(a, p) for a, p in zip(alpha, tr.opt.upper_params))
        record.append((upper, net_changed, alpha_changed))
        return out

    monkeypatch.setattr(tr.opt, "step", step)
    return record


@pytest.mark.parametrize("bilevel", ["alternate", "split"])
def test_each_epoch_steps_one_level(tmp_path, monkeypatch, bilevel):
    tr, ro = trainer_with_rollout(tmp_path, bilevel=bilevel)
    record = spy_levels(monkeypatch, tr)
    ppo_update(tr.policy, ro, tr.opt, tr.vnorm, tr.cfg.algo, 10, "bilevel")
    assert [r[0] for r in record] == [e in (4, 9) for e in range(10)]
    for upper, net_changed, alpha_changed in record:
        if upper:
            assert alpha_changed and not net_changed, "a graph epoch must leave the network unchanged"
        else:
            assert net_changed and not alpha_changed, "a network epoch must leave alpha unchanged"


@pytest.mark.parametrize("ph", ["warmup", "frozen"])
def test_alpha_never_steps_outside_bilevel(tmp_path, monkeypatch, ph):
    tr, ro = trainer_with_rollout(tmp_path, ph=ph)
    alpha = tr.policy.graph.alpha.detach().clone()
    record = spy_levels(monkeypatch, tr)
    ppo_update(tr.policy, ro, tr.opt, tr.vnorm, tr.cfg.algo, 10, ph)
    assert record == [(False, True, False)] * 10
    assert torch.equal(tr.policy.graph.alpha, alpha)


@pytest.mark.parametrize("bilevel,upper_rows,lower_rows", [("alternate", 32, 32), ("split", 8, 24)])
def test_split_holds_out_columns_for_the_upper_level(tmp_path, monkeypatch, bilevel, upper_rows, lower_rows):
    """8 envs x 4 steps: split (fraction 0.25) scores the graph on 2 columns (8 rows) and the network on 6 (24)."""
    tr, ro = trainer_with_rollout(tmp_path, bilevel=bilevel)
    seen = []
    original = tr.policy.score

    def score(batch, phase, upper, relax):
        seen.append((upper and relax, batch["obs"].shape[0]))
        return original(batch, phase, upper, relax)

    monkeypatch.setattr(tr.policy, "score", score)
    ppo_update(tr.policy, ro, tr.opt, tr.vnorm, tr.cfg.algo, 10, "bilevel")
    # the first call rescoring the whole batch (no gradient) gives the old log-probs; then one call per epoch
    assert seen[0] == (False, 32)
    assert seen[1:] == [(e in (4, 9), upper_rows if e in (4, 9) else lower_rows) for e in range(10)]


@pytest.mark.parametrize("algo", [{}, {"gate": True}, {"bilevel": "split"}, {"graph": "random", "gate": True}])
def test_first_epoch_uses_the_acting_graph(tmp_path, algo):
    """The update rebuilds the forward pass from the stored acting graph and gate: the first epoch's ratio is 1."""
    tr, _ = trainer_with_rollout(tmp_path, **algo)
    ratios = []
    for _ in range(3):  # later iterations too, after the parameters have moved
        row = tr.iterate()
        ratios.append(row["loss/first_epoch_ratio_max"])
    assert all(abs(r - 1.0) < 1e-5 for r in ratios), ratios


def test_acting_log_prob_gap_is_tiny_on_the_stored_graph_and_large_on_another(tmp_path):
    """loss/acting_log_prob_gap compares the rollout's acting log-probs with the update's pass over the stored graph:
    a rounding unit when they agree, large when the stored graph is not the one that acted."""
    gaps = []
    for _ in range(3):
        tr, ro = trainer_with_rollout(tmp_path, gate=True)
        gaps.append(ppo_update(tr.policy, ro, tr.opt, tr.vnorm, tr.cfg.algo, 1, "bilevel")["loss/acting_log_prob_gap"])
    assert max(gaps) < 1e-5, gaps
    tr, ro = trainer_with_rollout(tmp_path, gate=True)
    T, B, N, _ = ro.stored["graph"].shape
    fresh, _ = tr.policy.graph.sample(T * B, torch.Generator().manual_seed(123))  # a wrong graph: a fresh sample
    assert not torch.equal(fresh.view_as(ro.stored["graph"]), ro.stored["graph"])
    ro.stored["graph"] = fresh.view_as(ro.stored["graph"])
    wrong = ppo_update(tr.policy, ro, tr.opt, tr.vnorm, tr.cfg.algo, 1, "bilevel")["loss/acting_log_prob_gap"]
    assert wrong > 1e-3, wrong


def test_split_mode_updates_the_value_normaliser_from_lower_level_columns_only(tmp_path, monkeypatch):
    """bilevel=split: the upper level's held-out columns never reach the value normaliser (docs/method.md, "PPO")."""
    tr, ro = trainer_with_rollout(tmp_path, bilevel="split", split_fraction=0.25)
    seen = []
    original = tr.vnorm.update
    monkeypatch.setattr(tr.vnorm, "update", lambda x: (seen.append(x.numel()), original(x)))
    ppo_update(tr.policy, ro, tr.opt, tr.vnorm, tr.cfg.algo, 10, "bilevel")
    T, B, N = ro.alive.shape  # 4 x 8 x 4; columns 6, 7 are held out; arch_every 5: epochs 4, 9 are upper
    lower_entries = int(ro.active[:, :6].sum())
    assert seen == [lower_entries] * 8  # 8 lower-level epochs, one minibatch each; no upper-level update
    seen.clear()
    tr2, ro2 = trainer_with_rollout(tmp_path / "alt", bilevel="alternate")
    monkeypatch.setattr(tr2.vnorm, "update", lambda x: seen.append(x.numel()))
    ppo_update(tr2.policy, ro2, tr2.opt, tr2.vnorm, tr2.cfg.algo, 10, "bilevel")
    assert len(seen) == 10  # alternate: both levels see the same batch, every epoch updates it


def test_relaxed_graph_gives_the_same_log_probs(tmp_path):
    """score() of an upper-level step (the relaxed graph) equals a lower-level one on stored rollout data, while its
    gradient reaches alpha."""
    from core_utils import score

    tr, ro = trainer_with_rollout(tmp_path, gate=True)
    f = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    st = ro.stored
    args = (f(ro.obs), f(ro.avail), f(ro.alive), f(ro.actions), f(st["graph"]), f(st["noise"]), f(st["gate"]))
    assert st["noise"].abs().sum() > 0
    logp_hard, ent_hard, v_hard, _ = score(tr.policy, *args, relax_graph=False, relax_gate=True)
    logp_soft, ent_soft, v_soft, _ = score(tr.policy, *args, relax_graph=True, relax_gate=True)
    assert torch.equal(logp_hard, logp_soft)
    assert torch.equal(ent_hard, ent_soft) and torch.equal(v_hard, v_soft)
    tr.policy.graph.alpha.grad = None
    (logp_soft * torch.randn(logp_soft.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert tr.policy.graph.alpha.grad is not None and tr.policy.graph.alpha.grad.abs().sum() > 0
    tr.policy.graph.alpha.grad = None
    logp_hard, _, _, _ = score(tr.policy, *args, relax_graph=False, relax_gate=True)
    logp_hard.sum().backward()
    assert tr.policy.graph.alpha.grad is None


# ---- learning the graph (signal game) --------------------------------------------------------------------------------

SIGNAL_SOURCE = torch.tensor([[0, 1, 0, 0],  # receiver i needs agent (i + 1) mod 4
                              [0, 0, 1, 0],
                              [0, 0, 0, 1],
                              [1, 0, 0, 0]], dtype=torch.bool)


def learn_signal(tmp_path, seed: int, iterations: int) -> tuple[Trainer, dict]:
    cfg = make_config(tmp_path, env=signal_env(eval_episodes=256), iterations=iterations, num_envs=64,
                      rollout_length=5, ppo_epochs=10, seed=seed, eval_every=10 ** 6, algo={"warmup_iters": 0})
    tr = Trainer(cfg, tmp_path)
    return tr, tr.train()


# Measured (Trainer.iterate() then Trainer.evaluate() after every iteration; 64 envs x 5 steps, 10 PPO epochs,
# default lr 5e-4 / graph_lr 3e-3, warmup 0, 256 eval episodes): top-k(alpha) is the exact permutation after 5-6
# iterations for seeds 1-6; eval success reaches 1.0 after 9, 6, 10, 10, 11, 8 iterations (seeds 1-6). The smallest
# budget passing seeds 1-3 is 10 iterations; the test uses 15 for headroom (3-7 s per seed on one thread).
SIGNAL_ITERATIONS = 15


@pytest.mark.parametrize("seed", [1, 2, 3])
def test_learns_signal_graph(tmp_path, seed):
    tr, result = learn_signal(tmp_path, seed, SIGNAL_ITERATIONS)
    assert tr.policy.graph.k == 1
    assert torch.equal(tr.policy.graph.deterministic(), SIGNAL_SOURCE)
    assert result["eval/success"] == 1.0


# ---- the score-function graph gradient (algo.graph_grad=score) ----------------------------------------------------

def test_graph_log_prob_is_the_gumbel_top_k_sampling_probability():
    """CommGraph.log_prob of sampled graphs: exp of it matches the empirical frequency of each ordered draw (k = 2),
    and the probabilities of the k = 1 draws of one receiver sum to 1."""
    from collections import Counter

    from commformer.method.graph import CommGraph

    g = CommGraph(4, "learned", 0.5, seed=0)  # k = 2
    with torch.no_grad():
        g.alpha.copy_(torch.randn(4, 4, generator=torch.Generator().manual_seed(1)))
    hard, noise = g.sample(100_000, torch.Generator().manual_seed(0))
    lp = g.log_prob(hard, noise)[:, 0].detach()
    ranked = torch.where(hard[:, 0], g.alpha.detach()[0] + noise[:, 0], float("-inf")).argsort(-1, descending=True)
    counts = Counter(map(tuple, ranked[:, :2].tolist()))
    for (a, b), n in counts.items():
        first = int(((ranked[:, 0] == a) & (ranked[:, 1] == b)).nonzero()[0])
        assert abs(n / 100_000 - float(lp[first].exp())) < 0.01, (a, b)
    one = CommGraph(4, "learned", 0.25, seed=0)  # k = 1
    hard1 = torch.zeros(3, 4, 4, dtype=torch.bool)
    for j in range(1, 4):
        hard1[j - 1, 0, j] = True
    hard1[:, 1:, 0] = True
    assert abs(float(one.log_prob(hard1, torch.zeros(3, 4, 4))[:, 0].detach().exp().sum()) - 1.0) < 1e-6


@pytest.mark.parametrize("graph_grad", ["score", "straight_through"])
def test_sign_of_alphas_gradient_where_one_sender_helps(graph_grad):
    """A hand-made case: receiver 0 of 3 agents (k = 1) has advantage +1 whenever it heard agent 1, -1 when it heard
    agent 2. The score-function surrogate's gradient must raise alpha[0, 1] and lower alpha[0, 2] (a descent step
    moves against the gradient); the straight-through relaxation of the PPO loss has no such guarantee (it measures
    how the loss changes with the amount of the heard sender's message, not which sender helps): the test records
    its sign rather than asserting it."""
    from core_utils import random_inputs

    from commformer.method.policy import Schedule

    agent = make_agent(n_agents=3, obs_dim=6, n_actions=5, sparsity=0.34, schedule=Schedule(graph_grad=graph_grad))
    assert agent.graph.k == 1
    R = 512
    obs, avail, alive, actions = random_inputs(R, 3, 6, 5)
    hard, noise = agent.graph.sample(R, torch.Generator().manual_seed(0))
    heard_1 = hard[:, 0, 1]
    advantages = torch.zeros(R, 3)
    advantages[:, 0] = torch.where(heard_1, 1.0, -1.0)
    active = torch.zeros(R, 3, dtype=torch.bool)
    active[:, 0] = True
    batch = {"obs": obs, "avail": avail, "alive": alive, "actions": actions, "graph": hard, "noise": noise,
             "advantages": advantages, "returns": advantages, "active": active}
    with torch.no_grad():
        batch["graph_logp"] = agent.graph.log_prob(hard, noise)
        old = agent.score(batch, "bilevel", upper=False, relax=False).log_prob
    sc = agent.score(batch, "bilevel", upper=True, relax=True)
    from commformer.training.ppo import policy_loss

    loss = policy_loss(sc.log_prob, old, advantages, active, 0.2)[0]
    if sc.aux_loss is not None:
        loss = loss + sc.aux_loss
    (grad,) = torch.autograd.grad(loss, [agent.graph.alpha])
    if graph_grad == "score":
        assert grad[0, 1] < 0 < grad[0, 2], grad[0]
        assert torch.all(grad[1:] == 0)  # the other receivers' advantages are 0 / inactive
    else:
        assert torch.isfinite(grad).all() and grad[0, 0] == 0  # no self edge


@pytest.mark.parametrize("graph_grad", ["straight_through", "score"])
def test_upper_gradients_per_loss_term(tmp_path, graph_grad):
    """logger.alpha_grads' diagnostic: one [N,N] gradient per loss term, alpha and the network untouched by it; with
    graph_grad=score only the surrogate (the extra term) reaches alpha, with straight_through the PPO terms do."""
    tr, ro = trainer_with_rollout(tmp_path, graph_grad=graph_grad)
    alpha = tr.policy.graph.alpha.detach().clone()
    grads: dict = {}
    ppo_update(tr.policy, ro, tr.opt, tr.vnorm, tr.cfg.algo, 5, "bilevel", grads)
    assert set(grads) >= {"policy", "value", "entropy"} and all(g[0].shape == (4, 4) for g in grads.values())
    if graph_grad == "score":
        assert "extra" in grads and float(grads["extra"][0].abs().sum()) > 0
        assert all(float(grads[k][0].abs().sum()) == 0 for k in ("policy", "value", "entropy"))
    else:
        assert float(grads["policy"][0].abs().sum()) > 0
    assert not torch.equal(tr.policy.graph.alpha.detach(), alpha)  # the update itself stepped alpha (epoch 4)
