"""The CommFormer model through its policy (docs/method.md, "Attention with the graph", "Decoder", "Temporal gate"):
who can influence whom, masked actions, acting vs scoring, and the temporal gate; every test on both backends (the
readable reference and the fused one).

Dependence checks perturb one agent's observation or action and compare every other agent's encoder output or full
action distribution. Independence is exact (masked weights are exactly 0); each independence test has a control that
shows the same perturbation does reach an agent allowed to see it.
"""
import sys

import pytest
import torch
from core_utils import action_log_probs, make_agent, random_inputs, score

from commformer.method.gates import straight_through_gate
from commformer.method.graph import receive_mask
from commformer.method.policy import Acting

BACKEND = "fast"


@pytest.fixture(autouse=True, params=["fast", "reference"])
def backend(request, monkeypatch):
    monkeypatch.setattr(sys.modules[__name__], "BACKEND", request.param)


def agent_of(*args, **kwargs):
    """core_utils.make_agent on the backend under test."""
    return make_agent(*args, backend=BACKEND, **kwargs)

N, O, A, B = 5, 6, 4, 8
# A k = 2 graph (receiver i = row, senders = columns), no self-loops.
GRAPH = torch.tensor([[0, 1, 0, 0, 1],
                      [0, 0, 1, 1, 0],
                      [1, 0, 0, 0, 1],
                      [1, 1, 0, 0, 0],
                      [0, 0, 1, 1, 0]], dtype=torch.bool)
CHANGED = 1e-5  # a dependence shows as a difference above this


def batch_graph(graph: torch.Tensor = GRAPH, batch: int = B) -> torch.Tensor:
    return graph.expand(batch, *graph.shape).clone()


def perturb_obs(obs: torch.Tensor, j: int) -> torch.Tensor:
    out = obs.clone()
    out[:, j] = torch.randn(out[:, j].shape, generator=torch.Generator().manual_seed(100 + j)) * 2.0
    return out


def perturb_action(actions: torch.Tensor, j: int, n_actions: int = A) -> torch.Tensor:
    out = actions.clone()
    out[:, j] = (out[:, j] + 1) % n_actions
    return out


def encoder_output(agent, obs, alive, hard, gate=None):
    """(enc [B,N,H], value [B,N]) of the encoder under hard [B,N,N] bool."""
    with torch.no_grad():
        return agent.model.encode(agent.model.embed(obs), receive_mask(hard.float(), alive), gate)


def differs(a: torch.Tensor, b: torch.Tensor) -> bool:
    return bool((a - b).abs().max() > CHANGED)


# ---- encoder -----------------------------------------------------------------------------------------------------

def test_one_layer_encoder_output_depends_exactly_on_row_of_m():
    agent = agent_of(N, O, A, layers=1)
    obs, _, alive, _ = random_inputs(B, N, O, A)
    hard = batch_graph()
    enc, value = encoder_output(agent, obs, alive, hard)
    for j in range(N):
        enc2, value2 = encoder_output(agent, perturb_obs(obs, j), alive, hard)
        for i in range(N):
            if i == j or GRAPH[i, j]:
                assert differs(enc[:, i], enc2[:, i]), f"receiver {i} must see sender {j}"
            else:
                assert torch.equal(enc[:, i], enc2[:, i]), f"receiver {i} must not see non-neighbour {j}"
                assert torch.equal(value[:, i], value2[:, i])


def test_dead_sender_is_not_heard():
    agent = agent_of(N, O, A, layers=1)
    obs, _, alive, _ = random_inputs(B, N, O, A)
    alive[:, 0] = False  # agent 0 is a sender of receivers 2 and 3 in GRAPH
    hard = batch_graph()
    enc, _ = encoder_output(agent, obs, alive, hard)
    enc2, _ = encoder_output(agent, perturb_obs(obs, 0), alive, hard)
    assert torch.equal(enc[:, 2], enc2[:, 2]) and torch.equal(enc[:, 3], enc2[:, 3])
    assert differs(enc[:, 0], enc2[:, 0])


def test_dead_agent_is_no_sender_in_the_policy():
    """Through score(): receivers 2 and 3 (which list agent 0 in GRAPH) hear neither the observation nor the
    action of agent 0 once it is dead; while it is alive, they do."""
    agent = agent_of(N, O, A, layers=1)
    obs, avail, alive, actions = random_inputs(B, N, O, A)
    hard = batch_graph()
    for dead, heard in ((True, False), (False, True)):
        alive_now = alive.clone()
        alive_now[:, 0] = not dead
        base = action_log_probs(agent, obs, avail, alive_now, actions, hard)
        by_obs = action_log_probs(agent, perturb_obs(obs, 0), avail, alive_now, actions, hard)
        by_act = action_log_probs(agent, obs, avail, alive_now, perturb_action(actions, 0), hard)
        for i in (2, 3):
            assert differs(base[:, i], by_obs[:, i]) == heard
            assert differs(base[:, i], by_act[:, i]) == heard


# ---- decoder: who influences agent i's action distribution --------------------------------------------------------

@pytest.mark.parametrize("relax_graph", [False, True])
def test_learned_graph_logits_depend_only_on_row_of_m(relax_graph):
    """One encoder layer: agent i's distribution depends on the observation of j iff j is i or in row i of M, and on
    the action of j iff j < i and j is in row i (D of docs/method.md, "Decoder")."""
    agent = agent_of(N, O, A, mode="learned", sparsity=0.4, layers=1)
    assert agent.graph.k == 2
    obs, avail, alive, actions = random_inputs(B, N, O, A)
    hard = batch_graph()
    noise = torch.randn(B, N, N, generator=torch.Generator().manual_seed(7))
    base = action_log_probs(agent, obs, avail, alive, actions, hard, noise, relax_graph=relax_graph)
    for j in range(N):
        by_obs = action_log_probs(agent, perturb_obs(obs, j), avail, alive, actions, hard, noise,
                                  relax_graph=relax_graph)
        by_act = action_log_probs(agent, obs, avail, alive, perturb_action(actions, j), hard, noise,
                                  relax_graph=relax_graph)
        for i in range(N):
            if i == j:
                continue
            in_row = bool(GRAPH[i, j])
            if in_row:
                assert differs(base[:, i], by_obs[:, i]), f"agent {i} must see the observation of sender {j}"
            else:
                assert torch.equal(base[:, i], by_obs[:, i]), f"agent {i} sees the observation of {j}"
            if in_row and j < i:
                assert differs(base[:, i], by_act[:, i]), f"agent {i} must see the action of earlier sender {j}"
            else:
                assert torch.equal(base[:, i], by_act[:, i]), f"agent {i} sees the action of {j}"


def test_no_graph_teacher_forced_logits_are_independent():
    agent = agent_of(N, O, A, mode="none")
    obs, avail, alive, actions = random_inputs(B, N, O, A)
    hard, _ = agent.graph.sample(B)
    assert not hard.any()
    base = action_log_probs(agent, obs, avail, alive, actions, hard)
    for j in range(N):
        by_obs = action_log_probs(agent, perturb_obs(obs, j), avail, alive, actions, hard)
        by_act = action_log_probs(agent, obs, avail, alive, perturb_action(actions, j), hard)
        others = [i for i in range(N) if i != j]
        assert torch.equal(base[:, others], by_obs[:, others])
        assert torch.equal(base[:, others], by_act[:, others])
        assert differs(base[:, j], by_obs[:, j])


def test_full_graph_control_logits_do_depend_on_others():
    agent = agent_of(N, O, A, mode="full")
    obs, avail, alive, actions = random_inputs(B, N, O, A)
    hard, _ = agent.graph.sample(B)
    base = action_log_probs(agent, obs, avail, alive, actions, hard)
    by_obs = action_log_probs(agent, perturb_obs(obs, 0), avail, alive, actions, hard)
    by_act = action_log_probs(agent, obs, avail, alive, perturb_action(actions, 0), hard)
    for i in range(1, N):
        assert differs(base[:, i], by_obs[:, i]) and differs(base[:, i], by_act[:, i])


def act(agent, obs, avail, alive, seed=0, graph_how="sample", gate_how="sample", deterministic=False):
    return agent.act(obs, avail, alive, Acting.of(graph_how, gate_how), torch.Generator().manual_seed(seed),
                     deterministic=deterministic)


@pytest.mark.parametrize("deterministic", [False, True])
def test_no_graph_acting_is_independent(deterministic):
    """Autoregressive acting with graph=none: agent i's action and log-prob do not change when another agent's
    observation (and so its action) changes; with the full graph they do."""
    batch = 64
    obs, avail, alive, _ = random_inputs(batch, N, O, A)
    for mode, independent in (("none", True), ("full", False)):
        agent = agent_of(N, O, A, mode=mode)
        out = act(agent, obs, avail, alive, deterministic=deterministic)
        for j in range(N):
            out2 = act(agent, perturb_obs(obs, j), avail, alive, deterministic=deterministic)
            assert not torch.equal(out.actions[:, j], out2.actions[:, j]) or differs(out.log_prob[:, j],
                                                                                     out2.log_prob[:, j])
            others = [i for i in range(N) if i != j]
            if independent:
                assert torch.equal(out.actions[:, others], out2.actions[:, others])
                assert torch.equal(out.log_prob[:, others], out2.log_prob[:, others])
            else:
                assert differs(out.log_prob[:, others], out2.log_prob[:, others])


# ---- available actions --------------------------------------------------------------------------------------------

def restricted_inputs(batch: int, seed: int = 0):
    obs, _, alive, actions = random_inputs(batch, N, O, A, seed)
    g = torch.Generator().manual_seed(seed + 1)
    avail = torch.rand(batch, N, A, generator=g) < 0.5
    avail[torch.arange(batch), :, torch.randint(0, A, (batch,), generator=g)] = True  # at least one each
    return obs, avail, alive, actions


def test_unavailable_actions_are_never_sampled():
    agent = agent_of(N, O, A, mode="learned")
    with torch.no_grad():  # make the heads prefer action 0 strongly, available or not
        agent.model.head_b[:, 0] = 20.0
    obs, avail, alive, _ = restricted_inputs(512)
    assert not avail[..., 0].all()
    for deterministic in (False, True):
        out = act(agent, obs, avail, alive, deterministic=deterministic)
        assert avail.gather(-1, out.actions[..., None]).all()
        assert torch.isfinite(out.log_prob).all()


def test_unavailable_actions_have_zero_probability():
    agent = agent_of(N, O, A, mode="learned")
    obs, avail, alive, actions = restricted_inputs(16)
    actions = avail.float().argmax(-1)  # available actions to condition on
    hard, noise = agent.graph.sample(16, torch.Generator().manual_seed(0))
    probs = action_log_probs(agent, obs, avail, alive, actions, hard, noise).exp()
    assert (probs[~avail] < 1e-30).all()
    torch.testing.assert_close(probs.sum(-1), torch.ones(16, N))
    # the entropy of an agent with one available action is 0
    single = torch.zeros_like(avail)
    single[..., 2] = True
    with torch.no_grad():
        _, entropy, _, _ = score(agent, obs, single, alive, torch.full((16, N), 2), hard, noise, None,
                                 relax_graph=False, relax_gate=False)
    torch.testing.assert_close(entropy, torch.zeros(16, N), atol=1e-6, rtol=0)


# ---- acting and scoring agree -------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,gate", [("learned", False), ("learned", True), ("full", False), ("none", False),
                                       ("random", True)])
def test_act_and_score_agree(mode, gate):
    """act()'s log-probs and values equal score()'s teacher-forced pass on the same actions and graph."""
    agent = agent_of(N, O, A, mode=mode, gate=gate, layers=2)
    obs, avail, alive, _ = restricted_inputs(32)
    alive[:4, 1] = False  # a few dead agents: zero observation, only action 0
    obs[:4, 1] = 0.0
    avail[:4, 1] = False
    avail[:4, 1, 0] = True
    out = act(agent, obs, avail, alive, seed=3)
    assert (out.gate is not None) == gate
    if mode == "learned":
        assert out.stored["noise"].abs().sum() > 0  # a sampled graph
    for relax in (False, True):
        with torch.no_grad():
            logp, _, value, p = score(agent, obs, avail, alive, out.actions, out.graph, out.stored["noise"], out.gate,
                                      relax_graph=relax, relax_gate=relax)
        torch.testing.assert_close(logp, out.log_prob, atol=1e-5, rtol=1e-5)
        torch.testing.assert_close(value, out.value, atol=1e-5, rtol=1e-5)
        if gate:
            torch.testing.assert_close(p, out.gate_prob)


# ---- temporal gate ------------------------------------------------------------------------------------------------

def test_gate_straight_through_equals_the_decision():
    p = torch.rand(10_000, generator=torch.Generator().manual_seed(0)).requires_grad_(True)
    hard = torch.rand(10_000, generator=torch.Generator().manual_seed(1)) < 0.5
    g = straight_through_gate(hard, p)
    assert torch.equal(g, hard.float())  # exactly the stored decision
    (g * torch.arange(10_000.0)).sum().backward()
    torch.testing.assert_close(p.grad, torch.arange(10_000.0))


def test_closed_gate_isolates_the_agent():
    """A closed gate: agent 1 receives neither observations nor actions; open agents still do (control)."""
    agent = agent_of(N, O, A, mode="full", gate=True, layers=2)
    obs, avail, alive, actions = random_inputs(B, N, O, A)
    hard, _ = agent.graph.sample(B)
    gate = torch.ones(B, N, dtype=torch.bool)
    gate[:, 1] = False
    base = action_log_probs(agent, obs, avail, alive, actions, hard, gate=gate)
    enc, _ = encoder_output(agent, obs, alive, hard, gate.float())
    for j in (0, 2, 3, 4):
        by_obs = action_log_probs(agent, perturb_obs(obs, j), avail, alive, actions, hard, gate=gate)
        by_act = action_log_probs(agent, obs, avail, alive, perturb_action(actions, j), hard, gate=gate)
        enc2, _ = encoder_output(agent, perturb_obs(obs, j), alive, hard, gate.float())
        assert torch.equal(base[:, 1], by_obs[:, 1]) and torch.equal(base[:, 1], by_act[:, 1])
        assert torch.equal(enc[:, 1], enc2[:, 1])
        open_receiver = 2 if j != 2 else 3
        assert differs(base[:, open_receiver], by_obs[:, open_receiver])
    assert differs(base[:, 2], action_log_probs(agent, obs, avail, alive, perturb_action(actions, 0), hard,
                                                gate=gate)[:, 2])


def test_closed_gates_in_acting():
    """p ~ 0 with the evaluation threshold: every gate closed, so acting agents are independent of each other."""
    agent = agent_of(N, O, A, mode="full", gate=True)
    with torch.no_grad():
        agent.model.gate.net[2].bias.fill_(-30.0)
    obs, avail, alive, _ = random_inputs(64, N, O, A)
    out = act(agent, obs, avail, alive, gate_how="threshold", deterministic=True)
    assert not out.gate.any()
    out2 = act(agent, perturb_obs(obs, 0), avail, alive, gate_how="threshold", deterministic=True)
    assert torch.equal(out.log_prob[:, 1:], out2.log_prob[:, 1:])
    assert torch.equal(out.actions[:, 1:], out2.actions[:, 1:])
    opened = act(agent, obs, avail, alive, gate_how="open", deterministic=True)
    opened2 = act(agent, perturb_obs(obs, 0), avail, alive, gate_how="open", deterministic=True)
    assert differs(opened.log_prob[:, 1:], opened2.log_prob[:, 1:])


def test_gate_starts_open():
    agent = agent_of(N, O, A, gate=True)
    obs, avail, alive, _ = random_inputs(B, N, O, A)
    out = act(agent, obs, avail, alive)
    torch.testing.assert_close(out.gate_prob, torch.full((B, N), 0.9))


def gate_from_raw_logit(z: float):
    """A TemporalGate whose raw output (before the soft bound) is z for every input."""
    from commformer.method.gates import TemporalGate

    gate = TemporalGate(8, init_p=0.9)
    with torch.no_grad():
        gate.net[2].bias.fill_(z)
    return gate


def test_gate_slope_stays_above_adams_epsilon_at_extreme_logits():
    """p = sigmoid(6 tanh(z/6)): at a raw logit of +-14 the slope dp/dz is ~1e-4, far above Adam's eps (1e-5);
    an unbounded sigmoid would have ~8e-7 there and stick."""
    h = torch.randn(4, 3, 8, generator=torch.Generator().manual_seed(0))
    for z in (-14.0, 14.0):
        gate = gate_from_raw_logit(z)
        p = gate(h)
        assert 0.002 < float(p.detach().min()) and float(p.detach().max()) < 0.998
        p.sum().backward()
        slope = float(gate.net[2].bias.grad) / p.numel()
        assert slope > 10 * 1e-5, slope


def test_task_gradient_reopens_a_gate_closed_at_raw_logit_minus_14():
    """A closed gate still gets the task's gradient through the straight-through interpolation; from a raw logit of
    -14 it reopens under Adam at the default gate learning rate (5e-3 here: the rate at which gates saturated)."""
    gate = gate_from_raw_logit(-14.0)
    h = torch.randn(16, 3, 8, generator=torch.Generator().manual_seed(0))
    opt = torch.optim.Adam(gate.parameters(), lr=5e-3, eps=1e-5)
    closed = torch.zeros(16, 3, dtype=torch.bool)
    assert float(gate(h).detach().mean()) < 0.01
    for _ in range(3000):
        g = straight_through_gate(closed, gate(h))
        loss = -g.mean()  # the task prefers receiving
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert float(gate(h).detach().mean()) > 0.5
