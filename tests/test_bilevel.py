"""The bi-level schedule (REFERENCE.md 4): phases, which PPO epoch steps which level, the held-out columns of
`split`, what each level's step may change, the exact acting graph in every epoch, and learning the graph of the
signal game end to end with the real Trainer."""
import pytest
import torch
from core_utils import make_config, signal_env

from commformer.training.bilevel import Optimisers, choices, phase, split_columns, steps_graph
from commformer.config import AlgoConfig
from commformer.training.trainer import Trainer, build_agent
from commformer.training.update import ppo_update

# ---- schedule -----------------------------------------------------------------------------------------------------


def test_phase_over_iterations():
    algo = AlgoConfig(warmup_iters=3, freeze_fraction=0.5)
    assert [phase(i, 10, algo) for i in range(10)] == ["warmup"] * 3 + ["bilevel"] * 2 + ["frozen"] * 5
    never_frozen = AlgoConfig(warmup_iters=2, freeze_fraction=1.0)
    assert [phase(i, 6, never_frozen) for i in range(6)] == ["warmup"] * 2 + ["bilevel"] * 4


def test_phase_without_alpha():
    assert [phase(i, 5, AlgoConfig(graph="full", warmup_iters=2)) for i in range(5)] == ["fixed"] * 5
    gated = AlgoConfig(graph="random", gate=True, warmup_iters=2)
    assert [phase(i, 5, gated) for i in range(5)] == ["warmup"] * 2 + ["fixed"] * 3


def test_acting_choices():
    assert choices("warmup", evaluating=False) == ("full", "open")
    assert choices("bilevel", evaluating=False) == ("sample", "sample")
    assert choices("fixed", evaluating=False) == ("sample", "sample")
    assert choices("frozen", evaluating=False) == ("deterministic", "sample")


def test_evaluation_choices():
    assert choices("warmup", evaluating=True) == ("full", "open")
    for ph in ("bilevel", "fixed", "frozen"):
        assert choices(ph, evaluating=True) == ("deterministic", "threshold")
    with pytest.raises(ValueError, match="'warm'"):
        choices("warm", evaluating=False)


def test_unknown_graph_or_gate_choice_is_an_error():
    from commformer.method.policy import gate_choice, graph_choice

    with pytest.raises(ValueError, match=r"graph choice 'sampel'; allowed: \['sample', 'full', 'deterministic'\]"):
        graph_choice("sampel")
    with pytest.raises(ValueError, match="gate choice 'shut'"):
        gate_choice("shut")


def test_steps_graph_pattern():
    assert [e for e in range(10) if steps_graph("bilevel", e, 5)] == [4, 9]
    assert [e for e in range(6) if steps_graph("bilevel", e, 2)] == [1, 3, 5]
    for ph in ("warmup", "frozen", "fixed"):
        assert not any(steps_graph(ph, e, 5) for e in range(10))


@pytest.mark.parametrize("num_envs,fraction,upper", [
    (8, 0.25, [6, 7]),  # round(2.0) = 2
    (4, 0.25, [3]),  # round(1.0) = 1
    (4, 0.1, [3]),  # round(0.4) = 0 -> at least one
    (3, 0.9, [1, 2]),  # round(2.7) = 3 -> at least one left for the lower level
    (2, 0.5, [1]),
    (10, 0.3, [7, 8, 9]),
])
def test_split_columns(num_envs, fraction, upper):
    up, low = split_columns(num_envs, fraction)
    assert up.tolist() == upper
    assert low.tolist() == [c for c in range(num_envs) if c not in upper]


def test_split_columns_needs_two_columns():
    with pytest.raises(ValueError, match="num_envs=1"):
        split_columns(1, 0.25)


def test_optimisers_groups():
    cfg = make_config(algo={"gate": True, "lr": 1e-3, "gate_lr": 2e-4, "graph_lr": 5e-2})
    agent = build_agent(cfg, 4, 8, 4, torch.device("cpu"))
    opt = Optimisers.build(agent, cfg.algo)
    assert [g["lr"] for g in opt.network.param_groups] == [1e-3, 2e-4]
    gate_ids = {id(p) for p in agent.model.gate.parameters()}
    assert {id(p) for p in opt.network.param_groups[1]["params"]} == gate_ids
    assert opt.graph is not None and opt.graph.param_groups[0]["lr"] == 5e-2
    assert opt.graph_params == [agent.graph.alpha]
    assert all(id(p) != id(agent.graph.alpha) for g in opt.network.param_groups for p in g["params"])
    full_cfg = make_config(algo={"graph": "full"})
    fixed = build_agent(full_cfg, 4, 8, 4, torch.device("cpu"))
    assert Optimisers.build(fixed, full_cfg.algo).graph is None


# ---- one update -----------------------------------------------------------------------------------------------------

def trainer_with_rollout(tmp_path, ph="bilevel", **algo):
    """A Trainer on the signal game (8 envs x 4 steps, 10 PPO epochs) and one collected rollout."""
    cfg = make_config(tmp_path, num_envs=8, rollout_length=4, ppo_epochs=10, algo={"arch_every": 5, **algo})
    tr = Trainer(cfg, tmp_path)
    graph_how, gate_how = choices(ph, evaluating=False)
    ro = tr.collector.collect(tr.agent, graph_how, gate_how, tr.vnorm.denormalize)
    return tr, ro


def spy_levels(monkeypatch, tr):
    """Record, per optimiser step: (upper, network changed, alpha changed)."""
    record = []
    original = tr.opt.step

    def step(loss, upper, max_grad_norm):
        net = [p.detach().clone() for p in tr.opt.network_params]
        alpha = [p.detach().clone() for p in tr.opt.graph_params]
        out = original(loss, upper, max_grad_norm)
        net_changed = any(not torch.equal(a, p) for a, p in zip(net, tr.opt.network_params))
        alpha_changed = any(not torch.equal(a, p) for a, p in zip(alpha, tr.opt.graph_params))
        record.append((upper, net_changed, alpha_changed))
        return out

    monkeypatch.setattr(tr.opt, "step", step)
    return record


@pytest.mark.parametrize("bilevel", ["alternate", "split"])
def test_each_epoch_steps_one_level(tmp_path, monkeypatch, bilevel):
    tr, ro = trainer_with_rollout(tmp_path, bilevel=bilevel)
    record = spy_levels(monkeypatch, tr)
    ppo_update(tr.agent, ro, tr.opt, tr.vnorm, tr.cfg.algo, 10, "bilevel")
    assert [r[0] for r in record] == [e in (4, 9) for e in range(10)]
    for upper, net_changed, alpha_changed in record:
        if upper:
            assert alpha_changed and not net_changed, "a graph epoch must leave the network unchanged"
        else:
            assert net_changed and not alpha_changed, "a network epoch must leave alpha unchanged"


@pytest.mark.parametrize("ph", ["warmup", "frozen"])
def test_alpha_never_steps_outside_bilevel(tmp_path, monkeypatch, ph):
    tr, ro = trainer_with_rollout(tmp_path, ph=ph)
    alpha = tr.agent.graph.alpha.detach().clone()
    record = spy_levels(monkeypatch, tr)
    ppo_update(tr.agent, ro, tr.opt, tr.vnorm, tr.cfg.algo, 10, ph)
    assert record == [(False, True, False)] * 10
    assert torch.equal(tr.agent.graph.alpha, alpha)


@pytest.mark.parametrize("bilevel,upper_rows,lower_rows", [("alternate", 32, 32), ("split", 8, 24)])
def test_split_holds_out_columns_for_the_upper_level(tmp_path, monkeypatch, bilevel, upper_rows, lower_rows):
    """8 envs x 4 steps: split (fraction 0.25) scores the graph on 2 columns (8 rows) and the network on 6 (24)."""
    tr, ro = trainer_with_rollout(tmp_path, bilevel=bilevel)
    seen = []
    original = tr.agent.score

    def score(obs, *args, relax_graph, relax_gate):
        seen.append((relax_graph, obs.shape[0]))
        return original(obs, *args, relax_graph=relax_graph, relax_gate=relax_gate)

    monkeypatch.setattr(tr.agent, "score", score)
    ppo_update(tr.agent, ro, tr.opt, tr.vnorm, tr.cfg.algo, 10, "bilevel")
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
        gaps.append(ppo_update(tr.agent, ro, tr.opt, tr.vnorm, tr.cfg.algo, 1, "bilevel")["loss/acting_log_prob_gap"])
    assert max(gaps) < 1e-5, gaps
    tr, ro = trainer_with_rollout(tmp_path, gate=True)
    T, B, N, _ = ro.graph.shape
    fresh, _ = tr.agent.graph.sample(T * B, torch.Generator().manual_seed(123))  # a wrong graph: a fresh sample
    assert not torch.equal(fresh.view_as(ro.graph), ro.graph)
    ro.graph = fresh.view_as(ro.graph)
    wrong = ppo_update(tr.agent, ro, tr.opt, tr.vnorm, tr.cfg.algo, 1, "bilevel")["loss/acting_log_prob_gap"]
    assert wrong > 1e-3, wrong


def test_split_mode_updates_the_value_normaliser_from_lower_level_columns_only(tmp_path, monkeypatch):
    """bilevel=split: the upper level's held-out columns never reach the value normaliser (REFERENCE.md 3)."""
    tr, ro = trainer_with_rollout(tmp_path, bilevel="split", split_fraction=0.25)
    seen = []
    original = tr.vnorm.update
    monkeypatch.setattr(tr.vnorm, "update", lambda x: (seen.append(x.numel()), original(x)))
    ppo_update(tr.agent, ro, tr.opt, tr.vnorm, tr.cfg.algo, 10, "bilevel")
    T, B, N = ro.alive.shape  # 4 x 8 x 4; columns 6, 7 are held out; arch_every 5: epochs 4, 9 are upper
    lower_entries = int(ro.active[:, :6].sum())
    assert seen == [lower_entries] * 8  # 8 lower-level epochs, one minibatch each; no upper-level update
    seen.clear()
    tr2, ro2 = trainer_with_rollout(tmp_path / "alt", bilevel="alternate")
    monkeypatch.setattr(tr2.vnorm, "update", lambda x: seen.append(x.numel()))
    ppo_update(tr2.agent, ro2, tr2.opt, tr2.vnorm, tr2.cfg.algo, 10, "bilevel")
    assert len(seen) == 10  # alternate: both levels see the same batch, every epoch updates it


def test_relaxed_graph_gives_the_same_log_probs(tmp_path):
    """Agent.score with relax_graph=True (graph epochs) equals relax_graph=False on stored rollout data, while its
    gradient reaches alpha."""
    tr, ro = trainer_with_rollout(tmp_path, gate=True)
    f = lambda x: x.reshape(-1, *x.shape[2:])  # noqa: E731
    args = (f(ro.obs), f(ro.avail), f(ro.alive), f(ro.actions), f(ro.graph), f(ro.noise), f(ro.gate))
    assert ro.noise.abs().sum() > 0
    logp_hard, ent_hard, v_hard, _ = tr.agent.score(*args, relax_graph=False, relax_gate=True)
    logp_soft, ent_soft, v_soft, _ = tr.agent.score(*args, relax_graph=True, relax_gate=True)
    assert torch.equal(logp_hard, logp_soft)
    assert torch.equal(ent_hard, ent_soft) and torch.equal(v_hard, v_soft)
    tr.agent.graph.alpha.grad = None
    (logp_soft * torch.randn(logp_soft.shape, generator=torch.Generator().manual_seed(0))).sum().backward()
    assert tr.agent.graph.alpha.grad is not None and tr.agent.graph.alpha.grad.abs().sum() > 0
    tr.agent.graph.alpha.grad = None
    logp_hard, _, _, _ = tr.agent.score(*args, relax_graph=False, relax_gate=True)
    logp_hard.sum().backward()
    assert tr.agent.graph.alpha.grad is None


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
    assert tr.agent.graph.k == 1
    assert torch.equal(tr.agent.graph.deterministic(), SIGNAL_SOURCE)
    assert result["eval/success"] == 1.0
