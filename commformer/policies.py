"""CommFormer's PolicyEntry (built-in name `commformer`, commformer/protocol.py BUILTIN_POLICIES) and how a run builds
its policy (docs/extending.md)."""
from __future__ import annotations

import torch

from commformer.config import AlgoConfig, CommFormerConfig
from commformer.fast.policy import FastCommFormerPolicy
from commformer.method.graph import CommGraph
from commformer.method.model import CommFormer, ModelShape
from commformer.method.policy import CommFormerPolicy, Schedule
from commformer.protocol import PolicyEntry, policy_entry


def build_commformer(algo: CommFormerConfig, spec, seed: int) -> CommFormerPolicy:
    """The CommFormer network and graph of a run, initialised from `seed`, on the backend algo.backend names."""
    torch.manual_seed(seed)
    model = CommFormer(ModelShape(spec.n_agents, spec.obs_dim, spec.n_actions, algo.hidden, algo.heads, algo.layers,
                                  algo.dropout, algo.gate, algo.gate_init_p, algo.obs_norm))
    graph = CommGraph(spec.n_agents, algo.graph, algo.sparsity, algo.tau, seed=seed)
    schedule = Schedule(algo.warmup_iters, algo.freeze_fraction, algo.arch_every, algo.bilevel, algo.split_fraction,
                        algo.comm_cost, algo.decoder_graph_grad, algo.graph_grad, algo.acting_graph, algo.clip)
    cls = FastCommFormerPolicy if algo.backend == "fast" else CommFormerPolicy
    return cls(model, graph, schedule)


COMMFORMER = PolicyEntry(CommFormerConfig, build_commformer)


def build_policy(algo: AlgoConfig, spec, seed: int, device: torch.device):
    """The run's policy on `device`, its parameters initialised from `seed`."""
    return policy_entry(algo.policy).build(algo, spec, seed).to(device)
