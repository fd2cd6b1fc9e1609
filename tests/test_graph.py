"""The communication graph (docs/method.md, "Communication graph", "Decoder"): k senders per row among the others,
the receive mask M, the decoder mask D, the straight-through relaxation, the fixed baseline graphs, margins and
message counts."""
import math

import pytest
import torch

from commformer.method.graph import (CommGraph, decoder_mask, messages_per_step, num_senders, receive_mask, topk_hot)

# (N, S, k) with k = min(max(floor(S*N), 1), N-1), worked out by hand.
K_CASES = [
    (2, 0.4, 1),  # floor(0.8) = 0 -> at least 1
    (3, 0.4, 1),  # floor(1.2) = 1
    (4, 0.75, 3),  # floor(3.0) = 3 = N-1
    (5, 0.4, 2),  # floor(2.0) = 2
    (6, 1.0, 5),  # floor(6) = 6 -> at most N-1
    (8, 0.1, 1),  # floor(0.8) = 0 -> 1
    (8, 0.4, 3),  # floor(3.2) = 3
    (10, 0.5, 5),  # floor(5.0) = 5
]


@pytest.mark.parametrize("n,s,k", K_CASES)
def test_num_senders(n, s, k):
    assert num_senders(n, s) == k
    assert CommGraph(n, "learned", s).k == k


@pytest.mark.parametrize("n,s,k", K_CASES)
def test_sampled_graph_has_k_other_senders_per_row(n, s, k):
    graph = CommGraph(n, "learned", s)
    with torch.no_grad():  # a non-uniform alpha, so the check does not rest on ties
        graph.alpha.copy_(torch.randn(n, n, generator=torch.Generator().manual_seed(n)))
    hard, noise = graph.sample(64, torch.Generator().manual_seed(0))
    assert hard.dtype == torch.bool and hard.shape == (64, n, n)
    assert noise.shape == (64, n, n) and noise.dtype == torch.float32
    assert (hard.sum(-1) == k).all()
    assert not hard.diagonal(dim1=-2, dim2=-1).any()
    # the hard graph is top-k of alpha + G among the others: every chosen score beats every unchosen one
    scores = graph.alpha.detach() + noise
    off = ~torch.eye(n, dtype=torch.bool)
    chosen_min = scores.masked_fill(~hard, math.inf).min(-1).values
    unchosen = off & ~hard
    unchosen_max = scores.masked_fill(~unchosen, -math.inf).max(-1).values
    assert (chosen_min > unchosen_max).all()


def test_sampling_is_reproducible_from_the_generator():
    graph = CommGraph(6, "learned", 0.4)
    h1, n1 = graph.sample(8, torch.Generator().manual_seed(5))
    h2, n2 = graph.sample(8, torch.Generator().manual_seed(5))
    h3, _ = graph.sample(8, torch.Generator().manual_seed(6))
    assert torch.equal(h1, h2) and torch.equal(n1, n2)
    assert not torch.equal(h1, h3)


def test_receive_mask_adds_self_loop_and_drops_dead_senders():
    adjacency = torch.tensor([[[0., 1., 1.],
                               [1., 0., 0.],
                               [0., 1., 0.]]])
    alive = torch.tensor([[True, False, True]])  # agent 1 is dead: no sender
    expected = torch.tensor([[[1., 0., 1.],
                              [1., 1., 0.],
                              [0., 0., 1.]]])
    assert torch.equal(receive_mask(adjacency, alive), expected)


def test_receive_mask_ignores_the_diagonal_of_the_adjacency():
    adjacency = torch.ones(1, 2, 2)
    alive = torch.tensor([[True, True]])
    assert torch.equal(receive_mask(adjacency, alive), torch.ones(1, 2, 2))
    assert torch.equal(receive_mask(torch.zeros(1, 2, 2), alive), torch.eye(2)[None])


def test_deterministic_graph_is_topk_of_alpha():
    graph = CommGraph(4, "learned", 0.5)  # k = 2
    assert graph.k == 2
    alpha = torch.tensor([[9.0, 1.0, 3.0, 2.0],  # diagonal ignored: picks 2, 3
                          [0.5, 9.0, 0.1, 0.7],  # picks 0, 3
                          [5.0, 6.0, 9.0, 4.0],  # picks 0, 1
                          [1.0, 3.0, 2.0, 9.0]])  # picks 1, 2
    with torch.no_grad():
        graph.alpha.copy_(alpha)
    expected = torch.tensor([[0, 0, 1, 1],
                             [1, 0, 0, 1],
                             [1, 1, 0, 0],
                             [0, 1, 1, 0]], dtype=torch.bool)
    assert torch.equal(graph.deterministic(), expected)
    assert torch.equal(topk_hot(alpha, 2), expected)


def test_relaxed_equals_stored_hard_graph_and_carries_gradient_to_alpha():
    torch.manual_seed(0)
    graph = CommGraph(5, "learned", 0.4, tau=0.7)
    with torch.no_grad():
        graph.alpha.copy_(torch.randn(5, 5))
    hard, noise = graph.sample(16, torch.Generator().manual_seed(1))
    relaxed = graph.relaxed(hard, noise)
    assert relaxed.dtype == torch.float32
    assert torch.equal(relaxed, hard.float())  # exactly the acting graph in value
    weights = torch.randn(16, 5, 5, generator=torch.Generator().manual_seed(2))
    (relaxed * weights).sum().backward()
    grad = graph.alpha.grad
    assert grad is not None and grad.abs().sum() > 0
    assert torch.isfinite(grad).all()
    # the diagonal is never a choice: no gradient there
    assert torch.equal(grad.diagonal(), torch.zeros(5))


def test_relaxed_gradient_is_the_gumbel_softmax_gradient():
    """d/d alpha of sum(relaxed * W) equals d/d alpha of sum(softmax((alpha + G) / tau) * W) over j != i."""
    n, tau = 4, 0.5
    graph = CommGraph(n, "learned", 0.5, tau=tau)
    hard, noise = graph.sample(3, torch.Generator().manual_seed(0))
    w = torch.randn(3, n, n, generator=torch.Generator().manual_seed(1))
    (graph.relaxed(hard, noise) * w).sum().backward()
    alpha = torch.ones(n, n, requires_grad=True)
    off = ~torch.eye(n, dtype=torch.bool)
    soft = torch.softmax(((alpha + noise) / tau).masked_fill(~off, -math.inf), dim=-1)
    (soft * w).sum().backward()
    torch.testing.assert_close(graph.alpha.grad, alpha.grad)


@pytest.mark.parametrize("n,s", [(3, 0.4), (5, 0.4), (8, 0.25)])
def test_fixed_modes_give_their_graphs(n, s):
    k = num_senders(n, s)
    off = ~torch.eye(n, dtype=torch.bool)
    full, none, rand = CommGraph(n, "full", s), CommGraph(n, "none", s), CommGraph(n, "random", s, seed=11)
    assert torch.equal(full.deterministic(), off)
    assert torch.equal(none.deterministic(), torch.zeros(n, n, dtype=torch.bool))
    r = rand.deterministic()
    assert (r.sum(-1) == k).all() and not r.diagonal().any()
    for graph, fixed in ((full, off), (none, torch.zeros(n, n, dtype=torch.bool)), (rand, r)):
        assert not graph.learned and list(graph.parameters()) == []
        hard, noise = graph.sample(4, torch.Generator().manual_seed(0))
        assert torch.equal(hard, fixed.expand(4, n, n))
        assert torch.equal(noise, torch.zeros(4, n, n))
        assert torch.equal(graph.relaxed(hard, noise), hard.float())


def test_random_mode_same_seed_same_graph():
    a = CommGraph(8, "random", 0.4, seed=3).deterministic()
    b = CommGraph(8, "random", 0.4, seed=3).deterministic()
    others = [CommGraph(8, "random", 0.4, seed=s).deterministic() for s in range(4, 10)]
    assert torch.equal(a, b)
    assert any(not torch.equal(a, o) for o in others)


def test_full_graph_for_warmup():
    graph = CommGraph(3, "learned", 0.4)
    hard, noise = graph.full(2)
    assert torch.equal(hard, (~torch.eye(3, dtype=torch.bool)).expand(2, 3, 3))
    assert torch.equal(noise, torch.zeros(2, 3, 3))


def test_unknown_mode_is_rejected():
    with pytest.raises(ValueError, match=r"algo.graph='foo'.*learned"):
        CommGraph(3, "foo", 0.4)


def decoder_mask_loop(m: torch.Tensor) -> torch.Tensor:
    """D[b, i, p] = 1 if p == 0, else M[b, i, p-1] if 1 <= p <= i, else 0 (docs/method.md, "Decoder"), by plain loops."""
    B, N, _ = m.shape
    d = torch.zeros(B, N, N)
    for b in range(B):
        for i in range(N):
            for p in range(N):
                if p == 0:
                    d[b, i, p] = 1.0
                elif p <= i and m[b, i, p - 1] == 1:
                    d[b, i, p] = 1.0
    return d


@pytest.mark.parametrize("n", [1, 2, 3, 6])
def test_decoder_mask_matches_the_definition(n):
    g = torch.Generator().manual_seed(n)
    hard = torch.rand(5, n, n, generator=g) < 0.5
    alive = torch.rand(5, n, generator=g) < 0.8
    m = receive_mask(hard.float(), alive)
    assert torch.equal(decoder_mask(m), decoder_mask_loop(m))


def test_decoder_mask_hand_case():
    m = torch.tensor([[[1., 0., 1.],
                       [1., 1., 0.],
                       [0., 1., 1.]]])
    # row 0: start only; row 1: start + a_0 (M[1,0] = 1); row 2: start + a_1 (M[2,1] = 1), not a_0 (M[2,0] = 0)
    expected = torch.tensor([[[1., 0., 0.],
                              [1., 1., 0.],
                              [1., 0., 1.]]])
    assert torch.equal(decoder_mask(m), expected)


def test_margins():
    graph = CommGraph(5, "learned", 0.4)  # k = 2
    alpha = torch.tensor([[0.0, 5.0, 4.0, 1.0, 0.5],  # others sorted 5, 4, 1, 0.5: margin 4 - 1 = 3
                          [2.0, 9.0, 2.0, 2.0, 2.0],  # ties: margin 0
                          [1.0, 2.0, 99.0, 3.0, 0.0],  # 3, 2, 1, 0: margin 2 - 1 = 1
                          [0.1, 0.2, 0.3, -5.0, 0.4],  # 0.4, 0.3, 0.2, 0.1: margin 0.1
                          [-1.0, -2.0, -3.0, -4.0, 7.0]])  # -1, -2, -3, -4: margin 1
    with torch.no_grad():
        graph.alpha.copy_(alpha)
    torch.testing.assert_close(graph.margins(), torch.tensor([3.0, 0.0, 1.0, 0.1, 1.0]))


def test_margins_are_nan_without_a_choice():
    assert torch.isnan(CommGraph(3, "learned", 1.0).margins()).all()  # k = N-1: learned == full
    assert torch.isnan(CommGraph(5, "full", 0.4).margins()).all()
    assert CommGraph(5, "none", 0.4).margins().shape == (5,)


def test_messages_per_step():
    hard = torch.tensor([[[0, 1, 1],
                          [1, 0, 0],
                          [1, 1, 0]]], dtype=torch.bool).repeat(2, 1, 1)
    alive = torch.tensor([[True, True, True], [True, False, True]])
    # env 0: 2 + 1 + 2 = 5; env 1 (agent 1 dead): 1 + 1 + 1 = 3
    assert torch.equal(messages_per_step(hard, alive), torch.tensor([5.0, 3.0]))
    gate = torch.tensor([[1, 0, 1], [0, 1, 1]])
    # env 0: 2 + 0 + 2 = 4; env 1: 0 + 1 + 1 = 2
    assert torch.equal(messages_per_step(hard, alive, gate), torch.tensor([4.0, 2.0]))
