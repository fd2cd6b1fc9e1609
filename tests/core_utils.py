"""Shared helpers of the tests: tiny configs, small agents, CSV reading (commformer/), and the check of a Step against
the env contract (envs/).

Shapes: B batch, N agents, O obs width, A actions.
"""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any

import torch
import yaml
from omegaconf import OmegaConf
from torch import Tensor

from commformer.config import Config
from commformer.hydra_glue import load_config
from commformer.fast.policy import FastCommFormerPolicy
from commformer.method.graph import CommGraph
from commformer.method.model import CommFormer, ModelShape
from commformer.method.policy import CommFormerPolicy, Schedule
from commformer.protocol import BILEVEL
from envs.core import EPISODE_KEYS, EnvSpec, Step

ROOT = Path(__file__).resolve().parent.parent
CONF = ROOT / "conf"

# A tiny Predator-Prey: the released 5x5 level with a small evaluation.
TINY_PP = {"name": "pp_tiny", "family": "predator_prey", "eval_episodes": 4, "dim": 5, "n_predators": 3,
           "vision": 1, "episode_limit": 20}


def env_config(name: str) -> dict[str, Any]:
    """conf/env/<name>.yaml as a dict."""
    return yaml.safe_load((CONF / "env" / f"{name}.yaml").read_text())


def signal_env(eval_episodes: int = 16) -> dict[str, Any]:
    """The signal game of conf/env/signal.yaml (4 agents, agent ids on) with a small evaluation."""
    return {**env_config("signal"), "eval_episodes": eval_episodes}


def make_config(run_dir: Path | None = None, env: dict[str, Any] | None = None, iterations: int = 2,
                **overrides: Any) -> Config:
    """A validated Config: 2 envs, 8 steps, `iterations` iterations, quiet logger, no warmup.

    overrides: top-level keys, plus `algo` / `logger` dicts merged onto the defaults below."""
    env = dict(env if env is not None else signal_env())
    num_envs = overrides.pop("num_envs", 2)
    rollout_length = overrides.pop("rollout_length", 8)
    raw: dict[str, Any] = {
        "env": env, "num_envs": num_envs, "rollout_length": rollout_length,
        "total_env_steps": num_envs * rollout_length * iterations, "ppo_epochs": 5, "seed": 3,
        "eval_episodes": 4, "algo": {"warmup_iters": 0},
        "logger": {"wandb": "disabled", "progress": False},
    }
    if run_dir is not None:
        raw["run_dir"] = str(run_dir)
    algo = overrides.pop("algo", {})
    if "policy" in algo:  # a policy of its own: its schema has none of CommFormer's keys
        raw["algo"] = {}
    raw["algo"].update(algo)
    raw["logger"].update(overrides.pop("logger", {}))
    raw.update(overrides)
    return load_config(OmegaConf.create(raw))


def make_agent(n_agents: int = 4, obs_dim: int = 6, n_actions: int = 5, mode: str = "learned",
               sparsity: float = 0.4, gate: bool = False, layers: int = 1, seed: int = 0,
               head_std: float = 1.0, backend: str = "fast", schedule: Schedule = Schedule()) -> CommFormerPolicy:
    """A small CommFormer policy (fast backend unless `backend="reference"`) with its action heads re-initialised at
    `head_std` (the default init is near zero, which makes dependence checks between agents numerically weak)."""
    torch.manual_seed(seed)
    model = CommFormer(ModelShape(n_agents, obs_dim, n_actions, hidden=16, heads=2, layers=layers, dropout=0.0,
                                  gate=gate, gate_init_p=0.9))
    with torch.no_grad():
        model.head_w.normal_(0.0, head_std)
    cls = FastCommFormerPolicy if backend == "fast" else CommFormerPolicy
    return cls(model, CommGraph(n_agents, mode, sparsity, seed=seed), schedule)


def score(agent: CommFormerPolicy, obs: Tensor, avail: Tensor, alive: Tensor, actions: Tensor, hard: Tensor,
          noise: Tensor | None = None, gate: Tensor | None = None, relax_graph: bool = False,
          relax_gate: bool = False) -> tuple[Tensor, Tensor, Tensor, Tensor | None]:
    """(log_prob, entropy, value, p) of the policy's update pass over stored decisions, in the bi-level phase:
    relax_graph builds alpha's straight-through gradient (an upper-level step), relax_gate the gate's (relax_graph
    implies relax_gate)."""
    batch = {"obs": obs, "avail": avail, "alive": alive, "actions": actions, "graph": hard,
             "noise": torch.zeros(hard.shape) if noise is None else noise}
    if gate is not None:
        batch["gate"] = gate
    sc = agent.score(batch, BILEVEL, upper=relax_graph, relax=relax_graph or relax_gate)
    p = agent.model.gate_prob(agent.model.embed(obs)) if agent.model.gate is not None else None
    return sc.log_prob, sc.entropy, sc.value, p


def random_inputs(batch: int, n_agents: int, obs_dim: int, n_actions: int,
                  seed: int = 0) -> tuple[Tensor, Tensor, Tensor, Tensor]:
    """(obs [B,N,O] f32, avail [B,N,A] bool (all available), alive [B,N] bool (all alive), actions [B,N] long)."""
    g = torch.Generator().manual_seed(seed)
    obs = torch.randn(batch, n_agents, obs_dim, generator=g)
    avail = torch.ones(batch, n_agents, n_actions, dtype=torch.bool)
    alive = torch.ones(batch, n_agents, dtype=torch.bool)
    actions = torch.randint(0, n_actions, (batch, n_agents), generator=g)
    return obs, avail, alive, actions


def action_log_probs(agent: CommFormerPolicy, obs: Tensor, avail: Tensor, alive: Tensor, actions: Tensor, hard: Tensor,
                     noise: Tensor | None = None, gate: Tensor | None = None,
                     relax_graph: bool = False) -> Tensor:
    """[B,N,A]: agent i's teacher-forced log-probabilities of every action, given the earlier agents' `actions`.

    Built from the policy's score only: agent i's log-prob of its own action depends on a_0..a_i, so setting a_i = a and
    reading column i gives log pi_i(a | ...) for each a."""
    B, N = actions.shape
    A = avail.shape[-1]
    noise = torch.zeros(hard.shape) if noise is None else noise
    out = torch.zeros(B, N, A)
    with torch.no_grad():
        for i in range(N):
            for a in range(A):
                acts = actions.clone()
                acts[:, i] = a
                logp = score(agent, obs, avail, alive, acts, hard, noise, gate, relax_graph=relax_graph,
                             relax_gate=gate is not None)[0]
                out[:, i, a] = logp[:, i]
    return out


def read_csv(path: Path) -> tuple[list[str], list[dict[str, str]]]:
    """(header, rows) of a CSV file."""
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        return list(reader.fieldnames or []), list(reader)


def without_perf(rows: list[dict[str, str]]) -> list[dict[str, str]]:
    """Rows without the timing columns (perf/...), which differ between identical runs."""
    return [{k: v for k, v in r.items() if not k.startswith("perf/")} for r in rows]


def state_equal(a: Any, b: Any) -> bool:
    """Deep equality of nested dicts / lists / tensors / numbers (tensors: same dtype, shape and values)."""
    if isinstance(a, Tensor) or isinstance(b, Tensor):
        return (isinstance(a, Tensor) and isinstance(b, Tensor) and a.dtype == b.dtype and a.shape == b.shape
                and bool(torch.equal(a, b)))
    if isinstance(a, dict):
        return isinstance(b, dict) and a.keys() == b.keys() and all(state_equal(a[k], b[k]) for k in a)
    if isinstance(a, (list, tuple)):
        return (isinstance(b, (list, tuple)) and len(a) == len(b)
                and all(state_equal(x, y) for x, y in zip(a, b)))
    return a == b


def check_step(step: Step, num_envs: int, spec: EnvSpec) -> None:
    """Assert that a Step of an env matches the contract of envs.core (shapes and dtypes, the episode keys, at least
    one available action per agent)."""
    B, N, O, S, A = num_envs, spec.n_agents, spec.obs_dim, spec.state_dim, spec.n_actions
    want = {
        "obs": ((B, N, O), torch.float32), "state": ((B, S), torch.float32),
        "avail_actions": ((B, N, A), torch.bool), "reward": ((B, N), torch.float32),
        "terminated": ((B,), torch.bool), "truncated": ((B,), torch.bool),
        "alive": ((B, N), torch.bool), "active": ((B, N), torch.bool),
        "final_obs": ((B, N, O), torch.float32), "final_state": ((B, S), torch.float32),
        "final_alive": ((B, N), torch.bool),
    }
    for name, (shape, dtype) in want.items():
        t = getattr(step, name)
        assert tuple(t.shape) == shape and t.dtype == dtype, (
            f"Step.{name}: expected {shape} {dtype}, got {tuple(t.shape)} {t.dtype}")
    for key in EPISODE_KEYS + spec.task_metrics:
        assert key in step.episode, f"Step.episode lacks {key!r} (has {sorted(step.episode)})"
        assert tuple(step.episode[key].shape) == (B,), f"Step.episode[{key!r}]: expected ({B},)"
    assert bool(step.avail_actions.any(-1).all()), "every agent needs at least one available action"


def run_cli(argv: list[str], cwd: Path, capsys) -> tuple[int, str]:
    """(exit status, stderr) of commformer.cli.train(argv) run in-process from cwd."""
    import pytest

    from commformer.cli import train as train_cli

    old = os.getcwd()
    os.chdir(cwd)
    try:
        with pytest.raises(SystemExit) as info:
            train_cli(argv)
    finally:
        os.chdir(old)
    return int(info.value.code), capsys.readouterr().err
