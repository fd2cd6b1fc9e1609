"""The fast backend (commformer/fast/) against the readable reference (commformer/method/): the fused acting step,
the fused update pass and each fused form, for every graph mode, with and without the gate; the rollout's
pre-drawn randomness against step-by-step draws; the shape-chosen dense kernel.

The fused forms compute the same function in another order, so they agree up to float rounding (values 1e-5,
gradients 1e-4) and take the same discrete decisions on the same noise."""
import pytest
import torch
from core_utils import TINY_PP, make_agent, make_config, random_inputs

from commformer.fast import training as fused
from commformer.fast.acting import ActingWeights
from commformer.fast.kernels import LINEAR_ROWS, linear, onednn_linear_ok
from commformer.fast.policy import FastCommFormerPolicy, RolloutPlan
from commformer.method.attention import RelationAttention
from commformer.method.graph import CommGraph, decoder_mask, receive_mask
from commformer.method.model import CommFormer, ModelShape, neg_gumbel
from commformer.method.policy import Acting, CommFormerPolicy
from commformer.protocol import BILEVEL, WARMUP
from commformer.training.trainer import Trainer

N, O, A = 5, 6, 4
TOL = dict(atol=1e-5, rtol=1e-5)
GRAD_TOL = dict(atol=1e-4, rtol=1e-4)
MODES = [("learned", False), ("learned", True), ("full", False), ("full", True), ("none", False), ("none", True),
         ("random", False), ("random", True)]


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


def pair(mode: str, gated: bool, layers: int = 1):
    """(reference policy, fast policy) sharing one set of weights."""
    ref = make_agent(N, O, A, mode=mode, gate=gated, layers=layers, backend="reference")
    fast = FastCommFormerPolicy(ref.model, ref.graph, ref.schedule)
    if ref.graph.learned:
        with torch.no_grad():  # alpha away from ones, so the relaxation's gradient differs per edge
            ref.graph.alpha.normal_(1.0, 0.5)
    return ref, fast


def reference_act(agent, obs, avail, alive, hard, gate, neg_noise, deterministic):
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


def assert_fast_equals_reference(agent, obs, avail, alive, hard, gate, neg_noise, deterministic):
    """The fused acting step gives the reference's actions exactly, its log-probs and values within TOL."""
    ref = reference_act(agent, obs, avail, alive, hard, gate, neg_noise, deterministic)
    out = fast_act(agent, obs, avail, alive, hard, gate, neg_noise, deterministic)
    assert torch.equal(out[0], ref[0])
    torch.testing.assert_close(out[1], ref[1], **TOL)
    torch.testing.assert_close(out[2], ref[2], **TOL)


# ---- acting ------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("layers", [1, 2])
@pytest.mark.parametrize("mode,gated", MODES)
@pytest.mark.parametrize("deterministic", [False, True])
def test_fused_acting_step_equals_the_reference(layers, mode, gated, deterministic):
    agent = make_agent(N, O, A, mode=mode, gate=gated, layers=layers)  # 2 heads, width 16
    batch = 64
    obs, avail, alive = inputs(batch)
    g = torch.Generator().manual_seed(5)
    hard, _ = agent.graph.sample(batch, g)
    gate = (torch.rand(batch, N, generator=g) < 0.7).float() if gated else None
    neg_noise = neg_gumbel(torch.rand(N, batch, A, generator=g))
    assert_fast_equals_reference(agent, obs, avail, alive, hard, gate, neg_noise, deterministic)


@pytest.mark.parametrize("mode,gated", MODES)
def test_fast_policy_acts_as_the_reference_policy(mode, gated):
    """The two policies' act(), from generators in the same state, draw the same graph, gates and actions (the
    reference draws in the order the fused step does) and give the same log-probs, values and messages."""
    ref, fast = pair(mode, gated)
    obs, avail, alive = inputs(32)
    how = Acting.of("sample", "sample")
    a = ref.act(obs, avail, alive, how, torch.Generator().manual_seed(3))
    b = fast.act(obs, avail, alive, how, torch.Generator().manual_seed(3))
    for key in a.stored:
        assert torch.equal(a.stored[key], b.stored[key]), key
    assert torch.equal(a.actions, b.actions)
    assert torch.equal(ref.messages(a.stored, alive), fast.messages(b.stored, alive))
    torch.testing.assert_close(b.log_prob, a.log_prob, **TOL)
    torch.testing.assert_close(b.value, a.value, **TOL)
    va = ref.value(obs, alive, a.stored, None, how, torch.Generator().manual_seed(4))
    vb = fast.value(obs, alive, b.stored, None, how, torch.Generator().manual_seed(4))
    torch.testing.assert_close(vb, va, **TOL)


def test_fused_acting_with_one_agent_and_one_head_and_obs_norm():
    torch.manual_seed(0)
    for n, obs_norm in ((1, False), (3, False), (3, True)):
        model = CommFormer(ModelShape(n, O, A, hidden=8, heads=1, layers=1, dropout=0.0, gate=False,
                                      gate_init_p=0.9, obs_norm=obs_norm))
        agent = CommFormerPolicy(model, CommGraph(n, "full", 1.0))
        obs = torch.randn(16, n, O) * 3.0 + 1.0
        if obs_norm:  # statistics away from the identity: the fused step must read them too
            agent.model.obs_norm.update(obs.reshape(-1, O) * 0.5 + 2.0)
        avail = torch.ones(16, n, A, dtype=torch.bool)
        alive = torch.ones(16, n, dtype=torch.bool)
        hard, _ = agent.graph.full(16)
        assert_fast_equals_reference(agent, obs, avail, alive, hard, None, neg_gumbel(torch.rand(n, 16, A)), False)


# ---- the update pass -----------------------------------------------------------------------------------------------

@pytest.mark.parametrize("mode,gated", MODES)
@pytest.mark.parametrize("phase,upper", [(BILEVEL, True), (BILEVEL, False), (WARMUP, False)])
def test_fused_update_pass_equals_the_reference_with_gradients(mode, gated, phase, upper):
    """score(): log-probs, entropies, values and the gate's cost within 1e-5, the gradient of a loss built from them
    within 1e-4 for every parameter (alpha through the straight-through graph in upper-level steps, the gate's
    parameters through its straight-through interpolation)."""
    ref, fast = pair(mode, gated, layers=2)
    ref.schedule = fast.schedule = type(ref.schedule)(comm_cost=0.05)
    obs, avail, alive = inputs(48)
    g = torch.Generator().manual_seed(7)
    hard, noise = ref.graph.sample(48, g)
    batch = {"obs": obs, "avail": avail, "alive": alive, "graph": hard, "noise": noise,
             "actions": torch.randint(0, A, (48, N), generator=g)}
    batch["actions"][~avail.gather(-1, batch["actions"][..., None]).squeeze(-1)] = 0
    batch["avail"][..., 0] = True
    if gated:
        batch["gate"] = torch.rand(48, N, generator=g) < 0.6
    w = torch.randn(3, 48, N, generator=g)
    outs, grads = [], []
    for policy in (ref, fast):
        sc = policy.score(batch, phase, upper, relax=True)
        loss = (sc.log_prob * w[0]).sum() + (sc.entropy * w[1]).sum() + (sc.value * w[2]).sum()
        if sc.aux_loss is not None:
            loss = loss + 100.0 * sc.aux_loss
        params = [p for p in policy.parameters() if p.requires_grad]
        outs.append(sc)
        grads.append(torch.autograd.grad(loss, params, allow_unused=True))
    for name in ("log_prob", "entropy", "value"):
        torch.testing.assert_close(getattr(outs[1], name), getattr(outs[0], name), **TOL)
    assert (outs[0].aux_loss is None) == (outs[1].aux_loss is None) == (not gated or phase == WARMUP)
    for g_fast, g_ref in zip(grads[1], grads[0]):
        assert (g_fast is None) == (g_ref is None)
        if g_ref is not None:
            torch.testing.assert_close(g_fast, g_ref, **GRAD_TOL)
    if mode == "learned" and upper:
        alpha_grad = grads[0][[n for n, _ in ref.named_parameters()].index("graph.alpha")]
        assert alpha_grad is not None and float(alpha_grad.abs().sum()) > 0


# ---- fused forms -------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("heads", [1, 2])
def test_fused_self_attention_equals_forward_with_gradients(heads):
    """fast.training.self_attention and its self-only output against RelationAttention.forward under the mask and
    under the identity mask."""
    torch.manual_seed(0)
    att = RelationAttention(16, heads)
    x = torch.randn(8, N, 16, requires_grad=True)
    mask = (torch.rand(8, N, N) < 0.6).float()
    mask.diagonal(dim1=-2, dim2=-1).fill_(1.0)
    mask.requires_grad_(True)
    labels = (~torch.eye(N, dtype=torch.bool)).long()
    outs, grads = [], []
    for use_fused in (False, True):
        if use_fused:
            y = fused.self_attention(att, x, mask, labels == 0, self_only=True)
        else:
            y = (att(x, x, mask, labels), att(x, x, torch.eye(N).expand(8, N, N), labels))
        loss = (y[0] * torch.randn(y[0].shape, generator=torch.Generator().manual_seed(1))).sum() + y[1].square().sum()
        outs.append(y)
        grads.append(torch.autograd.grad(loss, [x, mask] + list(att.parameters())))
    torch.testing.assert_close(outs[1][0], outs[0][0], **TOL)
    torch.testing.assert_close(outs[1][1], outs[0][1], **TOL)
    for g_fused, g_ref in zip(grads[1], grads[0]):
        torch.testing.assert_close(g_fused, g_ref, **GRAD_TOL)


@pytest.mark.parametrize("gated", [False, True])
def test_fused_decoder_equals_the_reference_with_gradients(gated):
    """fast.training.decode (token table, weights summed per token) against CommFormer.decode (the stream's
    self-attention and the cross-attention over positions)."""
    agent = make_agent(N, O, A, gate=gated)
    m = agent.model
    _, _, alive = inputs(16)
    actions = torch.randint(0, A, (16, N), generator=torch.Generator().manual_seed(3))
    enc = torch.randn(16, N, 16, requires_grad=True)
    dmask = decoder_mask(receive_mask((torch.rand(16, N, N) < 0.5).float(), alive))
    gate = (torch.rand(16, N) < 0.5).float() if gated else None
    ref = m.decode(enc, actions, dmask, gate)
    out = fused.decode(m, enc, fused.stream_tokens(m, actions), fused.stream_table(m), dmask, gate)
    torch.testing.assert_close(out, ref, **TOL)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(4))
    params = [enc] + list(m.parameters())
    g_ref = torch.autograd.grad((ref * w).sum(), params, allow_unused=True)
    g_out = torch.autograd.grad((out * w).sum(), params, allow_unused=True)
    for a, b in zip(g_out, g_ref):
        assert (a is None) == (b is None)
        if a is not None:
            torch.testing.assert_close(a, b, **GRAD_TOL)


def test_block_diagonal_heads_equal_per_agent_heads_with_gradients():
    """fast.training.head runs the N per-agent heads as one block-diagonal product (N <= BLOCK_HEADS_MAX); the same
    logits and gradients as one head at a time."""
    m = make_agent(N, O, A).model
    y, enc = torch.randn(16, N, 16), torch.randn(16, N, 16)
    out = fused.head(m, y, enc, slice(None))
    refs = torch.cat([fused.head(m, y[:, i: i + 1], enc[:, i: i + 1], slice(i, i + 1)) for i in range(N)], dim=1)
    torch.testing.assert_close(out, refs, **TOL)
    w = torch.randn(out.shape, generator=torch.Generator().manual_seed(0))
    g_out = torch.autograd.grad((out * w).sum(), [m.head_w, m.head_b])
    g_ref = torch.autograd.grad((refs * w).sum(), [m.head_w, m.head_b])
    for a, b in zip(g_out, g_ref):
        torch.testing.assert_close(a, b, **TOL)


def test_fused_embed_folds_the_layernorm_affine_part_and_memo_follows_changes():
    m = make_agent(N, O, A).model
    with torch.no_grad():
        m.obs_embed[0].weight.normal_()
        m.obs_embed[0].bias.normal_()
    memo = fused.ObsMemo()
    obs = torch.randn(4096, N, O)  # above OBS_MEMO_MIN values: memoised
    torch.testing.assert_close(fused.embed(m, obs, memo), m.embed(obs), **TOL)
    assert memo.entry is not None
    obs.mul_(2.0)  # an in-place change: the memo must not serve the old result
    torch.testing.assert_close(fused.embed(m, obs, memo), m.embed(obs), **TOL)


# ---- the rollout's plan -------------------------------------------------------------------------------------------

def test_acting_weights_follow_parameter_changes():
    """The fused acting weights are rebuilt after an in-place change of any parameter (an optimiser step, a test's
    edit), and act() then matches the update pass of the new weights."""
    agent = make_agent(N, O, A)
    first = agent.acting_weights()
    assert agent.acting_weights() is first  # cached while nothing changes
    opt = torch.optim.Adam(agent.model.parameters(), lr=0.1)
    obs, avail, alive = inputs(32)
    hard, noise = agent.graph.sample(32, torch.Generator().manual_seed(0))
    batch = {"obs": obs, "avail": avail, "alive": alive, "graph": hard, "noise": noise,
             "actions": torch.zeros(32, N, dtype=torch.long)}
    batch["avail"][..., 0] = True
    opt.zero_grad()
    agent.score(batch, BILEVEL, False, relax=True).log_prob.sum().backward()
    opt.step()
    assert agent.acting_weights() is not first
    out = agent.act(obs, avail, alive, Acting.of("sample", "sample"), torch.Generator().manual_seed(1))
    with torch.no_grad():
        sc = agent.score({**batch, **out.stored, "actions": out.actions, "avail": avail}, BILEVEL, False, False)
    torch.testing.assert_close(out.log_prob, sc.log_prob, **TOL)
    torch.testing.assert_close(out.value, sc.value, **TOL)


@pytest.mark.parametrize("graph_how", ["sample", "full", "deterministic"])
def test_rollout_plan_draws_as_acting_step_by_step(graph_how):
    """Randomness drawn for a whole rollout at once gives the same graphs and actions as T act() calls drawing from
    the same generator, and leaves the generator where they would."""
    agent = make_agent(N, O, A)
    obs, avail, alive = inputs(16)
    how = Acting.of(graph_how, "sample")
    g1, g2 = torch.Generator().manual_seed(9), torch.Generator().manual_seed(9)
    plan = agent.plan_rollout(3, 16, how, g1)
    for t in range(3):
        a = agent.act(obs, avail, alive, how, g1, plan=plan, t=t)
        b = agent.act(obs, avail, alive, how, g2)
        assert torch.equal(a.graph, b.graph) and torch.equal(a.stored["noise"], b.stored["noise"])
        assert torch.equal(a.actions, b.actions)
        torch.testing.assert_close(a.log_prob, b.log_prob, **TOL)
    assert torch.equal(torch.rand(4, generator=g1), torch.rand(4, generator=g2))


def test_no_plan_draws_with_a_sampled_gate():
    """value() samples gates from the generator between steps, so a gated policy draws as it goes."""
    agent = make_agent(N, O, A, gate=True)
    assert agent.plan_rollout(3, 4, Acting.of("sample", "sample"), torch.Generator()).draws is None
    assert agent.plan_rollout(3, 4, Acting.of("sample", "open"), torch.Generator()).draws is not None
    assert agent.value_draws(Acting.of("sample", "sample")) and not agent.value_draws(Acting.of("sample", "open"))


@pytest.mark.parametrize("gate", [False, True])
def test_collected_rollout_matches_one_acting_step_by_step(tmp_path, gate):
    """A Collector rollout (pre-drawn randomness, truncation values in one pass after the loop) equals one collected
    with per-step draws and per-step truncation values."""
    cfg = make_config(tmp_path, env=TINY_PP, iterations=1, num_envs=4, rollout_length=45, algo={"gate": gate})
    runs = []
    for per_step in (False, True):
        tr = Trainer(cfg, tmp_path / str(per_step))
        p = tr.policy
        if per_step:  # no pre-drawn randomness, values computed at each truncation
            p.plan_rollout = lambda *a, agent=p: RolloutPlan(agent.acting_weights(), None)
            p.value_draws = lambda how: True
        ro = tr.collector.collect(p, p.acting(p.phase(0, cfg.iterations), False), tr.vnorm.denormalize)
        runs.append(ro)
        tr.logger.close()
    a, b = runs
    assert bool(a.truncated.any()), "the test needs truncated episodes (episode_limit 20 < T)"
    for name in ("obs", "actions", "rewards", "terminated", "truncated"):
        assert torch.equal(getattr(a, name), getattr(b, name)), name
    for key in a.stored:
        assert torch.equal(a.stored[key], b.stored[key]), key
    for name in ("log_prob", "values", "final_values", "last_values"):
        torch.testing.assert_close(getattr(a, name), getattr(b, name), **TOL)


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
        torch.testing.assert_close(a, r, **GRAD_TOL)


def test_onednn_check_is_cached():
    assert onednn_linear_ok() == onednn_linear_ok()
