"""Typed config schemas. Every range check lives here (__post_init__), reached by converting the composed Hydra
config once with `commformer.hydra_glue.load_config`. Values live in conf/*.yaml; these dataclasses are the schema
and its checks.
"""
from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Any, Dict, List, Optional, Sequence

from commformer.devices import check_device
from commformer.errors import UserError
from envs.registry import env_class, validate_env_config

WANDB_MODES = ("offline", "online", "disabled")
# what the installed wandb accepts in the environment variable WANDB_MODE (empty or unset: logger.wandb decides)
WANDB_ENV_MODES = ("online", "offline", "disabled", "dryrun", "run", "shared")

# Seeds (docs/tools.md, "Allowed values and what the errors say"). Every seed the project derives from `seed` must
# stay a 31-bit integer (jax's PRNGKey for SMAX, StarCraft II's game seed): the largest offset added to a legal seed
# is 2,010,998 (scripts/evaluate.py: seed + 2,000,000 + chunk index <= 9,999 + env copy <= 999), so 10,000,000 of
# room is plenty; envs that cannot save their state are reseeded on resume with seed + 7919 x iteration (+ copy),
# checked against the run's iterations in Config.__post_init__.
INT31_MAX = 2**31 - 1
SEED_ROOM = 10_000_000
SEED_MAX = INT31_MAX - SEED_ROOM  # 2,137,483,647
RESUME_RESEED_STRIDE = 7919  # a resumed env without its state restarts its episodes with seed + this x iteration
# most parallel envs of a run (num_envs) and most evaluation episodes / env copies (eval_episodes, eval_envs)
MAX_ENVS = 1_000_000


class ConfigError(UserError, ValueError):
    """A bad config value; the message is one line naming the key, the value and what is allowed."""


def check(ok: bool, message: str) -> None:
    if not ok:
        raise ConfigError(message)


def check_positive_finite(name: str, value: float) -> None:
    check(0 < value < math.inf, f"{name}={value}; must be > 0 and finite")


def check_fraction(name: str, value: float, low_open: bool = True) -> None:
    ok = (0.0 < value <= 1.0) if low_open else (0.0 <= value <= 1.0)
    check(ok, f"{name}={value}; must be in {'(0, 1]' if low_open else '[0, 1]'}")


@dataclass
class AlgoConfig:
    """The trainer's keys every policy shares (PPO, optimiser, schedule of learning rate and entropy). A policy's
    schema subclasses it with its own keys (CommFormerConfig below; docs/extending.md); `algo.policy` picks it."""

    name: str = "commformer"
    """preset name (labels the run)"""
    policy: str = "commformer"
    """the policy: a built-in name (commformer) or module:attribute of a PolicyEntry (docs/extending.md)"""
    lr: float = 5e-4
    """Adam learning rate of the network (the lower level)"""
    adam_eps: float = 1e-5
    """Adam epsilon of every optimiser"""
    clip: float = 0.2
    """PPO clip epsilon (policy ratio and value clip)"""
    value_coef: float = 1.0
    """value-loss weight"""
    entropy_coef: float = 0.01
    """entropy-bonus weight"""
    huber_delta: float = 10.0
    """Huber delta of the value loss"""
    value_norm: bool = True
    """running value normaliser of the value targets"""
    value_clip: bool = True
    """clip the value prediction around the rollout's (same epsilon as the policy) and take the worse loss"""
    lr_decay: bool = False
    """decay the lower level's learning rates linearly to 0 over the run (an upper level's stays constant)"""
    entropy_coef_final: Optional[float] = None
    """entropy weight at the end of the run, reached linearly from entropy_coef (null: constant)"""
    reward_scale: float = 1.0
    """multiply every reward by this before GAE (the logged returns stay the env's)"""
    gamma: float = 0.99
    """discount"""
    gae_lambda: float = 0.95
    """GAE lambda"""
    max_grad_norm: float = 10.0
    """gradient-norm clip (each optimiser clips its own parameters)"""
    minibatches: int = 1
    """minibatches per PPO epoch (each level splits the rows it gets)"""

    def __post_init__(self) -> None:
        for key in ("lr", "adam_eps", "max_grad_norm", "huber_delta"):
            check_positive_finite(f"algo.{key}", getattr(self, key))
        check(self.minibatches >= 1, f"algo.minibatches={self.minibatches}; must be >= 1")
        check(0.0 < self.clip < 1.0, f"algo.clip={self.clip}; must be in (0, 1)")
        check(self.entropy_coef_final is None or 0 <= self.entropy_coef_final < math.inf,
               f"algo.entropy_coef_final={self.entropy_coef_final}; must be >= 0 and finite (or null: constant)")
        check_positive_finite("algo.reward_scale", self.reward_scale)
        for key in ("value_coef", "entropy_coef"):
            value = getattr(self, key)
            check(0 <= value < math.inf, f"algo.{key}={value}; must be >= 0 and finite")
        check_fraction("algo.gamma", self.gamma)
        check_fraction("algo.gae_lambda", self.gae_lambda, low_open=False)

    def group_lrs(self) -> dict[str, float]:
        """Learning rate of each of the policy's lower-level parameter groups, by group name."""
        return {"network": self.lr}

    @property
    def upper_lr(self) -> float:
        """Learning rate of the policy's upper level, where it has one."""
        return 0.0

    def level_rows(self, T: int, B: int) -> dict[str, tuple[int, str]]:
        """{level: (rows its PPO epochs see, how they come about)} for rollouts of T steps x B envs."""
        return {"network": (T * B, f"rollout_length={T} x num_envs={B}")}

    def check_run(self, run: Any) -> None:
        """Cross-field checks against the run's Config (ConfigError naming both values)."""
        for level, (rows, how) in self.level_rows(run.rollout_length, run.num_envs).items():
            check(self.minibatches <= rows,
                   f"algo.minibatches={self.minibatches}; must be <= the {rows} rows the {level} gets per epoch "
                   f"({how})")

    def check_given(self, run: Any, keys: Sequence[str]) -> None:
        """Checks of values the command line sets explicitly (`keys`: the dotted keys it sets); run by the command
        line's pre-check (commformer.compose) only, so a config built in code or a preset's default is not held to
        them. ConfigError naming the key."""

    def run_notes(self, run: Any) -> list[str]:
        """Lines the trainer logs at the start of a run: legal settings whose effect differs from what they say."""
        return []


@dataclass
class LoggerConfig:
    """Where the run is recorded: metrics.csv always; wandb (offline by default); optional TensorBoard. The defaults
    are conf/logger/default.yaml; `logger=quiet` turns wandb and the progress bar off."""

    wandb: str = "offline"
    """wandb mode: offline (files in the run folder; `wandb sync` later) | online | disabled"""
    project: str = "commformer"
    """wandb project"""
    entity: Optional[str] = None
    """wandb entity (null: your default)"""
    group: Optional[str] = None
    """wandb group (null: the sweep folder's name under -m, else none)"""
    job_type: str = "train"
    """wandb job type"""
    tags: List[str] = field(default_factory=list)
    """wandb tags, added to the env's name and family and the algo preset's name"""
    media: bool = True
    """wandb images at each evaluation: the alpha (or fixed graph) heatmap and the per-agent gate-open rates"""
    video: bool = False
    """at the end of the run, one evaluation episode of the final checkpoint as videos/final.gif and a wandb video
    (envs that draw frames; the [plot] extra; scripts/train.py records it: Trainer.train(at_end=...) in code)"""
    alpha_grads: bool = False
    """at every evaluation, the graph history records the gradient of each loss term (policy, value, entropy, the
    policy's extra loss) with respect to alpha on the last rollout (one extra pass; learned graphs only)"""
    tensorboard: bool = False
    """also write TensorBoard event files (needs the [tensorboard] extra)"""
    progress: bool = True
    """progress bar with ETA and live return/success when stderr is a terminal (and not under -m); plain progress
    lines otherwise"""
    console_every: int = 10
    """console summary every this many iterations (and at every evaluation)"""

    def __post_init__(self) -> None:
        check(self.wandb in WANDB_MODES, f"logger.wandb={self.wandb!r}; allowed: {list(WANDB_MODES)}")
        check(self.console_every >= 1, f"logger.console_every={self.console_every}; must be >= 1")


@dataclass
class Config:
    """One run. Budget and batch: iterations = ceil(total_env_steps / (num_envs * rollout_length)). The defaults of
    every key live here; conf/config.yaml picks the groups (env=pp, algo=commformer, logger=default)."""

    env: Dict[str, Any] = field(default_factory=dict)
    """the env config (conf/env/<name>.yaml): name, family and the family's constructor keys"""
    algo: Any = field(default_factory=AlgoConfig)
    """the algorithm (conf/algo/<preset>.yaml): an AlgoConfig of the schema `algo.policy` names"""
    logger: LoggerConfig = field(default_factory=LoggerConfig)
    """where the run is recorded (conf/logger/<name>.yaml)"""
    total_env_steps: int = 200_000
    """training budget in env steps (one env step = one transition of one env, all agents acting)"""
    num_envs: int = 32
    """parallel training envs (B)"""
    rollout_length: int = 40
    """steps per env per iteration (T); an iteration = T*B env steps + one PPO update"""
    ppo_epochs: int = 10
    """PPO epochs per iteration (a learned graph needs >= algo.arch_every)"""
    seed: int = 1
    """seeds the model, the graph, the envs and every sampler (0 to 2,137,483,647: room for the seeds derived from it)"""
    device: str = "cpu"
    """cpu | cuda | cuda:<index>"""
    torch_threads: int = 1
    """torch threads (1: on small machines more threads slow down when another process is busy)"""
    resume: Optional[str] = None
    """a checkpoint file or run folder to continue from (null: start fresh)"""
    eval_every: int = 20
    """evaluate every this many iterations (and once at the end)"""
    eval_episodes: Optional[int] = None
    """evaluation episodes (null: the env's eval_episodes)"""
    eval_envs: Optional[int] = None
    """eval env copies, each running ceil(eval_episodes / eval_envs) episodes (null: the env's eval_envs, else one
    per episode)"""
    eval_sampled: bool = False
    """also evaluate with actions sampled from the policy (columns eval_sampled/...): argmax can stall where sampled
    actions win"""
    eval_at_start: bool = False
    """also evaluate the untrained policy (a row with iteration 0), for before/after comparisons"""
    checkpoint_every: int = 50
    """write checkpoints/last.pt every this many iterations (and at the end)"""
    run_dir: Optional[str] = None
    """the run folder (null: Hydra's output folder)"""

    def __post_init__(self) -> None:
        check("family" in self.env and "name" in self.env,
               f"env={dict(self.env)!r}; an env config needs 'name' and 'family' (pick one: env=pp, env=pcp, ...)")
        try:  # the env family's own schema (envs.registry): unknown keys, wrong types, missing keys
            validate_env_config(self.env)
        except (ValueError, TypeError) as e:
            raise ConfigError(str(e).strip().splitlines()[0]) from None
        for key in ("total_env_steps", "num_envs", "rollout_length", "ppo_epochs", "torch_threads", "eval_every",
                    "checkpoint_every"):
            check(getattr(self, key) >= 1, f"{key}={getattr(self, key)}; must be >= 1")
        check(0 <= self.seed <= SEED_MAX,
               f"seed={self.seed}; must be in [0, {SEED_MAX}] (2**31 - 1 - {SEED_ROOM:,}: every seed derived from it "
               "stays a 31-bit integer)")
        for key in ("num_envs", "eval_episodes", "eval_envs"):
            value = getattr(self, key)
            check(value is None or value <= MAX_ENVS, f"{key}={value}; must be <= {MAX_ENVS:,}")
        check(self.eval_episodes is None or self.eval_episodes >= 1,
               f"eval_episodes={self.eval_episodes}; must be >= 1 (or null for the env's default)")
        check(self.eval_envs is None or self.eval_envs >= 1,
               f"eval_envs={self.eval_envs}; must be >= 1 (or null for the env's default)")
        for key, null in (("run_dir", "Hydra's output folder"), ("resume", "start fresh")):
            value = getattr(self, key)
            check(value is None or str(value).strip() != "",
                   f"{key}={value!r}; must be a non-empty path (or null: {null})")
        self._check_resume_seeds()
        try:
            check_device(self.device)
        except ValueError as e:
            raise ConfigError(str(e)) from None
        self.algo.check_run(self)

    def _check_resume_seeds(self) -> None:
        """An env that cannot save its state (no state_dict) restarts its episodes on resume with seed + 7919 x
        iteration, copy b with that + b: the largest, seed + 7919 x iterations + num_envs - 1, must stay <= 2**31 - 1."""
        if hasattr(env_class(self.env["family"]), "state_dict"):
            return
        largest = self.seed + RESUME_RESEED_STRIDE * self.iterations + self.num_envs - 1
        check(largest <= INT31_MAX,
               f"seed={self.seed} with {self.iterations} iterations: env family {self.env['family']!r} cannot save its "
               f"state, so a resume reseeds it with up to seed + {RESUME_RESEED_STRIDE} x iterations + num_envs - 1 = "
               f"{largest:,}, above 2**31 - 1; lower seed or total_env_steps")

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
