"""scripts/talk_probability.py: the probability that a hard graph's Gumbel draw keeps a pair, recorded over the
live steps of a deterministic evaluation of a real policy on a real env."""
import math

import pytest
import torch
from core_utils import TINY_PP

from commformer.analysis.talk_probability import record_talk, talk_probability
from commformer.baselines.gacomm import GACommConfig, GACommPolicy
from commformer.baselines.magic import MAGICConfig, MAGICPolicy
from commformer.errors import UsageError
from commformer.training.evaluation import evaluate
from envs.registry import make_env


def test_talk_probability_is_the_talk_softmax_of_alive_pairs_only():
    logits = torch.zeros(2, 3, 3, 2)
    logits[..., 1] = math.log(3.0)  # P(talk) = 3 / (1 + 3)
    logits[0, 0, 1, 1] = 0.0  # one pair at 1/2
    alive = torch.tensor([[True, True, True], [True, False, True]])
    p = talk_probability(logits, alive)
    assert p.numel() == 6 + 2  # i != j, both alive
    assert sorted(p.tolist()) == pytest.approx([0.5] + [0.75] * 7)


@pytest.mark.parametrize("cls,cfg,head", [(MAGICPolicy, MAGICConfig, "sched"), (GACommPolicy, GACommConfig, "hard")])
def test_recorded_over_the_live_steps_of_an_evaluation(cls, cfg, head):
    """Every pair's talk logit set to log 3 above silent: every recorded value is 0.75, one per pair of each live
    step (copies that finished their episode keep stepping until the last one ends, and are not recorded), and the
    sampled graphs (sample_actions draws the graph too) keep about 3 in 4 pairs."""
    env = make_env({**TINY_PP, "dim": 3, "episode_limit": 20}, 16, torch.device("cpu"))  # small grid: catches end episodes
    policy = cls(cfg(hidden=8, fc=8), env.spec, seed=0).eval()
    last = getattr(policy, head)[-1]
    with torch.no_grad():
        last.weight.zero_()
        last.bias.copy_(torch.tensor([0.0, math.log(3.0)]))
    record = record_talk(policy, env)
    out = evaluate(policy, env, 3, torch.device("cpu"), None, sample_actions=True)  # moving agents end episodes
    p = torch.cat(record.values)
    live_steps = 16 * out["eval/steps"]
    assert out["eval/steps"] < 20  # some episode ended early, so the live mask matters
    assert p.numel() == round(6 * live_steps)  # 3 predators, all alive: 6 pairs
    assert record.live_steps == round(live_steps)
    assert abs(out["comm/eval_messages_per_step"] - 0.75 * 6) < 0.3  # > 4 standard errors over ~1,700 draws
    assert torch.allclose(p, torch.full_like(p, 0.75))


def test_a_policy_without_a_hard_graph_is_refused():
    env = make_env(TINY_PP, 2, torch.device("cpu"))
    with pytest.raises(UsageError, match="allowed: algo=gacomm, algo=magic"):
        record_talk(torch.nn.Linear(1, 1), env)
