"""A finished run's checkpoint loaded for evaluation, videos and reports: its config, its policy with the saved
weights, the seed of fresh evaluation episodes and the acting choices of an evaluation."""
from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from typing import Any

import torch

from commformer.errors import UsageError
from commformer.hydra_glue import from_yaml
from commformer.method.policy import Acting
from commformer.policies import build_policy
from commformer.training.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, non_finite

# fresh episodes: train seed + this (+ the chunk index); training's own evaluations use train seed + 1,000,000
EVALUATE_SEED_OFFSET = 2_000_000


def default_seed(train_seed: int) -> int:
    return train_seed + EVALUATE_SEED_OFFSET


@dataclass
class LoadedRun:
    """A checkpoint rebuilt for evaluation."""

    path: Path
    cfg: Any  # commformer.config.Config
    state: dict[str, Any]

    @property
    def iteration(self) -> int:
        return int(self.state.get("iteration", 0))

    @property
    def env_steps(self) -> int:
        return int(self.state.get("env_steps", 0))


def load_run(arg: str | Path) -> LoadedRun:
    """Load a checkpoint and parse its config; CheckpointError (one line) when either is unusable."""
    path = checkpoint_path(arg, key="checkpoint")
    state = load_checkpoint(path, map_location="cpu", key="checkpoint")
    for key in ("config", "policy"):
        if key not in state:
            raise CheckpointError(f"checkpoint {str(path)!r} has no {key!r} entry; expected a file written by "
                                  "commformer's trainer")
    bad = non_finite(state["policy"])
    if bad is not None:
        raise CheckpointError(f"checkpoint {str(path)!r}: {bad} is not finite (the run diverged); refusing to "
                              "evaluate it")
    try:
        cfg = from_yaml(state["config"])
    except (ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} holds no valid config ({first})") from None
    return LoadedRun(path, cfg, state)


def build_eval_policy(run: LoadedRun, spec, device: torch.device):
    """The run's policy with the checkpoint's weights, in eval mode."""
    policy = build_policy(run.cfg.algo, spec, run.cfg.seed, device)
    try:
        policy.load_state_dict(run.state["policy"])
    except (RuntimeError, KeyError, TypeError) as e:
        first = str(e).splitlines()[0][:200]
        raise CheckpointError(f"checkpoint {str(run.path)!r} does not match the model of its own config "
                              f"({first})") from None
    return policy.eval()


def resolve_choices(policy, graph: str, gate: str, cfg, iteration: int):
    """The acting choices (Policy.acting) of an evaluation; 'auto' follows the trainer's evaluation at `iteration`.
    An explicit graph or gate choice applies to CommFormer's policies (their Acting) only."""
    auto = policy.acting(policy.phase(max(iteration - 1, 0), cfg.iterations), True)
    if graph == "auto" and gate == "auto":
        return auto
    if not isinstance(auto, Acting):
        raise UsageError(f"--graph {graph} / --gate {gate}: algo.policy={cfg.algo.policy!r} has no graph or gate "
                         "choices; allowed: auto")
    return Acting.of(auto.graph if graph == "auto" else graph, auto.gate if gate == "auto" else gate)
