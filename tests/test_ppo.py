"""PPO pieces (docs/method.md, "PPO"): GAE with truncation bootstrap, the value normaliser, masked means and the losses,
pinned against numbers worked out by hand and against a plain-loop reference."""
import math

import pytest
import torch

from commformer.training.ppo import (ValueNorm, explained_variance, gae, masked_mean, normalize_advantages, policy_loss,
                            value_loss)


# ---- GAE ----------------------------------------------------------------------------------------------------------

def test_gae_hand_computed():
    """T = 4, four envs, one agent, gamma = lambda = 0.5 (gamma * lambda = 0.25), rewards 1, 2, 3, 4 and values
    0.5, 1, 1.5, 2 everywhere; next values V(obs_{t+1}) = 1, 1.5, 2, 3 unless said otherwise.
      env 0: truncated after t=1, V(final_obs_1) = 10 (bootstrapped)
      env 1: terminated after t=1 (not bootstrapped: next value 1.5 unused)
      env 2: terminated and truncated after t=1, V(final_obs_1) = 10: termination wins
      env 3: no episode end
    deltas d_t = r_t + 0.5 * nv_t * (1 - term_t) - v_t:
      env 0: 1 + 0.5 - 0.5 = 1 | 2 + 5 - 1 = 6 | 3 + 1 - 1.5 = 2.5 | 4 + 1.5 - 2 = 3.5
      env 1, 2: 1 | 2 + 0 - 1 = 1 | 2.5 | 3.5
      env 3: 1 | 2 + 0.75 - 1 = 1.75 | 2.5 | 3.5
    A_t = d_t + 0.25 * (1 - done_t) * A_{t+1}, from t = 3 down:
      env 0: A3 = 3.5, A2 = 2.5 + 0.875 = 3.375, A1 = 6 (episode ended), A0 = 1 + 1.5 = 2.5
      env 1, 2: 3.5, 3.375, A1 = 1, A0 = 1 + 0.25 = 1.25
      env 3: 3.5, 3.375, A1 = 1.75 + 0.84375 = 2.59375, A0 = 1 + 0.6484375 = 1.6484375
    """
    T, Bn = 4, 4
    rewards = torch.tensor([1.0, 2.0, 3.0, 4.0])[:, None, None].expand(T, Bn, 1).clone()
    values = torch.tensor([0.5, 1.0, 1.5, 2.0])[:, None, None].expand(T, Bn, 1).clone()
    next_values = torch.tensor([1.0, 1.5, 2.0, 3.0])[:, None, None].expand(T, Bn, 1).clone()
    next_values[1, 0] = 10.0
    next_values[1, 2] = 10.0
    terminated = torch.zeros(T, Bn, dtype=torch.bool)
    truncated = torch.zeros(T, Bn, dtype=torch.bool)
    truncated[1, 0] = True
    terminated[1, 1] = True
    terminated[1, 2] = truncated[1, 2] = True
    adv, targets = gae(rewards, values, next_values, terminated, truncated, gamma=0.5, lam=0.5)
    expected = torch.tensor([[2.5, 1.25, 1.25, 1.6484375],
                             [6.0, 1.0, 1.0, 2.59375],
                             [3.375, 3.375, 3.375, 3.375],
                             [3.5, 3.5, 3.5, 3.5]])[..., None]
    assert torch.equal(adv, expected)
    assert torch.equal(targets, expected + values)


def gae_loop(rewards, values, next_values, terminated, truncated, gamma, lam):
    """docs/method.md, "PPO", one element at a time in plain Python floats."""
    T, B, N = rewards.shape
    adv = torch.zeros(T, B, N, dtype=torch.float64)
    for b in range(B):
        for n in range(N):
            running = 0.0
            for t in reversed(range(T)):
                term, trunc = bool(terminated[t, b]), bool(truncated[t, b])
                bootstrap = 0.0 if term else gamma * float(next_values[t, b, n])
                delta = float(rewards[t, b, n]) + bootstrap - float(values[t, b, n])
                carry = 0.0 if (term or trunc) else gamma * lam * running
                running = delta + carry
                adv[t, b, n] = running
    return adv


@pytest.mark.parametrize("seed", [0, 1, 2])
def test_gae_matches_loop_reference(seed):
    g = torch.Generator().manual_seed(seed)
    T, B, N = 9, 5, 3
    rewards, values, next_values = (torch.randn(T, B, N, generator=g) for _ in range(3))
    terminated = torch.rand(T, B, generator=g) < 0.25
    truncated = torch.rand(T, B, generator=g) < 0.25
    assert (terminated & truncated).any() and (terminated & ~truncated).any() and (truncated & ~terminated).any()
    adv, targets = gae(rewards, values, next_values, terminated, truncated, 0.97, 0.9)
    ref = gae_loop(rewards, values, next_values, terminated, truncated, 0.97, 0.9).float()
    torch.testing.assert_close(adv, ref, atol=1e-5, rtol=1e-5)
    torch.testing.assert_close(targets, ref + values, atol=1e-5, rtol=1e-5)


def test_gae_rejects_mismatched_shapes():
    x = torch.zeros(3, 2, 2)
    flags = torch.zeros(3, 2, dtype=torch.bool)
    with pytest.raises(ValueError, match=r"next_values \(3, 2\)"):
        gae(x, x, torch.zeros(3, 2), flags, flags, 0.99, 0.95)


def test_gae_constant_reward_with_timeouts_approaches_geometric_value():
    """Reward 1 every step, every episode truncated with V(final) = 1/(1-gamma): the target is 1/(1-gamma)."""
    gamma = 0.9
    T = 50
    v = torch.full((T, 1, 1), 1.0 / (1.0 - gamma))
    truncated = torch.zeros(T, 1, dtype=torch.bool)
    truncated[9::10] = True
    _, targets = gae(torch.ones(T, 1, 1), v, v.clone(), torch.zeros(T, 1, dtype=torch.bool), truncated, gamma, 0.95)
    torch.testing.assert_close(targets, v)


# ---- value normaliser -----------------------------------------------------------------------------------------------

def test_value_norm_stats_after_updates():
    """beta = 0.9, batches [1, 2, 3, 4] then [10]: debiased running means
    mean = (0.09 * 2.5 + 0.1 * 10) / (0.09 + 0.1), E[x^2] = (0.09 * 7.5 + 0.1 * 100) / 0.19."""
    vn = ValueNorm(beta=0.9, var_floor=1e-2)
    vn.update(torch.tensor([1.0, 2.0, 3.0, 4.0]))
    mean, var = vn.stats()
    torch.testing.assert_close(mean, torch.tensor(2.5))
    torch.testing.assert_close(var, torch.tensor(1.25))  # 7.5 - 2.5^2
    vn.update(torch.tensor([[10.0]]))
    m = (0.09 * 2.5 + 0.1 * 10) / 0.19
    sq = (0.09 * 7.5 + 0.1 * 100) / 0.19
    mean, var = vn.stats()
    torch.testing.assert_close(mean, torch.tensor(m))
    torch.testing.assert_close(var, torch.tensor(sq - m * m))


def test_value_norm_round_trip_and_normalised_moments():
    g = torch.Generator().manual_seed(0)
    vn = ValueNorm()
    data = torch.randn(1000, generator=g) * 7.0 + 3.0
    vn.update(data)
    mean, var = vn.stats()
    torch.testing.assert_close(mean, data.mean(), atol=1e-4, rtol=1e-4)
    torch.testing.assert_close(var, data.var(unbiased=False), atol=1e-3, rtol=1e-4)
    z = vn.normalize(data)
    torch.testing.assert_close(z.mean(), torch.tensor(0.0), atol=1e-4, rtol=0)
    torch.testing.assert_close(z.std(unbiased=False), torch.tensor(1.0), atol=1e-4, rtol=0)
    x = torch.randn(4, 3, generator=g)
    torch.testing.assert_close(vn.denormalize(vn.normalize(x)), x)
    torch.testing.assert_close(vn.normalize(vn.denormalize(x)), x)


def test_value_norm_variance_floor_and_fresh_state():
    vn = ValueNorm(var_floor=1e-2)
    mean, var = vn.stats()  # no data yet: mean 0, variance at the floor
    assert float(mean) == 0.0 and float(var) == pytest.approx(1e-2)
    vn.update(torch.full((10,), 5.0))  # constant data: variance 0 -> floor
    mean, var = vn.stats()
    assert float(mean) == pytest.approx(5.0) and float(var) == pytest.approx(1e-2)
    torch.testing.assert_close(vn.normalize(torch.tensor([5.1])), torch.tensor([1.0]), atol=1e-4, rtol=1e-4)
    before = [t.clone() for t in vn.state_dict().values()]
    vn.update(torch.zeros(0))  # an empty batch changes nothing
    assert all(torch.equal(a, b) for a, b in zip(before, vn.state_dict().values()))


# ---- masked means and losses ----------------------------------------------------------------------------------------

def test_masked_mean_ignores_inactive_entries():
    x = torch.tensor([[1.0, 2.0, 1e6], [3.0, -1e6, 6.0]])
    active = torch.tensor([[True, True, False], [True, False, True]])
    assert float(masked_mean(x, active)) == 3.0
    assert float(masked_mean(x, torch.zeros_like(active))) == 0.0
    assert float(masked_mean(x.nan_to_num(), torch.ones_like(active))) == pytest.approx(x.mean().item())


def test_normalize_advantages_over_active_entries():
    adv = torch.tensor([1.0, 3.0, 100.0, 5.0])
    active = torch.tensor([True, True, False, True])
    out = normalize_advantages(adv, active)
    std = math.sqrt(8.0 / 3.0)  # active 1, 3, 5: mean 3, population variance 8/3
    torch.testing.assert_close(out, torch.tensor([-2.0 / std, 0.0, 0.0, 2.0 / std]))


def test_policy_loss_hand_case():
    """clip 0.2; (ratio, advantage) per entry and the clipped surrogate min(r A, clip(r) A):
    (1.5, 2) -> min(3, 2.4) = 2.4 | (0.5, 2) -> min(1, 1.6) = 1 | (1.5, -1) -> min(-1.5, -1.2) = -1.5
    (0.5, -1) -> min(-0.5, -0.8) = -0.8 | (1.1, 1) -> 1.1 | inactive (3, 100) ignored.
    loss = -(2.4 + 1 - 1.5 - 0.8 + 1.1) / 5 = -0.44; 4 of 5 active ratios are outside [0.8, 1.2]."""
    ratio = torch.tensor([1.5, 0.5, 1.5, 0.5, 1.1, 3.0])
    adv = torch.tensor([2.0, 2.0, -1.0, -1.0, 1.0, 100.0])
    active = torch.tensor([True, True, True, True, True, False])
    old = torch.full((6,), -1.2)
    logp = (old + ratio.log()).requires_grad_(True)
    loss, stats = policy_loss(logp, old, adv, active, clip=0.2)
    torch.testing.assert_close(loss, torch.tensor(-0.44))
    torch.testing.assert_close(stats["clip_fraction"], torch.tensor(0.8))
    torch.testing.assert_close(stats["ratio_max"], torch.tensor(1.5))
    torch.testing.assert_close(stats["ratio_mean"], torch.tensor(5.1 / 5))
    r = ratio[:5]
    torch.testing.assert_close(stats["approx_kl"], ((r - 1) - r.log()).mean())
    loss.backward()
    # only unclipped active terms carry gradient: d(-r A / 5)/d logp = -r A / 5 for entries 1 (0.5, 2),
    # 2 (1.5, -1) and 4 (1.1, 1); entries 0 and 3 are clipped, entry 5 is inactive
    expected = torch.tensor([0.0, -0.2, 0.3, 0.0, -0.22, 0.0])
    torch.testing.assert_close(logp.grad, expected)


def test_policy_loss_ratio_one_with_equal_log_probs():
    logp = torch.tensor([-0.3, -2.0])
    loss, stats = policy_loss(logp, logp.clone(), torch.tensor([1.0, -3.0]), torch.tensor([True, True]), 0.2)
    assert float(stats["ratio_max"]) == 1.0 and float(stats["clip_fraction"]) == 0.0
    torch.testing.assert_close(loss, torch.tensor(1.0))  # -(1 - 3) / 2


def test_value_loss_hand_case():
    """clip 0.2, Huber delta 1; the loss takes the larger of the unclipped and the clipped error:
    v 0.5, old 0, target 1: Huber(0.5) = 0.125, clipped v 0.2: Huber(0.8) = 0.32 -> 0.32
    v 0.1, old 0, target 0: both 0.005 -> 0.005
    v 3, old 0, target 0: Huber(3) = 3 - 0.5 = 2.5, clipped 0.2: 0.02 -> 2.5
    inactive (v 100, target -100) ignored; mean = (0.32 + 0.005 + 2.5) / 3."""
    values = torch.tensor([0.5, 0.1, 3.0, 100.0])
    old = torch.zeros(4)
    targets = torch.tensor([1.0, 0.0, 0.0, -100.0])
    active = torch.tensor([True, True, True, False])
    loss = value_loss(values, old, targets, active, clip=0.2, huber_delta=1.0)
    torch.testing.assert_close(loss, torch.tensor(2.825 / 3))


def test_explained_variance():
    t = torch.tensor([1.0, 2.0, 3.0, 4.0, 99.0])
    mask = torch.tensor([True, True, True, True, False])
    assert explained_variance(t, t, mask) == pytest.approx(1.0)
    assert explained_variance(torch.full((5,), 2.5), t, mask) == pytest.approx(0.0)
    assert math.isnan(explained_variance(t, torch.ones(5), mask))


def test_value_loss_without_clipping_is_plain_huber():
    from commformer.training.ppo import value_loss

    v = torch.tensor([[0.0, 3.0]])
    old = torch.tensor([[0.0, 0.0]])
    tgt = torch.tensor([[1.0, 3.0]])
    active = torch.ones(1, 2, dtype=torch.bool)
    # clipped at 0.2: the second entry's clipped prediction is 0.2, far from its target 3.0
    assert value_loss(v, old, tgt, active, 0.2, 10.0) > value_loss(v, old, tgt, active, None, 10.0)
    torch.testing.assert_close(value_loss(v, old, tgt, active, None, 10.0), torch.tensor(0.25))  # (0.5 * 1 + 0) / 2
