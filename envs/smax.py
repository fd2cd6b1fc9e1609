"""JaxMARL's SMAX (SMAC-like battles without StarCraft II) as a VecEnv, stepped with jax and handed to torch.

Shape letters: B envs, N allies (the learning agents), O observation width, S world-state width, A actions per ally.

SMAX (JaxMARL, Rutherford et al. 2023, https://github.com/FLAIROx/JaxMARL) re-implements SMAC-style unit micro in jax:
allies controlled by the learner fight a heuristic enemy. Its numbers (win rates, returns) are NOT comparable to real
SMAC on StarCraft II: unit stats, physics, map and enemy AI differ. Say so wherever SMAX results are shown.

How this adapter uses it (jaxmarl 0.2.0, REFERENCE.md 6):
- ``jaxmarl.make("HeuristicEnemySMAX", scenario=map_name_to_scenario(name))``; B copies under ``jax.vmap``.
- The env's ``step_env`` (no auto-reset), then finished envs are reset here, inside the same jitted call, with
  ``jnp.where`` over the batch, so the last observation of a finished episode survives as ``final_obs``.
  One jitted call per step does step + auto-reset + observations + available actions + world state; the PRNG key
  stays in jax.
- SMAX folds the time limit into its done flag and reports no win flag, so both are derived from the state:
  terminated = all allies dead or all enemies dead; truncated = the episode_limit-th step done and neither side
  wiped out (SMAX's own flag tests its step counter before counting the step, so it would run one step more);
  won = all enemies dead and an ally alive (SMAX's own win bonus rule, and JaxMARL's SMAXLogWrapper counts a win
  as a step reward >= the bonus; a mutual wipe-out is a draw: terminated, not won).
- Reward: SMAX's per-ally reward (enemy health lost, normalised, plus 1 on a win), the same for every ally, dead ones
  included. Global state: SMAX's world state (every unit's health, position, cooldown, type; teams; types).
- Dead allies: zero observation, only action 4 ("stop", SMAX's no-op) available, alive and active False.
- Arrays cross between jax and torch with DLPack (zero copy when both sit on the same device).
- JAX's persistent compilation cache is switched on (``JAX_COMPILATION_CACHE_DIR`` if set, else
  ``~/.cache/commformer/jax``), so repeated runs skip most of the compile time.

Key schedule (reproducible from ``reset(seed)``): reset: ``key = PRNGKey(seed)``; ``key, k = split(key)``; env b
resets with ``split(k, B)[b]``. Each step: ``key, k_step, k_reset = split(key, 3)``; env b steps with
``split(k_step, B)[b]`` and, if it finished, resets with ``split(k_reset, B)[b]``.
"""
from __future__ import annotations

import contextlib
import functools
import inspect
import io
import logging
import math
import os
import secrets
import sys
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import Tensor

from envs.core import EnvSpec, Step, check_actions

log = logging.getLogger(__name__)

# SMAX's discrete ally actions: 0-3 move, 4 stop (the no-op, the only action of a dead unit), 5 + j attack enemy j.
NOOP_ACTION = 4
ATTACK_MODES = ("closest", "random")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "commformer" / "jax"
_MISSING = "SMAX needs the [smax] extra: pip install -e '.[smax]'"


@contextlib.contextmanager
def _quiet_backend_probe():
    """Silence jax's INFO lines about accelerators it probes for and lacks (e.g. "Unable to initialize backend
    'tpu'") while the backends start; the logger's level is restored afterwards."""
    probe_log = logging.getLogger("jax._src.xla_bridge")
    level = probe_log.level
    probe_log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        probe_log.setLevel(level)


def import_jaxmarl() -> tuple[Any, Any]:
    """Import jax and jaxmarl (ImportError naming the extra when absent).

    jaxmarl's package import prints two lines and resets sys.stdout / sys.stderr to the interpreter's originals
    (its optional brax import); the lines go to the debug log and the caller's streams are put back.
    """
    try:
        import jax
    except ImportError as err:
        raise ImportError(_MISSING) from err
    if "jaxmarl" in sys.modules:
        return jax, sys.modules["jaxmarl"]
    saved = sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__
    sink = io.StringIO()
    try:
        sys.stdout = sys.__stdout__ = sink
        with _quiet_backend_probe():  # jaxmarl builds jax arrays at import: the backends start here
            import jaxmarl
        import jaxmarl.environments.smax  # noqa: F401  (registers the scenarios)
    except ImportError as err:
        raise ImportError(_MISSING) from err
    finally:
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__ = saved
    if sink.getvalue():
        log.debug("jaxmarl import said: %s", sink.getvalue().strip())
    return jax, jaxmarl


def enable_compilation_cache(jax: Any) -> str:
    """Switch on JAX's persistent compilation cache unless the user chose a folder; returns the folder in use."""
    path = jax.config.jax_compilation_cache_dir
    if not path:
        path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(DEFAULT_CACHE_DIR)
        Path(path).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
    return path


def default_episode_limit() -> int:
    """SMAX's own step limit (its max_steps default, 100 in jaxmarl 0.2.0)."""
    import_jaxmarl()
    from jaxmarl.environments.smax import SMAX

    return int(inspect.signature(SMAX.__init__).parameters["max_steps"].default)


def scenarios() -> list[str]:
    """The SMAX scenario names jaxmarl knows (needs the [smax] extra)."""
    import_jaxmarl()
    from jaxmarl.environments.smax.smax_env import MAP_NAME_TO_SCENARIO

    return sorted(MAP_NAME_TO_SCENARIO)


# ----------------------------------------------------------------------------------------------- jax functions


# Step fields as they travel from jax to torch: packed, flattened, into one f32 and one bool buffer per call
# (two DLPack hand-overs instead of thirteen), unpacked in torch as views.
RESET_FLOATS = ("obs", "state")
RESET_BOOLS = ("avail_actions", "alive")
STEP_FLOATS = ("obs", "state", "reward", "final_obs", "final_state", "return", "length", "won")
STEP_BOOLS = ("avail_actions", "alive", "terminated", "truncated", "final_alive")


def field_shapes(num_envs: int, spec: EnvSpec) -> dict[str, tuple[int, ...]]:
    """The shape of every packed field for B = num_envs (see Step)."""
    B, N, O, S, A = num_envs, spec.n_agents, spec.obs_dim, spec.state_dim, spec.n_actions
    return {
        "obs": (B, N, O), "state": (B, S), "reward": (B, N), "final_obs": (B, N, O), "final_state": (B, S),
        "return": (B,), "length": (B,), "won": (B,), "avail_actions": (B, N, A), "alive": (B, N),
        "terminated": (B,), "truncated": (B,), "final_alive": (B, N),
    }


def unpack(buffer: Tensor, names: tuple[str, ...], shapes: dict[str, tuple[int, ...]]) -> dict[str, Tensor]:
    """Split a flat buffer (the fields of `names`, flattened, in order) into views of the given shapes."""
    sizes = [math.prod(shapes[n]) for n in names]
    if buffer.numel() != sum(sizes):
        raise ValueError(f"unpack: buffer has {buffer.numel()} values, fields {names} need {sum(sizes)}")
    return {n: part.view(shapes[n]) for n, part in zip(names, torch.split(buffer, sizes))}


@functools.lru_cache(maxsize=None)
def _build(scenario: str, episode_limit: int, attack_mode: str, enemy_shoots: bool) -> tuple:
    """The jaxmarl env and its jitted batched reset / step, shared by every VecEnv with these settings.

    Returns (env, reset_fn, step_fn):
      reset_fn(key, B) -> (key, states, episode_return [B], episode_length [B], floats, bools)
      step_fn(key, states, episode_return [B] f32, episode_length [B] f32, actions [B,N] i32)
          -> (key, states, episode_return, episode_length, floats, bools)
    states: the batched jaxmarl state; episode_return / episode_length: running sums of the unfinished episodes;
    floats / bools: the fields RESET_* or STEP_* flattened and concatenated (shapes in field_shapes).
    """
    jax, jaxmarl = import_jaxmarl()
    import jax.numpy as jnp
    from jaxmarl.environments.smax import map_name_to_scenario

    env = jaxmarl.make("HeuristicEnemySMAX", scenario=map_name_to_scenario(scenario), max_steps=episode_limit,
                       enemy_shoots=enemy_shoots, attack_mode=attack_mode)
    agents, n_allies, max_steps = list(env.agents), env.num_allies, env.max_steps
    noop = jnp.arange(env.num_ally_actions) == NOOP_ACTION  # [A]

    def view_one(obs: dict, state: Any) -> dict:
        """One env: obs dict + state -> obs [N,O], state [S], avail_actions [N,A], alive [N]; dead allies masked."""
        alive = state.state.unit_alive[:n_allies]
        o = jnp.stack([obs[a] for a in agents]).astype(jnp.float32)
        avail_dict = env.get_avail_actions(state)
        avail = jnp.stack([avail_dict[a] for a in agents]).astype(bool)
        return {
            "obs": jnp.where(alive[:, None], o, 0.0),
            "state": obs["world_state"].astype(jnp.float32),
            "avail_actions": jnp.where(alive[:, None], avail, noop[None, :]),
            "alive": alive,
        }

    view = jax.vmap(view_one)

    def pack(fields: dict, names: tuple[str, ...], dtype: Any) -> Any:
        return jnp.concatenate([fields[n].astype(dtype).reshape(-1) for n in names])

    def strong(tree: Any) -> Any:
        """The same pytree with no weakly typed leaves, so reset and step outputs share one jit signature."""
        return jax.tree.map(lambda x: x.astype(x.dtype), tree)

    def where_done(done: Any, a: Any, b: Any) -> Any:
        """Per env: a where done else b, for arrays with a leading batch axis B."""
        return jnp.where(done.reshape(done.shape + (1,) * (a.ndim - 1)), a, b)

    def reset_fn(key: Any, num_envs: int) -> tuple:
        key, k_reset = jax.random.split(key)
        obs, states = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))
        states = strong(states)
        fields = view(obs, states)
        zeros = jnp.zeros((num_envs,), jnp.float32)
        return (key, states, zeros, zeros,
                pack(fields, RESET_FLOATS, jnp.float32), pack(fields, RESET_BOOLS, bool))

    def step_fn(key: Any, states: Any, ep_return: Any, ep_length: Any, actions: Any) -> tuple:
        num_envs = actions.shape[0]
        key, k_step, k_reset = jax.random.split(key, 3)
        act = {a: actions[:, i] for i, a in enumerate(agents)}
        obs, states, rewards, _, _ = jax.vmap(env.step_env)(jax.random.split(k_step, num_envs), states, act)
        reward = jnp.stack([rewards[a] for a in agents], axis=-1).astype(jnp.float32)  # [B,N]
        unit_alive = states.state.unit_alive
        allies_out = ~jnp.any(unit_alive[:, :n_allies], axis=-1)
        enemies_out = ~jnp.any(unit_alive[:, n_allies:], axis=-1)
        terminated = allies_out | enemies_out
        truncated = (states.state.step >= max_steps) & ~terminated
        done = terminated | truncated
        final = view(obs, states)

        reset_obs, reset_states = jax.vmap(env.reset)(jax.random.split(k_reset, num_envs))
        states = strong(jax.tree.map(functools.partial(where_done, done), reset_states, states))
        obs = jax.tree.map(functools.partial(where_done, done), reset_obs, obs)

        ep_return = ep_return + reward.mean(axis=-1)
        ep_length = ep_length + 1.0
        fields = view(obs, states)
        fields.update(
            reward=reward, terminated=terminated, truncated=truncated,
            final_obs=final["obs"], final_state=final["state"], final_alive=final["alive"],
            won=done & enemies_out & ~allies_out,
            **{"return": jnp.where(done, ep_return, 0.0), "length": jnp.where(done, ep_length, 0.0)},
        )
        ep_return = jnp.where(done, 0.0, ep_return)
        ep_length = jnp.where(done, 0.0, ep_length)
        return (key, states, ep_return, ep_length,
                pack(fields, STEP_FLOATS, jnp.float32), pack(fields, STEP_BOOLS, bool))

    return env, jax.jit(reset_fn, static_argnums=1), jax.jit(step_fn)


# ----------------------------------------------------------------------------------------------- the VecEnv


class SMAXVecEnv:
    """B SMAX battles against the heuristic enemy, stepped together in one jitted jax call per step.

    num_envs B, device (torch device of every returned tensor), scenario (a jaxmarl SMAX map, e.g. "3m", "2s3z",
    "5m_vs_6m", "smacv2_5_units"), episode_limit (steps before truncation; None keeps SMAX's 100),
    attack_mode (the enemy's targeting: "closest" or "random"), enemy_shoots (False: enemies only move).
    SMAX numbers are not comparable to real SMAC (see the module docstring).
    """

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", scenario: str = "3m",
                 episode_limit: int | None = None, attack_mode: str = "closest", enemy_shoots: bool = True) -> None:
        jax, _ = import_jaxmarl()
        if num_envs < 1:
            raise ValueError(f"num_envs={num_envs}; must be >= 1")
        allowed = scenarios()
        if scenario not in allowed:
            raise ValueError(f"env.scenario={scenario!r}; allowed: {allowed}")
        if episode_limit is not None and (not isinstance(episode_limit, int) or isinstance(episode_limit, bool)
                                          or episode_limit < 1):
            raise ValueError(f"env.episode_limit={episode_limit!r}; must be an integer >= 1 or null")
        if attack_mode not in ATTACK_MODES:
            raise ValueError(f"env.attack_mode={attack_mode!r}; allowed: {list(ATTACK_MODES)}")
        if not isinstance(enemy_shoots, bool):
            raise ValueError(f"env.enemy_shoots={enemy_shoots!r}; must be true or false")
        self._jax = jax
        self.cache_dir = enable_compilation_cache(jax)
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.scenario = scenario
        limit = default_episode_limit() if episode_limit is None else episode_limit
        self._env, self._reset_fn, self._step_fn = _build(scenario, limit, attack_mode, enemy_shoots)
        self._jax_device = _jax_device(jax, self.device)
        self.spec = _spec(self._env)
        self._shapes = field_shapes(num_envs, self.spec)
        self._key: Any = None
        self._carry: tuple | None = None  # (states, episode_return [B], episode_length [B]) in jax

    # ------------------------------------------------------------------ VecEnv API

    def reset(self, seed: int | None = None) -> Step:
        """Reset all B envs. seed None draws one from the OS (not reproducible)."""
        jax = self._jax
        if seed is None:
            seed = secrets.randbits(31)
        key = jax.device_put(jax.random.PRNGKey(int(seed)), self._jax_device)
        self._key, states, ep_return, ep_length, floats, bools = self._reset_fn(key, self.num_envs)
        self._carry = (states, ep_return, ep_length)
        f = unpack(self._to_torch(floats), RESET_FLOATS, self._shapes)
        b = unpack(self._to_torch(bools), RESET_BOOLS, self._shapes)
        B, N = self.num_envs, self.spec.n_agents
        zeros_b = torch.zeros(B, device=self.device)
        no_b = torch.zeros(B, dtype=torch.bool, device=self.device)
        return Step(
            obs=f["obs"], state=f["state"], avail_actions=b["avail_actions"],
            reward=torch.zeros(B, N, device=self.device), terminated=no_b, truncated=no_b.clone(),
            alive=b["alive"], active=b["alive"].clone(),
            final_obs=f["obs"].clone(), final_state=f["state"].clone(), final_alive=b["alive"].clone(),
            episode={"return": zeros_b, "length": zeros_b.clone(), "won": zeros_b.clone()},
        )

    def step(self, actions: Tensor) -> Step:
        """Advance all B envs; actions LongTensor [B,N] in [0, A). Finished envs are reset (see Step).

        An unavailable action is harmless in SMAX (an attack out of range or on a dead unit does nothing).
        The returned tensors share memory with each other by field groups; copy before writing into them.
        """
        if self._carry is None:
            raise RuntimeError("SMAXVecEnv.step() before reset()")
        check_actions(actions, self.num_envs, self.spec.n_agents)
        lo, hi = int(actions.min()), int(actions.max())
        if lo < 0 or hi >= self.spec.n_actions:
            raise ValueError(f"step(): actions must be in [0, {self.spec.n_actions}), got values in [{lo}, {hi}]")
        states, ep_return, ep_length = self._carry
        self._key, states, ep_return, ep_length, floats, bools = self._step_fn(
            self._key, states, ep_return, ep_length, self._to_jax(actions))
        self._carry = (states, ep_return, ep_length)
        f = unpack(self._to_torch(floats), STEP_FLOATS, self._shapes)
        b = unpack(self._to_torch(bools), STEP_BOOLS, self._shapes)
        return Step(
            obs=f["obs"], state=f["state"], avail_actions=b["avail_actions"], reward=f["reward"],
            terminated=b["terminated"], truncated=b["truncated"], alive=b["alive"], active=b["alive"].clone(),
            final_obs=f["final_obs"], final_state=f["final_state"], final_alive=b["final_alive"],
            episode={"return": f["return"], "length": f["length"], "won": f["won"]},
        )

    def close(self) -> None:
        """Drop the jax state (the compiled functions stay cached for other instances)."""
        self._carry = None
        self._key = None

    # ------------------------------------------------------------------ inspection (tests, debugging)

    @property
    def jax_env(self) -> Any:
        """The underlying jaxmarl HeuristicEnemySMAX (one env; shared by instances with the same settings)."""
        return self._env

    @property
    def jax_state(self) -> Any:
        """The batched jaxmarl state (a pytree whose leaves have a leading axis B)."""
        if self._carry is None:
            raise RuntimeError("SMAXVecEnv.jax_state before reset()")
        return self._carry[0]

    @jax_state.setter
    def jax_state(self, states: Any) -> None:
        if self._carry is None:
            raise RuntimeError("SMAXVecEnv.jax_state before reset()")
        self._carry = (states,) + self._carry[1:]

    @property
    def jax_key(self) -> Any:
        """The PRNG key the next step splits (see the key schedule in the module docstring)."""
        return self._key

    # ------------------------------------------------------------------ torch <-> jax

    def _to_torch(self, x: Any) -> Tensor:
        """A jax array as a torch tensor on self.device (zero copy via DLPack when the devices match)."""
        return torch.from_dlpack(x.block_until_ready()).to(self.device)

    def _to_jax(self, actions: Tensor) -> Any:
        """actions [B,N] as an int32 jax array on the env's jax device."""
        a = actions.to(torch.int32).contiguous()
        if self._jax_device.platform == "cpu":
            a = a.cpu()
        return self._jax.device_put(self._jax.dlpack.from_dlpack(a), self._jax_device)


def _jax_device(jax: Any, device: torch.device) -> Any:
    """The jax device that matches a torch device: the same GPU when jax has one, else the CPU."""
    if device.type == "cuda":
        try:
            gpus = jax.devices("gpu")
            return gpus[device.index or 0]
        except (RuntimeError, IndexError):
            log.info("jax has no GPU for %s: SMAX runs on the CPU and its outputs are copied to %s", device, device)
    return jax.devices("cpu")[0]


def _spec(env: Any) -> EnvSpec:
    """The EnvSpec of a jaxmarl HeuristicEnemySMAX: N allies, O = SMAX's obs size, S = its world-state size."""
    names = tuple(env.agents)
    obs_space = gymnasium.spaces.Box(-1.0, 1.0, (env.obs_size,), dtype=np.float32)
    return EnvSpec(
        n_agents=env.num_allies, obs_dim=env.obs_size, state_dim=env.state_size,
        n_actions=env.num_ally_actions, episode_limit=env.max_steps, agent_names=names,
        observation_spaces={a: obs_space for a in names},
        action_spaces={a: gymnasium.spaces.Discrete(env.num_ally_actions) for a in names},
        task_metrics=("won",),
    )
