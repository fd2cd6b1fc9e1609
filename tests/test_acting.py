"""The fast acting path (method/acting.py) and the fused training forms against the readable model code, the
rollout's pre-drawn randomness against step-by-step draws, and the shape-chosen dense kernel (method/kernels.py).

The fused forms compute the same function in another order, so they agree up to float rounding (1e-5 here) and
take the same discrete decisions on the same noise."""
import pytest
import torch
from core_utils import TINY_PP, make_agent, make_config, random_inputs

from commformer.method.acting import ActingWeights
from commformer.method.graph import decoder_mask, receive_mask
from commformer.method.kernels import LINEAR_ROWS, linear, onednn_linear_ok
from commformer.method.model import neg_gumbel
from commformer.method.policy import RolloutPlan
from commformer.training.bilevel import choices, phase
from commformer.training.trainer import Trainer

N, O, A = 5, 6, 4
TOL = dict(atol=1e-5, rtol=1e-5)


def inputs(batch: int, seed: int = 0):
    obs, _, alive, _ = random_inputs(batch, N, O, A, seed)
    g = torch.Generator().manual_seed(seed + 1)
    avail = torch.rand(batch, N, A, generator=g) < 0.6
    avail[torch.arange(batch), :, torch.randint(0, A, (batch,), generator=g)] = True
    alive[: batch // 4, 1] = False  # dead agents: zero observation, only action 0
    obs[: batch // 4, 1] = 0.0
    avail[: batch // 4, 1] = False
    avail[: batch // 4, 1, 0] = True
    return obs, avail, alive


def readable_act(agent, obs, avail, alive, hard, gate, neg_noise, deterministic):
    """(actions, log_prob, value) through CommFormer.embed / encode / autoregressive."""
    m = agent.model
    with torch.no_grad():
        mask = receive_mask(hard.float(), alive)
        enc, value = m.encode(m.embed(obs), mask, gate)
        actions, logp = m.autoregressive(enc, decoder_mask(mask), gate, avail, None, deterministic, neg_noise)
    return actions, logp, value


def fast_act(agent, obs, avail, alive, hard, gate, neg_noise, deterministic):
    fast = ActingWeights.of(agent.model)
    with torch.inference_mode():
        enc, mask_zero = fast.encode(fast.embed(obs), hard, alive, gate)
        return fast.decode(enc, mask_zero, gate, avail, neg_noise, None, deterministic)


@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("mode,gated", [("learned", False), ("learned", True), ("full", False), ("none", False),
                                        ("random", True)])
@pytest.mark.parametrize("deterministic", [False, True])
def test_fast_acting_equals_the_readable_path(layers, mode, gated, deterministic):
    agent = make_agent(N, O, A, mode=mode, gate=gated, layers=layers)  # 2 heads, width 16
    batch = 64
    obs, avail, alive = inputs(batch)
    g = torch.Generator().manual_seed(5)
    hard, _ = agent.graph.sample(batch, g)
    gate = (torch.rand(batch, N, generator=g) < 0.7).float() if gated else None
    neg_noise = neg_gumbel(torch.rand(N, batch, A, generator=g))
    assert_fast_equals_readable(agent, obs, avail, alive, hard, gate, neg_noise, deterministic)


def assert_fast_equals_readable(agent, obs, avail, alive, hard, gate, neg_noise, deterministic):
    """The fused acting step gives the readable path's actions exactly, its log-probs and values within TOL."""
    ref = readable_act(agent, obs, avail, alive, hard, gate, neg_noise, deterministic)
    out = fast_act(agent, obs, avail, alive, hard, gate, neg_noise, deterministic)
    assert torch.equal(out[0], ref[0])
    torch.testing.assert_close(out[1], ref[1], **TOL)
    torch.testing.assert_close(out[2], ref[2], **TOL)


def test_fast_acting_with_one_agent_and_one_head_and_obs_norm():
    from commformer.config import AlgoConfig
    from commformer.method.graph import CommGraph
    from commformer.method.model import CommFormer, ModelShape
    from commformer.method.policy import Agent

    torch.manual_seed(0)
    for n, obs_norm in ((1, False), (3, False), (3, True)):
        algo = AlgoConfig(hidden=8, heads=1, obs_norm=obs_norm)
        agent = Agent(CommFormer(ModelShape.of(n, O, A, algo)), CommGraph(n, "full", 1.0))
        obs = torch.randn(16, n, O) * 3.0 + 1.0
        if obs_norm:  # statistics away from the identity: the fused step must read them too
            agent.model.obs_norm.update(obs.reshape(-1, O) * 0.5 + 2.0)
        avail = torch.ones(16, n, A, dtype=torch.bool)
        alive = torch.ones(16, n, dtype=torch.bool)
        hard, _ = agent.graph.full(16)
        assert_fast_equals_readable(agent, obs, avail, alive, hard, None, neg_gumbel(torch.rand(n, 16, A)), False)


def test_acting_weights_follow_parameter_changes():
    """Agent.acting_weights is rebuilt after an in-place change of any parameter (an optimiser step, a test's edit),
    and act() then matches the readable path of the new weights."""
    agent = make_agent(N, O, A)
    first = agent.acting_weights()
    assert agent.acting_weights() is first  # cached while nothing changes
    opt = torch.optim.Adam(agent.model.parameters(), lr=0.1)
    obs, avail, alive = inputs(32)
    hard, noise = agent.graph.sample(32, torch.Generator().manual_seed(0))
    lp = agent.score(obs, avail, alive, torch.zeros(32, N, dtype=torch.long), hard, noise, None, relax_graph=False,
                     relax_gate=False)[0]
    opt.zero_grad()
    lp.sum().backward()
    opt.step()
    assert agent.acting_weights() is not first
    out = agent.act(obs, avail, alive, "sample", "sample", torch.Generator().manual_seed(1))
    with torch.no_grad():
        lp2, _, value, _ = agent.score(obs, avail, alive, out.actions, out.graph, out.noise, None,
                                       relax_graph=False, relax_gate=False)
    torch.testing.assert_close(out.log_prob, lp2, **TOL)
    torch.testing.assert_close(out.value, value, **TOL)


@pytest.mark.parametrize("graph_how", ["sample", "full", "deterministic"])
def test_rollout_plan_draws_as_acting_step_by_step(graph_how):
    """Randomness drawn for a whole rollout at once gives the same graphs and actions as T act() calls drawing from
    the same generator, and leaves the generator where they would."""
    agent = make_agent(N, O, A)
    obs, avail, alive = inputs(16)
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    plan = agent.plan_rollout(3, 16, graph_how, "sample", g1)
    for t in range(3):
        a = agent.act(obs, avail, alive, graph_how, "sample", g1, plan=plan, t=t)
        b = agent.act(obs, avail, alive, graph_how, "sample", g2)
        assert torch.equal(a.graph, b.graph) and torch.equal(a.noise, b.noise)
        assert torch.equal(a.actions, b.actions)
        torch.testing.assert_close(a.log_prob, b.log_prob, **TOL)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_no_plan_draws_with_a_sampled_gate():
    """Agent.value samples gates from the generator between steps, so a gated agent draws as it goes."""
    agent = make_agent(N, O, A, gate=True)
    assert agent.plan_rollout(3, 4, "sample", "sample", torch.Generator()).draws is None
    assert agent.plan_rollout(3, 4, "sample", "open", torch.Generator()).draws is not None


@pytest.mark.parametrize("gate", [False, True])
def test_collected_rollout_matches_one_acting_step_by_step(tmp_path, gate):
    """A Collector rollout (pre-drawn randomness, truncation values in one pass after the loop) equals one collected
    with per-step draws and per-step truncation values."""
    cfg = make_config(tmp_path, env=TINY_PP, iterations=1, num_envs=4, rollout_length=45, algo={"gate": gate})
    runs = []
    for per_step in (False, True):
        tr = Trainer(cfg, tmp_path / str(per_step))
        if per_step:  # a plan without draws: act() draws step by step, values are computed at each truncation
            tr.agent.plan_rollout = lambda *a, agent=tr.agent: RolloutPlan(agent.acting_weights(), None)
        ph = phase(0, cfg.iterations, cfg.algo)
        ro = tr.collector.collect(tr.agent, *choices(ph, evaluating=False), tr.vnorm.denormalize)
        runs.append(ro)
        tr.logger.close()
    a, b = runs
    assert bool(a.truncated.any()), "the test needs truncated episodes (episode_limit 20 < T)"
    for name in ("obs", "actions", "graph", "noise", "rewards", "terminated", "truncated"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for name in ("log_prob", "values", "final_values", "last_values"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), **TOL)


# ---- fused training forms ------------------------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [1, 2])
def test_fused_self_attention_equals_forward_with_gradients(heads):
    from commformer.method.attention import RelationAttention

    torch.manual_seed(0)
    att = RelationAttention(16, heads)
    x = torch.randn(8, N, 16, requires_grad=True)
    mask = (torch.rand(8, N, N) < 0.6).float()
    mask.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    mask.requires_grad_(True)
    label0 = torch.eye(N, dtype=torch.bool)
    outs, grads = [], []
    for fused in (False, True):
        y = att.self_attention(x, mask, label0, self_only=True) if fused else (att(x, x, mask, label0),
                                                                                att.values(x))
        loss = (y[0] * torch.randn(y[0].shape, generator=torch.Generator().manual_seed(1))).sum() + y[1].square().sum()
        params = [x, mask] + list(att.parameters())
        outs.append(y)
        grads.append(torch.autograd.grad(loss, params))
    torch.testing.assert_close(outs[1][0], outs[0][0], **TOL)
    torch.testing.assert_close(outs[1][1], outs[0][1], **TOL)
    for g_fused, g_ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fused, g_ref, atol=1e-4, rtol=1e-4)


def test_teacher_forced_decoder_equals_attending_over_gathered_positions():
    """decode() scores table tokens and sums weights per token; attending over keys and values gathered per position
    (the readable form) gives the same logits and the same gradients."""
    agent = make_agent(N, O, A, layers=1)
    m, ca = agent.model, agent.model.cross_attn
    obs, avail, alive = inputs(16)
    actions = torch.randint(0, A, (16, N), generator=torch.Generator().manual_seed(3))
    enc = torch.randn(16, N, 16, requires_grad=True)
    dmask = decoder_mask(receive_mask((torch.rand(16, N, N) < 0.5).float(), alive))
    tokens = m.stream_tokens(actions)

    def gathered():
        table = m.stream_table()
        k_tab, v_tab = ca.project_kv(table)
        y = ca.attend(ca.split(ca.q(enc)), k_tab[tokens], v_tab[tokens], dmask, m.dec_label0)
        return m.head(y, enc, slice(None))

    ref = gathered()
    out = m.decode(enc, tokens, m.stream_table(), dmask, None)
    torch.testing.assert_close(out, ref, **TOL)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    params = [enc] + list(m.parameters())
    g_ref = torch.autograd.grad((ref * w).sum(), params, allow_unused=True)
    g_out = torch.autograd.grad((out * w).sum(), params, allow_unused=True)
    for a, b in zip(g_out, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, atol=1e-4, rtol=1e-4)


def test_block_diagonal_heads_equal_per_agent_heads_with_gradients():
    """CommFormer.head runs the N per-agent heads as one block-diagonal product (N <= BLOCK_HEADS_MAX); the same
    logits and gradients as the per-agent einsum."""
    agent = make_agent(N, O, A)
    m = agent.model
    y, enc = torch.randn(16, N, 16), torch.randn(16, N, 16)
    out = m.head(y, enc, slice(None))
    refs = torch.cat([m.head(y[:, i: i + 1], enc[:, i: i + 1], slice(i, i + 1)) for i in range(N)], dim=1)
    torch.testing.assert_close(out, refs, **TOL)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    g_out = torch.autograd.grad((out * w).sum(), [m.head_w, m.head_b])
    g_ref = torch.autograd.grad((refs * w).sum(), [m.head_w, m.head_b])
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, **TOL)


def test_embed_folds_the_layernorm_affine_part():
    agent = make_agent(N, O, A)
    m = agent.model
    with torch.no_grad():
        m.obs_embed[0].weight.normal_()
        m.obs_embed[0].bias.normal_()
    obs = torch.randn(8, N, O)
    torch.testing.assert_close(m.embed(obs), m.obs_embed(obs), **TOL)


# ---- the dense kernel ----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("rows", [8, LINEAR_ROWS * 3])
def test_linear_matches_f_linear_with_gradients(rows):
    g = torch.Generator().manual_seed(0)
    x = torch.randn(rows // 4, 4, 24, generator=g, requires_grad=True)
    w = torch.randn(16, 24, generator=g, requires_grad=True)
    b = torch.randn(16, generator=g, requires_grad=True)
    gy = torch.randn(rows // 4, 4, 16, generator=g)
    y = linear(x, w, b)
    ref = torch.nn.functional.linear(x, w, b)
    torch.testing.assert_close(y, ref, **TOL)
    grads = torch.autograd.grad((y * gy).sum(), (x, w, b))
    ref_grads = torch.autograd.grad((ref * gy).sum(), (x, w, b))
    for a, r in zip(grads, ref_grads):
        torch.testing.assert_close(a, r, atol=1e-4, rtol=1e-4)


def test_onednn_check_is_cached():
    assert onednn_linear_ok() == onednn_linear_ok()
