"""Typed config schemas. Every range check lives here (__post_init__), reached by converting the composed Hydra
config once with `load_config`. Values live in conf/*.yaml; these dataclasses are the schema and its checks.
"""
from __future__ import annotations

import warnings
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from commformer.graph import GRAPH_MODES

BILEVEL_MODES = ("alternate", "split")
WANDB_MODES = ("offline", "online", "disabled")


class ConfigError(ValueError):
    """A bad config value; the message is one line naming the key, the value and what is allowed."""


def _check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def _positive(name: str, value: float) -> None:
    _check(value > 0, f"{name}={value}; must be > 0")


def _fraction(name: str, value: float, low_open: bool = True) -> None:
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value <= 1.0)
    _check(ok, f"{name}={value}; must be in {'(0, 1]' if low_open else '[0, 1]'}")


@dataclass
class AlgoConfig:
    """CommFormer and its baselines (graph = learned | full | none | random; gate on or off)."""

    name: str = "commformer"
    graph: str = "learned"
    sparsity: float = 0.4
    graph_lr: float = 1e-2
    tau: float = 1.0
    decoder_graph_grad: bool = False
    hidden: int = 64
    heads: int = 1
    layers: int = 1
    dropout: float = 0.0
    gate: bool = False
    gate_lr: float = 5e-4
    gate_init_p: float = 0.9
    comm_cost: float = 0.0
    lr: float = 5e-4
    adam_eps: float = 1e-5
    clip: float = 0.2
    value_coef: float = 1.0
    entropy_coef: float = 0.01
    huber_delta: float = 10.0
    value_norm: bool = True
    gamma: float = 0.99
    gae_lambda: float = 0.95
    max_grad_norm: float = 10.0
    minibatches: int = 1
    arch_every: int = 5
    bilevel: str = "alternate"
    split_fraction: float = 0.25
    warmup_iters: int = 10
    freeze_fraction: float = 1.0

    def __post_init__(self) -> None:
        _check(self.graph in GRAPH_MODES, f"algo.graph={self.graph!r}; allowed: {list(GRAPH_MODES)}")
        _fraction("algo.sparsity", self.sparsity)
        _check(self.bilevel in BILEVEL_MODES, f"algo.bilevel={self.bilevel!r}; allowed: {list(BILEVEL_MODES)}")
        for key in ("graph_lr", "tau", "lr", "adam_eps", "gate_lr", "max_grad_norm", "huber_delta"):
            _positive(f"algo.{key}", getattr(self, key))
        for key in ("hidden", "heads", "layers", "minibatches"):
            _check(getattr(self, key) >= 1, f"algo.{key}={getattr(self, key)}; must be >= 1")
        _check(self.hidden % self.heads == 0,
               f"algo.hidden={self.hidden}; must be divisible by algo.heads={self.heads}")
        _check(0.0 <= self.dropout < 1.0, f"algo.dropout={self.dropout}; must be in [0, 1)")
        _check(0.0 < self.gate_init_p < 1.0, f"algo.gate_init_p={self.gate_init_p}; must be in (0, 1)")
        _check(self.comm_cost >= 0, f"algo.comm_cost={self.comm_cost}; must be >= 0")
        _check(0.0 < self.clip < 1.0, f"algo.clip={self.clip}; must be in (0, 1)")
        for key in ("value_coef", "entropy_coef"):
            _check(getattr(self, key) >= 0, f"algo.{key}={getattr(self, key)}; must be >= 0")
        _fraction("algo.gamma", self.gamma)
        _fraction("algo.gae_lambda", self.gae_lambda, low_open=False)
        _check(0.0 < self.split_fraction < 1.0, f"algo.split_fraction={self.split_fraction}; must be in (0, 1)")
        _check(self.warmup_iters >= 0, f"algo.warmup_iters={self.warmup_iters}; must be >= 0")
        _fraction("algo.freeze_fraction", self.freeze_fraction)
        if self.graph == "learned":
            _check(self.arch_every >= 2, f"algo.arch_every={self.arch_every}; a learned graph needs >= 2 "
                                         "(alpha steps every arch_every-th PPO epoch, the network on the others)")
        if self.comm_cost > 0 and not self.gate:
            warnings.warn(f"algo.comm_cost={self.comm_cost} is ignored: algo.gate=false", stacklevel=2)


@dataclass
class LoggerConfig:
    """Where the run is recorded: metrics.csv always; wandb (offline by default); optional TensorBoard."""

    wandb: str = "offline"
    project: str = "commformer"
    entity: Optional[str] = None
    group: Optional[str] = None
    tags: List[str] = field(default_factory=list)
    tensorboard: bool = False
    progress: bool = True
    console_every: int = 10

    def __post_init__(self) -> None:
        _check(self.wandb in WANDB_MODES, f"logger.wandb={self.wandb!r}; allowed: {list(WANDB_MODES)}")
        _check(self.console_every >= 1, f"logger.console_every={self.console_every}; must be >= 1")


@dataclass
class Config:
    """One run. Budget and batch: iterations = ceil(total_env_steps / (num_envs * rollout_length))."""

    env: Dict[str, Any] = field(default_factory=dict)
    algo: AlgoConfig = field(default_factory=AlgoConfig)
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    total_env_steps: int = 200_000
    num_envs: int = 32
    rollout_length: int = 40
    ppo_epochs: int = 10
    seed: int = 1
    device: str = "cpu"
    torch_threads: int = 1
    resume: Optional[str] = None
    eval_every: int = 20
    eval_episodes: Optional[int] = None
    eval_envs: Optional[int] = None
    eval_at_start: bool = False
    checkpoint_every: int = 50
    run_dir: Optional[str] = None

    def __post_init__(self) -> None:
        _check("family" in self.env and "name" in self.env,
               f"env={dict(self.env)!r}; an env config needs 'name' and 'family' (pick one: env=pp, env=pcp, ...)")
        for key in ("total_env_steps", "num_envs", "rollout_length", "ppo_epochs", "torch_threads", "eval_every",
                    "checkpoint_every"):
            _check(getattr(self, key) >= 1, f"{key}={getattr(self, key)}; must be >= 1")
        _check(self.eval_episodes is None or self.eval_episodes >= 1,
               f"eval_episodes={self.eval_episodes}; must be >= 1 (or null for the env's default)")
        _check(self.eval_envs is None or self.eval_envs >= 1,
               f"eval_envs={self.eval_envs}; must be >= 1 (or null for the env's default)")
        _check(self.device == "cpu" or self.device.startswith("cuda") or self.device == "mps",
               f"device={self.device!r}; allowed: cpu, cuda, cuda:<index>, mps")
        a = self.algo
        if a.graph == "learned":
            _check(self.ppo_epochs >= a.arch_every,
                   f"ppo_epochs={self.ppo_epochs}; a learned graph needs ppo_epochs >= algo.arch_every="
                   f"{a.arch_every} (or set algo.graph=full|none|random)")
            if a.bilevel == "split":
                _check(self.num_envs >= 2, f"num_envs={self.num_envs}; algo.bilevel=split needs >= 2 env columns")
        elif a.bilevel == "split":
            warnings.warn(f"algo.bilevel=split is ignored: algo.graph={a.graph!r} has no alpha", stacklevel=2)

    @property
    def batch_env_steps(self) -> int:
        """Env steps per iteration (num_envs * rollout_length)."""
        return self.num_envs * self.rollout_length

    @property
    def eval_episode_count(self) -> int:
        """Episodes per evaluation: eval_episodes, else the env config's eval_episodes (32 if it has none)."""
        return int(self.eval_episodes or self.env.get("eval_episodes", 32))

    @property
    def eval_env_count(self) -> int:
        """Eval env copies: eval_envs, else the env config's eval_envs, else one per episode."""
        return min(int(self.eval_envs or self.env.get("eval_envs") or self.eval_episode_count),
                   self.eval_episode_count)

    @property
    def iterations(self) -> int:
        return -(-self.total_env_steps // self.batch_env_steps)


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (name "config_schema")."""
    ConfigStore.instance().store(name="config_schema", node=Config)


def load_config(cfg: DictConfig | dict) -> Config:
    """Merge a composed config onto the schema and run every check; ConfigError with one line on a bad value."""
    try:
        merged = OmegaConf.merge(OmegaConf.structured(Config), cfg)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise ConfigError(f"{key}: {first}" if key else first) from None
    except ValueError as e:  # a __post_init__ check wrapped by OmegaConf
        raise ConfigError(str(e).splitlines()[0]) from None


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (stored in checkpoints and the run folder)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(text: str) -> Config:
    return load_config(OmegaConf.create(text))
