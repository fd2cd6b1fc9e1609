"""The communication baselines IC3Net, TarMAC, GA-Comm and MAGIC: each method's defining computation with a control
that fails, dead agents sending nothing, message counts, and the replay of a real run (docs/methods/)."""
from types import SimpleNamespace

import pytest
import torch
from core_utils import TINY_PP, make_config, read_csv

from commformer.baselines.comm_ops import count_pairs, hard_edge, heard, masked_softmax
from commformer.baselines.gacomm import GACommConfig, GACommPolicy, graph_attention
from commformer.baselines.ic3net import IC3NetConfig, IC3NetPolicy, gated_mean
from commformer.baselines.magic import MAGICConfig, MAGICPolicy
from commformer.baselines.tarmac import TarMACConfig, TarMACPolicy, attention_weights
from commformer.training.trainer import Trainer
from commformer.training.update import rows

SPEC = SimpleNamespace(n_agents=4, obs_dim=6, state_dim=24, n_actions=5)  # the fields a policy reads
METHODS = {"ic3net": (IC3NetConfig, IC3NetPolicy), "tarmac": (TarMACConfig, TarMACPolicy),
           "gacomm": (GACommConfig, GACommPolicy), "magic": (MAGICConfig, MAGICPolicy)}
B = 3


def build(name, **keys):
    cfg, cls = METHODS[name]
    return cls(cfg(hidden=8, fc=8, **keys), SPEC, seed=0)


def inputs(seed=0):
    g = torch.Generator().manual_seed(seed)
    return (torch.randn(B, 4, 6, generator=g), torch.ones(B, 4, dtype=torch.bool), torch.randn(B, 4, 8, generator=g))


def open_choices(policy, b=B):
    """Choices under which everyone talks: IC3Net's gates open, GA-Comm's and MAGIC's noise strongly on 'talk'."""
    if isinstance(policy, IC3NetPolicy):
        return {"gate": torch.ones(b, 4, dtype=torch.bool)}
    if isinstance(policy, (GACommPolicy, MAGICPolicy)):
        noise = torch.zeros(b, 4, 4, 2)
        noise[..., 1] = 100.0
        return {"noise": noise}
    return None


def logits_of(policy, obs, alive, h, choices):
    return policy._advance(obs, alive, None, {"actor": h}, choices).logits


# ---- IC3Net ------------------------------------------------------------------------------------------------------
def test_ic3net_closed_gate_removes_exactly_that_senders_contribution():
    torch.manual_seed(0)
    h, alive = torch.randn(B, 4, 8), torch.ones(B, 4, dtype=torch.bool)
    gate = torch.ones(B, 4)
    gate[:, 2] = 0.0
    without = h.clone()
    without[:, 2] = 0.0
    got = gated_mean(h, alive, gate)
    assert torch.allclose(got, gated_mean(without, alive, torch.ones(B, 4)), atol=1e-6)  # same denominator (3)
    assert torch.allclose(got[:, 0], h[:, [1, 3]].sum(1) / 3, atol=1e-6)
    # control: the open gate lets agent 2's state through
    assert not torch.allclose(gated_mean(h, alive, torch.ones(B, 4))[:, 0], got[:, 0], atol=1e-3)


def test_ic3net_gate_log_prob_joins_the_ratio():
    policy = build("ic3net")
    obs, alive, h = inputs()
    out = policy._advance(obs, alive, None, {"actor": h}, {"gate": torch.tensor([[1, 0, 1, 0]] * B).bool()})
    z = policy.gate_head(torch.cat([h, torch.relu(policy.encode(obs))], -1)).squeeze(-1)
    want = torch.where(torch.tensor([1, 0, 1, 0]).bool(), torch.log(torch.sigmoid(z)), torch.log(1 - torch.sigmoid(z)))
    assert torch.allclose(out.choice_log_prob, want, atol=1e-5)
    assert policy.messages({"gate": torch.tensor([[1, 0, 1, 0]]).bool()}, torch.ones(1, 4, dtype=torch.bool)).item() == 6


# ---- TarMAC ------------------------------------------------------------------------------------------------------
def test_tarmac_weights_sum_to_one_over_alive_senders_and_move_with_the_query():
    torch.manual_seed(0)
    q, k = torch.randn(B, 4, 5), torch.randn(B, 4, 5)
    alive = torch.tensor([[True] * 4, [True, False, True, True], [False, False, True, False]])
    a = attention_weights(q, k, heard(alive))
    assert torch.allclose(a[0].sum(-1), torch.ones(4))
    assert torch.allclose(a[1, [0, 2, 3]].sum(-1), torch.ones(3)) and a[1, :, 1].abs().sum() == 0  # dead sender
    assert a[1, 1].abs().sum() == 0 and a[2].abs().sum() == 0  # dead receiver; nobody else alive
    assert torch.all(a.diagonal(dim1=-2, dim2=-1) == 0)  # no receiver attends to itself
    q2 = q.clone()
    q2[0, 0] *= -3.0
    assert not torch.allclose(attention_weights(q2, k, heard(alive))[0, 0], a[0, 0], atol=1e-3)


# ---- GA-Comm and MAGIC's hard graphs -----------------------------------------------------------------------------
def test_hard_graph_masks_the_soft_attention_exactly():
    torch.manual_seed(0)
    logits = torch.randn(B, 4, 4, 2, requires_grad=True)
    hard = hard_edge(logits, torch.zeros(B, 4, 4, 2), tau=1.0) * heard(torch.ones(B, 4, dtype=torch.bool))
    assert set(hard.detach().unique().tolist()) <= {0.0, 1.0}
    w = graph_attention(torch.randn(B, 4, 4), hard)
    assert torch.all(w[hard.detach() == 0] == 0)
    kept = hard.detach().sum(-1) > 0
    assert torch.allclose(w.detach().sum(-1)[kept], torch.ones(int(kept.sum())), atol=1e-6)
    w.sum().backward()  # straight-through: the hard graph's logits get a gradient
    assert logits.grad is not None and logits.grad.abs().sum() > 0
    # control: the soft attention alone (no mask) puts weight on dropped pairs
    loose = masked_softmax(torch.randn(B, 4, 4), heard(torch.ones(B, 4, dtype=torch.bool)))
    assert loose[hard.detach() == 0].abs().sum() > 0


@pytest.mark.parametrize("name", list(METHODS))
def test_dead_agents_send_nothing(name):
    policy = build(name)
    obs, alive, h = inputs()
    alive[:, 2] = False
    choices = open_choices(policy)
    base = logits_of(policy, obs, alive, h, choices)
    for o2, h2 in ((obs.clone(), h.clone()), (obs.clone(), h.clone())):
        o2[:, 2] += 4.0
        h2[:, 2] += 4.0
        assert torch.allclose(logits_of(policy, o2, alive, h2, choices)[:, [0, 1, 3]], base[:, [0, 1, 3]], atol=1e-6)
    # control: an alive agent's observation and state reach the others
    o3, h3 = obs.clone(), h.clone()
    o3[:, 1] += 4.0
    h3[:, 1] += 4.0
    assert not torch.allclose(logits_of(policy, o3, alive, h3, choices)[:, 0], base[:, 0], atol=1e-4)


def test_message_counts():
    alive = torch.tensor([[True, True, True, False]])
    assert build("tarmac").messages({}, alive).item() == 6.0
    graph = torch.zeros(1, 4, 4, dtype=torch.bool)
    graph[0, 0, 1] = graph[0, 2, 1] = True
    assert build("magic").messages({"graph": graph}, alive).item() == 2.0 == count_pairs(graph).item()


# ---- a real run: the update replays what acted -------------------------------------------------------------------
@pytest.mark.parametrize("name", list(METHODS))
def test_a_real_run_replays_its_choices(tmp_path, name):
    cfg = make_config(tmp_path, env=TINY_PP, iterations=3, num_envs=4, rollout_length=8,
                      algo={"policy": name, "name": name, "hidden": 16, "fc": 16})
    tr = Trainer(cfg, tmp_path)
    tr.train()
    _, rows_ = read_csv(tmp_path / "metrics.csv")
    assert all(float(r["loss/acting_log_prob_gap"]) <= 1e-5 for r in rows_)
    ro = tr.collector.collect(tr.policy, None, lambda x: x)
    batch = rows(ro, None, sequences=True)
    gap = lambda lp: float(torch.where(ro.active, (ro.log_prob - lp).abs(), 0.0).max())  # noqa: E731
    with torch.no_grad():
        assert gap(tr.policy.score(batch, "fixed", False, False).log_prob) <= 1e-5
        if name != "tarmac":  # control: replaying other choices than the stored ones moves the log-probs
            other = dict(batch)
            if name == "ic3net":
                other["gate"] = ~batch["gate"]
            else:
                other["noise"] = -batch["noise"]
            assert gap(tr.policy.score(other, "fixed", False, False).log_prob) > 1e-3
    messages = tr.policy.messages(ro.stored, ro.alive)
    assert messages.shape == ro.alive.shape[:2]
    assert float(messages.max()) <= 6.0
    tr.close()


class ScriptedGraphs(torch.nn.Module):
    """A stand-in with a known per-step graph: step t of an episode acts on graph t % 2 (so the mean is known)."""

    def __init__(self, graphs):
        super().__init__()
        self.graphs, self.t = graphs, 0

    def initial_carry(self, b):
        return None

    def reset_carry(self, carry, starts):
        return carry

    def messages(self, stored, alive):
        return torch.zeros(alive.shape[0])

    def act(self, obs, avail, alive, how, generator, deterministic=False, carry=None):
        from commformer.protocol import ActOut

        b, n = alive.shape
        g = self.graphs[self.t % 2].expand(b, n, n)
        self.t += 1
        z = torch.zeros(b, n)
        return ActOut(torch.zeros(b, n, dtype=torch.long), z, z, {}, None, graph=g)


def test_evaluation_records_the_graphs_mean_over_its_steps():
    """EvalDetails.graph is the first step's graph, graph_mean the mean over the live steps: graphs A and B alternate
    every step, and every episode of this seed runs its 4 steps (even), so the mean is (A + B) / 2."""
    from commformer.training.evaluation import evaluate_with_details
    from envs.registry import make_env

    env = make_env({**TINY_PP, "episode_limit": 4}, 2, torch.device("cpu"))
    a = torch.tensor([[0, 1, 0], [0, 0, 1], [1, 0, 0]], dtype=torch.bool)
    b = torch.tensor([[0, 1, 1], [0, 0, 0], [0, 0, 0]], dtype=torch.bool)
    _, details = evaluate_with_details(ScriptedGraphs([a, b]), env, 0, torch.device("cpu"), None, episodes=2)
    assert torch.equal(details.graph, a)
    assert torch.allclose(details.graph_mean, (a.float() + b.float()) / 2), details.graph_mean
