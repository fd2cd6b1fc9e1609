"""The Trainer end to end on tiny configs: the run folder and its metrics.csv, determinism, and resume equivalence."""
import dataclasses
import math

import pytest
import torch
from core_utils import TINY_PP, make_config, read_csv, signal_env, state_equal, without_perf

from commformer.training.trainer import Trainer

DOCUMENTED = ["iteration", "env_steps", "train/return", "eval/return", "eval/success", "eval/steps",
              "comm/messages_per_step", "loss/policy", "loss/value", "loss/entropy", "loss/approx_kl",
              "loss/clip_fraction", "loss/first_epoch_ratio_max", "loss/explained_variance",
              "perf/env_steps_per_s"]


def train(run_dir, **over):
    cfg = make_config(run_dir, **over)
    tr = Trainer(cfg, run_dir)
    result = tr.train()
    return tr, result


def test_tiny_run_writes_the_run_folder(tmp_path):
    """2 envs x 8 steps, 2 iterations on the signal game: one CSV row per iteration, evaluation at the end."""
    tr, result = train(tmp_path, iterations=2)
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert [p.name for p in tmp_path.glob("*.csv")] == ["metrics.csv"]
    assert set(DOCUMENTED) <= set(header), sorted(set(DOCUMENTED) - set(header))
    assert [r["iteration"] for r in rows] == ["1", "2"]
    assert [r["env_steps"] for r in rows] == ["16", "32"]
    assert rows[0]["eval/success"] == "" and rows[1]["eval/success"] != ""  # eval_every 20: only at the end
    assert float(rows[1]["eval/steps"]) == 1.0  # one-step episodes
    assert float(rows[1]["eval/success"]) == result["eval/success"]
    # one-step episodes: 16 finish per iteration, each returns the mean reward over agents
    assert all(r["train/episodes"] == "16" for r in rows)
    assert all(0.0 <= float(r["train/return"]) <= 1.0 for r in rows)
    # 4 agents, k = 1, all alive: 4 messages per step
    assert all(float(r["comm/messages_per_step"]) == 4.0 for r in rows)
    assert all(float(r["perf/env_steps_per_s"]) > 0 for r in rows)
    assert (tmp_path / "checkpoints" / "last.pt").is_file()
    assert "graph: learned" in (tmp_path / "config.yaml").read_text()
    assert (tmp_path / "git_revision.txt").read_text().strip() != ""
    assert tr.iteration == 2 and tr.env_steps == 32


def test_tiny_predator_prey_run(tmp_path):
    """The tiny Predator-Prey (3 predators, 5x5, vision 1, limit 20): 16 steps per env finish no training episode;
    evaluation runs 4 episodes to their end."""
    tr, result = train(tmp_path, env=TINY_PP, iterations=2)
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert len(rows) == 2 and [r["env_steps"] for r in rows] == ["16", "32"]
    assert {"eval/return", "eval/success", "eval/steps", "comm/messages_per_step", "loss/policy"} <= set(header)
    assert all(r["train/episodes"] == "0" for r in rows)
    steps = float(rows[1]["eval/steps"])
    assert 1.0 <= steps <= 20.0 and steps == result["eval/steps"]
    assert -0.05 * 20 <= result["eval/return"] < 0.0  # mean reward over agents >= -0.05 per step
    # 3 predators, k = 1 (floor(0.4 * 3) = 1): 3 messages per step
    assert all(float(r["comm/messages_per_step"]) == 3.0 for r in rows)
    assert (tmp_path / "checkpoints" / "last.pt").is_file()


def test_warmup_acts_on_the_full_graph(tmp_path):
    """warmup_iters=1: iteration 1 acts on the full graph (4 x 3 = 12 messages per step), iteration 2 on k = 1."""
    train(tmp_path, iterations=2, algo={"warmup_iters": 1})
    _, rows = read_csv(tmp_path / "metrics.csv")
    assert [float(r["comm/messages_per_step"]) for r in rows] == [12.0, 4.0]
    assert rows[0]["loss/grad_norm_graph"] == "" and rows[1]["loss/grad_norm_graph"] != ""


def test_same_seed_same_metrics(tmp_path):
    train(tmp_path / "a", iterations=2, algo={"gate": True})
    train(tmp_path / "b", iterations=2, algo={"gate": True})
    header_a, rows_a = read_csv(tmp_path / "a" / "metrics.csv")
    header_b, rows_b = read_csv(tmp_path / "b" / "metrics.csv")
    assert header_a == header_b
    assert without_perf(rows_a) == without_perf(rows_b)
    train(tmp_path / "c", iterations=2, algo={"gate": True}, seed=4)
    _, rows_c = read_csv(tmp_path / "c" / "metrics.csv")
    assert without_perf(rows_a) != without_perf(rows_c)  # the comparison can tell runs apart


def test_resume_equals_straight_run(tmp_path):
    """Signal game (its env saves its state): 4 iterations straight == 2 iterations + resume for 2 more, in the final
    parameters and every metric row (perf/ timings aside)."""
    common = dict(iterations=4, eval_every=2, checkpoint_every=2, algo={"gate": True})
    straight, _ = train(tmp_path / "straight", **common)

    first_cfg = make_config(tmp_path / "resumed", iterations=2, eval_every=2, checkpoint_every=2,
                            algo={"gate": True})
    Trainer(first_cfg, first_cfg.run_dir).train()
    cont_cfg = dataclasses.replace(make_config(tmp_path / "elsewhere", **common),
                                   resume=str(tmp_path / "resumed" / "checkpoints" / "last.pt"))
    resumed = Trainer(cont_cfg, tmp_path / "elsewhere")
    # continues in the folder it is given, its metrics.csv carried over; the checkpoint's own folder is not written
    assert resumed.run_dir == tmp_path / "elsewhere"
    assert resumed.iteration == 2 and resumed.env_steps == 32
    resumed.train()
    assert resumed.iteration == 4 and resumed.env_steps == 64
    assert state_equal(resumed.policy.state_dict(), straight.policy.state_dict())
    assert state_equal(resumed.opt.state_dict(), straight.opt.state_dict())
    _, rows_straight = read_csv(tmp_path / "straight" / "metrics.csv")
    _, rows_resumed = read_csv(tmp_path / "elsewhere" / "metrics.csv")
    assert [r["iteration"] for r in rows_resumed] == ["1", "2", "3", "4"]
    assert without_perf(rows_resumed) == without_perf(rows_straight)
    assert [r["iteration"] for r in read_csv(tmp_path / "resumed" / "metrics.csv")[1]] == ["1", "2"]


def test_resume_drops_rows_logged_after_the_checkpoint(tmp_path):
    """A run that logged iterations past its last checkpoint resumes from the checkpoint: later rows are dropped."""
    cfg = make_config(tmp_path, iterations=3, checkpoint_every=2)
    tr = Trainer(cfg, tmp_path)
    for _ in range(3):  # log three rows but checkpoint after two, as a run killed before its next save would
        tr.logger.log(tr.iterate())
        if tr.iteration == 2:
            tr.save()
    tr.logger.close()
    assert len(read_csv(tmp_path / "metrics.csv")[1]) == 3
    resumed = Trainer(dataclasses.replace(cfg, resume=str(tmp_path)), tmp_path)
    assert resumed.iteration == 2
    assert [r["iteration"] for r in read_csv(tmp_path / "metrics.csv")[1]] == ["1", "2"]
    resumed.train()
    assert [r["iteration"] for r in read_csv(tmp_path / "metrics.csv")[1]] == ["1", "2", "3"]


def test_baselines_run(tmp_path):
    """Each graph mode trains with the same trainer; a fixed graph has no alpha and logs no graph step."""
    for mode, messages in (("full", 12.0), ("none", 0.0), ("random", 4.0)):
        train(tmp_path / mode, iterations=1, algo={"graph": mode})
        header, rows = read_csv(tmp_path / mode / "metrics.csv")
        assert float(rows[0]["comm/messages_per_step"]) == messages
        assert "loss/grad_norm_graph" not in header
        assert math.isfinite(float(rows[0]["loss/policy"]))


def test_cuda_request_without_cuda(tmp_path):
    if torch.cuda.is_available():
        pytest.skip("CUDA is present")
    with pytest.raises(ValueError, match="device='cuda'"):  # checked when the config is loaded, before any env
        Trainer(make_config(tmp_path, device="cuda"), tmp_path)


def test_signal_env_config_is_used(tmp_path):
    cfg = make_config(tmp_path, env=signal_env())
    tr = Trainer(cfg, tmp_path)
    try:
        assert tr.env.spec.n_agents == 4 and tr.env.num_envs == 2 and tr.eval_env.num_envs == 4
    finally:
        tr.logger.close()
        tr.close()


def test_best_checkpoint_follows_the_best_evaluation(tmp_path, monkeypatch):
    """checkpoints/best.pt holds the state of the evaluation with the highest eval/success (later wins ties); the
    summary names it beside last.pt."""
    from commformer.training.checkpoint import load_checkpoint

    cfg = make_config(tmp_path, env=TINY_PP, iterations=4, eval_every=1)
    tr = Trainer(cfg, tmp_path)
    scores = iter([0.5, 0.9, 0.2, 0.9])
    real = tr.evaluate

    def evaluate():
        out = real()
        out["eval/success"] = next(scores)
        return out

    monkeypatch.setattr(tr, "evaluate", evaluate)
    tr.train()
    best = load_checkpoint(tmp_path / "checkpoints" / "best.pt")
    assert best["iteration"] == 4 and best["best"] == {"key": "eval/success", "score": 0.9, "iteration": 4}
    assert load_checkpoint(tmp_path)["iteration"] == 4
    lines = tr.summary_lines()
    assert any(line.startswith("best checkpoint:") and "0.9 at iteration 4" in line for line in lines)


def test_training_options_schedule_lr_entropy_and_scale_rewards(tmp_path, monkeypatch):
    """algo.lr_decay: lr = lr0 * (1 - i / iterations) in iteration i (0-based); algo.entropy_coef_final: the entropy
    weight moves linearly; algo.reward_scale multiplies the rollout's rewards before GAE."""
    import commformer.training.trainer as trainer_module

    cfg = make_config(tmp_path, env=TINY_PP, iterations=4, algo={"lr_decay": True, "lr": 1e-3, "entropy_coef": 0.02,
                                                                 "entropy_coef_final": 0.0, "reward_scale": 10.0})
    tr = Trainer(cfg, tmp_path)
    seen = []
    real = trainer_module.ppo_update

    def spy(agent, ro, opt, vnorm, algo, epochs, ph, *rest):
        seen.append((opt.network.param_groups[0]["lr"], algo.entropy_coef, float(ro.rewards.min())))
        return real(agent, ro, opt, vnorm, algo, epochs, ph, *rest)

    monkeypatch.setattr(trainer_module, "ppo_update", spy)
    rows = [tr.iterate() for _ in range(4)]
    assert [round(lr, 12) for lr, _, _ in seen] == [1e-3, 7.5e-4, 5e-4, 2.5e-4]
    assert [round(e, 12) for _, e, _ in seen] == [0.02, 0.015, 0.01, 0.005]
    assert all(r == pytest.approx(-0.5) for _, _, r in seen)  # -0.05 per predator-step, times 10
    assert rows[1]["train/lr"] == pytest.approx(7.5e-4) and rows[1]["train/entropy_coef"] == pytest.approx(0.015)
    assert all(-1.0 <= row["train/return"] <= 0 for row in rows if row["train/return"] == row["train/return"])


def test_eval_sampled_adds_columns_with_sampled_actions(tmp_path, monkeypatch):
    """eval_sampled=true: every evaluation also reports eval_sampled/... from the same episodes with actions drawn
    from the policy (argmax can stall where sampled actions win)."""
    cfg = make_config(tmp_path, env=TINY_PP, iterations=1, eval_sampled=True, eval_episodes=16)
    tr = Trainer(cfg, tmp_path)
    flags = []
    real = tr.policy.act

    def act(*args, deterministic=False, **kw):
        flags.append(deterministic)
        return real(*args, deterministic=deterministic, **kw)

    monkeypatch.setattr(tr.policy, "act", act)
    result = tr.train()
    assert {"eval_sampled/return", "eval_sampled/success", "eval_sampled/steps"} <= set(result)
    assert True in flags and flags[-1] is False  # the argmax evaluation, then the sampled one
    header, rows = read_csv(tmp_path / "metrics.csv")
    assert "eval_sampled/success" in header and rows[-1]["eval_sampled/success"] != ""


def test_running_obs_norm_merges_batches_exactly():
    """RunningObsNorm.update over batches gives the mean and (population) variance of all rows seen; forward
    standardises with them and clips at +-10."""
    from commformer.method.model import RunningObsNorm

    g = torch.Generator().manual_seed(0)
    norm = RunningObsNorm(4)
    assert torch.equal(norm(torch.tensor([[0.5, -2.0, 3.0, 20.0]])), torch.tensor([[0.5, -2.0, 3.0, 10.0]]))
    parts = [torch.randn(n, 4, generator=g) * torch.tensor([1.0, 5.0, 0.1, 2.0]) + 3.0 for n in (7, 1, 30, 0, 12)]
    for x in parts:
        norm.update(x)
    every = torch.cat(parts).double()
    assert norm.count.item() == 50
    assert torch.allclose(norm.mean.double(), every.mean(0), atol=1e-6)
    assert torch.allclose(norm.var.double(), every.var(0, unbiased=False), rtol=1e-5)
    z = norm(every.float())
    assert torch.allclose(z.mean(0), torch.zeros(4), atol=1e-5) and torch.allclose(z.std(0, unbiased=False),
                                                                                 torch.ones(4), atol=1e-4)


def test_obs_norm_statistics_follow_the_rollouts_and_travel_with_the_checkpoint(tmp_path):
    """algo.obs_norm=true: after each iteration the statistics hold every alive agent-step observed so far; acting
    and the update of one iteration see the same statistics (log-prob gap at rounding level); the statistics are
    part of the model's weights, so the checkpoint restores them. Off (the default), the model has no such
    weights (older checkpoints load unchanged)."""
    from commformer.training.checkpoint import load_checkpoint

    cfg = make_config(tmp_path, env=TINY_PP, iterations=3, algo={"obs_norm": True})
    tr = Trainer(cfg, tmp_path)
    rows = [tr.iterate() for _ in range(3)]
    norm = tr.policy.model.obs_norm
    steps = cfg.num_envs * cfg.rollout_length * tr.env.spec.n_agents
    assert norm.count.item() == 3 * steps  # Predator-Prey: every agent alive at every step
    assert float(norm.var.max()) != 1.0 and float(norm.mean.abs().max()) > 0
    assert all(row["loss/acting_log_prob_gap"] < 1e-4 for row in rows)
    tr.save()
    state = load_checkpoint(tmp_path)["policy"]
    assert torch.equal(state["model.obs_norm.mean"], norm.mean) and state["model.obs_norm.count"].item() == 3 * steps
    off = Trainer(make_config(tmp_path / "off", env=TINY_PP, iterations=1), tmp_path / "off")
    assert off.policy.model.obs_norm is None
    assert not any(k.startswith("obs_norm") for k in off.policy.model.state_dict())
