"""CommFormer's PolicyEntry (built-in name `commformer`, commformer/protocol.py BUILTIN_POLICIES): its algo schema
(CommFormerConfig: the method's keys beside the shared AlgoConfig), its builder on the chosen backend, and how a run
builds its policy (docs/extending.md)."""
from __future__ import annotations

import math
import warnings
from dataclasses import dataclass
from typing import Any, Sequence

import torch

from commformer.config import AlgoConfig, check, check_fraction, check_positive_finite
from commformer.fast.policy import FastCommFormerPolicy
from commformer.method.graph import GRAPH_MODES, CommGraph
from commformer.method.model import CommFormer, ModelShape
from commformer.method.policy import CommFormerPolicy, Schedule, split_sizes
from commformer.protocol import PolicyEntry, policy_entry

BILEVEL_MODES = ("alternate", "split")
BACKENDS = ("fast", "reference")
GRAPH_GRADS = ("straight_through", "score")
ACTING_GRAPHS = ("sample", "topk")


@dataclass
class CommFormerConfig(AlgoConfig):
    """CommFormer and its controls (graph = learned | full | none | random; gate on or off). The defaults are the
    `commformer` preset (conf/algo/commformer.yaml); the other presets set only what differs."""

    backend: str = "fast"
    """fast (fused forms, commformer/fast/) | reference (the readable method, commformer/method/); same function"""
    graph: str = "learned"
    """communication graph: learned | full | none | random (a fixed k-hot drawn from the seed)"""
    sparsity: float = 0.4
    """S: fraction of the other agents each receiver keeps, k = min(max(floor(S*N), 1), N-1)"""
    graph_lr: float = 1e-2
    """Adam learning rate of alpha (the upper level)"""
    tau: float = 1.0
    """Gumbel-softmax temperature of the straight-through gradient (does not change which graph is sampled)"""
    decoder_graph_grad: bool = False
    """also send the graph's gradient through the decoder's action mask D (false: only the encoder's w * M)"""
    hidden: int = 64
    """width of every layer (paper: 64)"""
    heads: int = 1
    """attention heads (paper: 1); must divide hidden"""
    layers: int = 1
    """encoder layers (paper: 1)"""
    dropout: float = 0.0
    """dropout (0 keeps the PPO ratio exact between rollout and update)"""
    gate: bool = False
    """the temporal gate (our design, docs/method.md "Temporal gate"): each agent decides per step whether to receive"""
    gate_lr: float = 5e-4
    """Adam learning rate of the gate's parameters"""
    gate_init_p: float = 0.9
    """initial probability that a gate is open"""
    comm_cost: float = 0.0
    """loss weight of the mean gate-open probability (with gate=true)"""
    obs_norm: bool = False
    """running per-feature observation normalisation (mean / variance of the observations seen so far, kept in the
    model's weights and so in checkpoints), applied before the embedding"""
    arch_every: int = 5
    """alpha steps on every arch_every-th PPO epoch, the network on the others"""
    bilevel: str = "alternate"
    """alternate (both levels on the same data, as released) | split (held-out env columns for the upper level)"""
    split_fraction: float = 0.25
    """fraction of env columns held out for the upper level with bilevel=split"""
    warmup_iters: int = 10
    """iterations on the full graph (gates open) before alpha learns"""
    freeze_fraction: float = 1.0
    """fraction of training after which alpha freezes and top-k(alpha) acts (1.0: never)"""
    warmup_every_graph: bool = False
    """the warm-up applies to every graph mode: full, none and random act on the full graph for the first
    warmup_iters iterations too (one warm-up rule for every arm of a comparison; false: only learned graphs and
    gated runs warm up)"""
    graph_grad: str = "straight_through"
    """how alpha learns: straight_through (the stored sample in value, softmax((alpha + G) / tau) in gradient, through
    the attention weights; released) | score (ours: the sampled graph as an action, its log-probability in a clipped
    surrogate with the receiver's normalised return; docs/method.md, "How alpha learns")"""
    acting_graph: str = "sample"
    """what a learned graph acts on in rollouts: sample (Gumbel top-k per env and step, stored) | topk (top-k(alpha)
    without noise, as the released rollouts; the update relaxes the stored top-k)"""

    def __post_init__(self) -> None:
        super().__post_init__()
        check(self.backend in BACKENDS, f"algo.backend={self.backend!r}; allowed: {list(BACKENDS)}")
        check(self.graph in GRAPH_MODES, f"algo.graph={self.graph!r}; allowed: {list(GRAPH_MODES)}")
        check_fraction("algo.sparsity", self.sparsity)
        check(self.bilevel in BILEVEL_MODES, f"algo.bilevel={self.bilevel!r}; allowed: {list(BILEVEL_MODES)}")
        check(self.graph_grad in GRAPH_GRADS, f"algo.graph_grad={self.graph_grad!r}; allowed: {list(GRAPH_GRADS)}")
        check(self.acting_graph in ACTING_GRAPHS,
               f"algo.acting_graph={self.acting_graph!r}; allowed: {list(ACTING_GRAPHS)}")
        check(not (self.graph_grad == "score" and self.acting_graph == "topk"),
               "algo.graph_grad=score needs algo.acting_graph=sample (the score-function estimator learns from "
               "sampled graphs; top-k(alpha) samples nothing)")
        for key in ("graph_lr", "tau", "gate_lr"):
            check_positive_finite(f"algo.{key}", getattr(self, key))
        for key in ("hidden", "heads", "layers"):
            check(getattr(self, key) >= 1, f"algo.{key}={getattr(self, key)}; must be >= 1")
        check(self.hidden % self.heads == 0,
               f"algo.hidden={self.hidden}; must be divisible by algo.heads={self.heads}")
        check(0.0 <= self.dropout < 1.0, f"algo.dropout={self.dropout}; must be in [0, 1)")
        check(0.003 <= self.gate_init_p <= 0.997,
               f"algo.gate_init_p={self.gate_init_p}; must be in [0.003, 0.997] (the gate's logit is bounded to +-6)")
        check(0 <= self.comm_cost < math.inf, f"algo.comm_cost={self.comm_cost}; must be >= 0 and finite")
        check(0.0 < self.split_fraction < 1.0, f"algo.split_fraction={self.split_fraction}; must be in (0, 1)")
        check(self.warmup_iters >= 0, f"algo.warmup_iters={self.warmup_iters}; must be >= 0")
        check_fraction("algo.freeze_fraction", self.freeze_fraction)
        if self.graph == "learned":
            check(self.arch_every >= 2, f"algo.arch_every={self.arch_every}; a learned graph needs >= 2 "
                                         "(alpha steps every arch_every-th PPO epoch, the network on the others)")
        if self.comm_cost > 0 and not self.gate:
            warnings.warn(f"algo.comm_cost={self.comm_cost} is ignored: algo.gate=false", stacklevel=2)

    def group_lrs(self) -> dict[str, float]:
        return {"network": self.lr, "gate": self.gate_lr}

    @property
    def upper_lr(self) -> float:
        return self.graph_lr

    def level_rows(self, T: int, B: int) -> dict[str, tuple[int, str]]:
        """Rows each level's PPO epochs see ("graph" only when alpha learns). With bilevel=split the bi-level phase
        gives each level its own env columns (split_sizes); warm-up uses all T*B."""
        if self.graph != "learned":
            return super().level_rows(T, B)
        if self.bilevel == "split" and B >= 2:
            up, low = split_sizes(B, self.split_fraction)
            how = "rollout_length={} x {} of num_envs={} columns with algo.bilevel=split"
            return {"network": (T * low, how.format(T, low, B)), "graph": (T * up, how.format(T, up, B))}
        return {"network": (T * B, f"rollout_length={T} x num_envs={B}"),
                "graph": (T * B, f"rollout_length={T} x num_envs={B}")}

    def check_run(self, run: Any) -> None:
        if self.graph == "learned":
            check(run.ppo_epochs >= self.arch_every,
                   f"ppo_epochs={run.ppo_epochs}; a learned graph needs ppo_epochs >= algo.arch_every="
                   f"{self.arch_every} (or set algo.graph=full|none|random)")
            if self.bilevel == "split":
                check(run.num_envs >= 2, f"num_envs={run.num_envs}; algo.bilevel=split needs >= 2 env columns")
        elif self.bilevel == "split":
            warnings.warn(f"algo.bilevel=split is ignored: algo.graph={self.graph!r} has no alpha", stacklevel=2)
        super().check_run(run)

    def check_given(self, run: Any, keys: Sequence[str]) -> None:
        """An explicit algo.warmup_iters that covers every iteration of a run with a learned graph or a gate: alpha
        (and the gate) would never step. (The preset's default on a short smoke run is allowed: its summary says the
        run ended in warm-up.)"""
        if "algo.warmup_iters" not in keys or not (self.graph == "learned" or self.gate):
            return
        what = " and ".join(n for n, on in (("alpha", self.graph == "learned"), ("the gate", self.gate)) if on)
        check(self.warmup_iters < run.iterations,
               f"algo.warmup_iters={self.warmup_iters}; must be < the run's {run.iterations} iterations, or {what} "
               f"never steps (warm-up covers the whole run); lower algo.warmup_iters, or raise total_env_steps to "
               f"at least {(self.warmup_iters + 1) * run.batch_env_steps} ({self.warmup_iters + 1} iterations of "
               f"{run.batch_env_steps} env steps)")

    def run_notes(self, run: Any) -> list[str]:
        """With bilevel=split: the real held-out fraction when split_sizes rounds the asked one (max(1, round(f*B))
        columns, at least one left for the network)."""
        if self.graph != "learned" or self.bilevel != "split" or run.num_envs < 2:
            return []
        up, _ = split_sizes(run.num_envs, self.split_fraction)
        real = up / run.num_envs
        if math.isclose(real, self.split_fraction, rel_tol=1e-9):
            return []
        return [f"algo.split_fraction={self.split_fraction} holds out {up} of {run.num_envs} env columns "
                f"({real:.4g}): max(1, round(split_fraction x num_envs)) columns, at least one left for the network"]


def build_commformer(algo: CommFormerConfig, spec, seed: int) -> CommFormerPolicy:
    """The CommFormer network and graph of a run, initialised from `seed`, on the backend algo.backend names."""
    torch.manual_seed(seed)
    model = CommFormer(ModelShape(spec.n_agents, spec.obs_dim, spec.n_actions, algo.hidden, algo.heads, algo.layers,
                                  algo.dropout, algo.gate, algo.gate_init_p, algo.obs_norm))
    graph = CommGraph(spec.n_agents, algo.graph, algo.sparsity, algo.tau, seed=seed)
    schedule = Schedule(algo.warmup_iters, algo.freeze_fraction, algo.arch_every, algo.bilevel, algo.split_fraction,
                        algo.comm_cost, algo.decoder_graph_grad, algo.graph_grad, algo.acting_graph, algo.clip,
                        algo.warmup_every_graph)
    cls = FastCommFormerPolicy if algo.backend == "fast" else CommFormerPolicy
    return cls(model, graph, schedule)


COMMFORMER = PolicyEntry(CommFormerConfig, build_commformer)


def build_policy(algo: AlgoConfig, spec, seed: int, device: torch.device):
    """The run's policy on `device`, its parameters initialised from `seed`."""
    return policy_entry(algo.policy).build(algo, spec, seed).to(device)
