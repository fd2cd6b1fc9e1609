"""The communication graph: who each receiver listens to (docs/method.md, "Communication graph").

alpha [N,N]: row i holds receiver i's scores over senders j. Receivers choose among OTHER agents only:
k = min(max(floor(S*N), 1), N-1) senders per row; the self-loop is always on and is not one of the k.

Rollouts sample a hard k-hot graph per env and step with Gumbel top-k and store (hard, noise). Updates reuse the
stored hard graph and rebuild only the soft part from the current alpha: A = hard - stopgrad(soft) + soft, so the
forward pass equals the acting graph while the gradient reaches alpha. Evaluation uses top-k(alpha) without noise.
"""
from __future__ import annotations

import math
from enum import Enum
import torch
from torch import Tensor, nn

GRAPH_MODES = ("learned", "full", "none", "random")


def num_senders(n_agents: int, sparsity: float) -> int:
    """k: senders each receiver keeps besides itself; min(max(floor(S*N), 1), N-1) (0 when N = 1)."""
    if n_agents < 2:
        return 0
    return min(max(math.floor(sparsity * n_agents + 1e-9), 1), n_agents - 1)


def off_diagonal(n: int, device: torch.device | str | None = None) -> Tensor:
    """[N,N] bool: True off the diagonal."""
    return ~torch.eye(n, dtype=torch.bool, device=device)


def fill_diagonal(x: Tensor, value: float) -> Tensor:
    """x [...,N,N] with its diagonal set to `value`, in place (x must be a fresh tensor); returns x."""
    x.diagonal(dim1=-2, dim2=-1).fill_(value)
    return x


def gumbel(shape: tuple[int, ...], generator: torch.Generator | None, device: torch.device) -> Tensor:
    """Standard Gumbel(0, 1) noise of `shape` (f32), drawn from `generator`."""
    u = torch.rand(shape, generator=generator, device=device).clamp_(1e-10, 1.0 - 1e-7)
    return -torch.log(-torch.log(u))


def topk_hot(scores: Tensor, k: int) -> Tensor:
    """k-hot of the k largest scores per row among j != i.

    scores [..., N, N] f32 -> [..., N, N] bool, exactly k True per row, never on the diagonal."""
    hard = torch.zeros(scores.shape, dtype=torch.bool, device=scores.device)
    if k == 0:
        return hard
    idx = fill_diagonal(scores.clone(), float("-inf")).topk(k, dim=-1).indices
    return hard.scatter_(-1, idx, True)


def soft_scores(alpha: Tensor, noise: Tensor, tau: float) -> Tensor:
    """softmax((alpha + G) / tau) over j != i; alpha [N,N], noise [..., N, N] -> [..., N, N] (diagonal 0)."""
    return torch.softmax(fill_diagonal((alpha + noise) / tau, float("-inf")), dim=-1)


def straight_through(hard: Tensor, soft: Tensor) -> Tensor:
    """hard - stopgrad(soft) + soft: equals `hard` in value, carries soft's gradient. [...,N,N] -> f32."""
    return hard.to(soft.dtype) - soft.detach() + soft


class GraphChoice(str, Enum):
    """How act() picks the graph."""

    SAMPLE = "sample"  # Gumbel top-k (learned); the fixed graph of the other modes
    FULL = "full"  # every other agent (warm-up)
    DETERMINISTIC = "deterministic"  # top-k(alpha) without noise (evaluation, after freeze)


class CommGraph(nn.Module):
    """The graph of one run. mode: learned | full | none | random (a fixed k-hot drawn from `seed`).

    alpha is a parameter only in mode learned (initialised to ones); the other modes have no parameters.
    """

    def __init__(self, n_agents: int, mode: str, sparsity: float, tau: float = 1.0, seed: int = 0) -> None:
        """mode in GRAPH_MODES, sparsity S in (0, 1] (AlgoConfig's defaults and checks); tau only shapes the
        straight-through gradient; seed draws the fixed graph of mode random."""
        super().__init__()
        if mode not in GRAPH_MODES:
            raise ValueError(f"algo.graph={mode!r}; allowed: {list(GRAPH_MODES)}")
        self.n_agents, self.mode, self.tau = n_agents, mode, tau
        self.k = num_senders(n_agents, sparsity)
        if mode == "learned":
            self.alpha = nn.Parameter(torch.ones(n_agents, n_agents))
        if mode == "random":
            g = torch.Generator().manual_seed(seed)
            fixed = topk_hot(torch.rand(n_agents, n_agents, generator=g), self.k)
        elif mode == "full":
            fixed = off_diagonal(n_agents)
        else:
            fixed = torch.zeros(n_agents, n_agents, dtype=torch.bool)
        self.register_buffer("fixed", fixed, persistent=False)
        self.register_buffer("complete", off_diagonal(n_agents), persistent=False)

    @property
    def learned(self) -> bool:
        return self.mode == "learned"

    def full(self, batch: int) -> tuple[Tensor, Tensor]:
        """The full graph for `batch` envs (warmup): hard [B,N,N] bool, noise [B,N,N] zeros."""
        n, dev = self.n_agents, self.fixed.device
        return self.complete.expand(batch, n, n).clone(), torch.zeros(batch, n, n, device=dev)

    def sample(self, batch: int, generator: torch.Generator | None = None) -> tuple[Tensor, Tensor]:
        """The acting graphs of `batch` envs: hard [B,N,N] bool (k per row, no self), noise G [B,N,N] f32.

        learned: top-k(alpha + G) with fresh Gumbel noise; other modes: their fixed graph and zero noise."""
        n, dev = self.n_agents, self.fixed.device
        if not self.learned:
            return self.fixed.expand(batch, n, n).clone(), torch.zeros(batch, n, n, device=dev)
        noise = gumbel((batch, n, n), generator, dev)
        return topk_hot(self.alpha.detach() + noise, self.k), noise

    def pick(self, batch: int, how: GraphChoice, generator: torch.Generator | None) -> tuple[Tensor, Tensor]:
        """(hard [B,N,N] bool, noise [B,N,N] f32) per GraphChoice: a sample, the full graph or top-k(alpha)."""
        if how is GraphChoice.FULL:
            return self.full(batch)
        if how is GraphChoice.DETERMINISTIC:
            n = self.n_agents
            hard = self.deterministic().expand(batch, n, n).clone()
            return hard, torch.zeros(batch, n, n, device=hard.device)
        return self.sample(batch, generator)

    def relaxed(self, hard: Tensor, noise: Tensor) -> Tensor:
        """A [...,N,N] f32: the stored hard graph in value; in mode learned the gradient reaches the current alpha."""
        if not self.learned:
            return hard.float()
        return straight_through(hard, soft_scores(self.alpha, noise, self.tau))

    def deterministic(self) -> Tensor:
        """[N,N] bool: top-k(alpha) without noise (learned) or the fixed graph, for evaluation and freeze."""
        if not self.learned:
            return self.fixed.clone()
        return topk_hot(self.alpha.detach(), self.k)

    def log_prob(self, hard: Tensor, noise: Tensor) -> Tensor:
        """[...,N] f32: per receiver, the log-probability under the current alpha of drawing its senders in `hard`
        [...,N,N] by Gumbel top-k, in the order of their perturbed scores alpha + noise (Plackett-Luce: the k
        senders drawn one by one without replacement, each with the softmax of alpha over the senders left; exact
        for k = 1). The gradient reaches alpha (the score-function estimator, algo.graph_grad=score)."""
        if not self.learned or self.k == 0:
            return torch.zeros(hard.shape[:-1], device=hard.device)
        scores = fill_diagonal(self.alpha.expand(hard.shape).clone(), float("-inf"))  # [...,N,N]
        ranked = torch.where(hard, self.alpha.detach() + noise, float("-inf")).argsort(-1, descending=True)
        left = off_diagonal(self.n_agents, hard.device).expand(hard.shape).clone()
        logp = torch.zeros(hard.shape[:-1], device=hard.device)
        for m in range(self.k):
            j = ranked[..., m: m + 1]  # [...,N,1]: the m-th sender drawn
            logp = logp + scores.gather(-1, j).squeeze(-1) - torch.logsumexp(scores.masked_fill(~left, float("-inf")),
                                                                             dim=-1)
            left = left.scatter(-1, j, False)
        return logp

    def margins(self) -> Tensor:
        """[N] f32: per receiver, alpha's k-th largest minus its (k+1)-th largest among j != i (NaN if k >= N-1)."""
        n = self.n_agents
        if not self.learned or self.k >= n - 1:
            return torch.full((n,), float("nan"))
        a = fill_diagonal(self.alpha.detach().clone(), float("-inf"))
        top = a.topk(self.k + 1, dim=-1).values
        return (top[:, self.k - 1] - top[:, self.k]).cpu()


def receive_mask(adjacency: Tensor, alive: Tensor) -> Tensor:
    """M [B,N,N] f32 (receiver i, sender j): A_ij * alive_j off the diagonal, 1 on it.

    adjacency [B,N,N] f32 (may carry alpha's gradient) | alive [B,N] bool."""
    return fill_diagonal(adjacency * alive[:, None, :].to(adjacency.dtype), 1.0)


def decoder_mask(mask: Tensor) -> Tensor:
    """D [B,N,N] f32 over (agent i, stream position p) from M [B,N,N] (docs/method.md, "Decoder").

    Position 0 holds the start token, position p >= 1 the action of agent p-1.
    D[i, 0] = 1; D[i, p] = M[i, p-1] if p-1 < i else 0: agent i sees earlier agents' actions it receives from."""
    n = mask.shape[-1]
    earlier = torch.ones(n, n, device=mask.device, dtype=mask.dtype).tril(-1)  # 1 where j < i
    seen = (mask * earlier)[..., : n - 1]
    start = torch.ones(mask.shape[:-1] + (1,), device=mask.device, dtype=mask.dtype)
    return torch.cat([start, seen], dim=-1)


def messages_per_step(hard: Tensor, alive: Tensor, gate: Tensor | None = None) -> Tensor:
    """[B] f32: sum over receivers i of g_i * |{j != i : A_ij = 1, j alive}| (docs/method.md, "Temporal gate").

    hard [B,N,N] bool | alive [B,N] bool | gate [B,N] (0/1) or None (always open)."""
    per_receiver = (hard & alive[:, None, :]).sum(-1).float()
    if gate is not None:
        per_receiver = per_receiver * gate.float()
    return per_receiver.sum(-1)
