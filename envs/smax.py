"""JaxMARL's SMAX (SMAC-like battles without StarCraft II) as a VecEnv, stepped with jax and handed to torch.

Shape letters: B envs, N allies (the learning agents), O observation width, S world-state width, A actions per ally.

SMAX (JaxMARL, Rutherford et al. 2023, https://github.com/FLAIROx/JaxMARL) re-implements SMAC-style unit micro in jax:
allies controlled by the learner fight a heuristic enemy. Its numbers (win rates, returns) are NOT comparable to real
SMAC on StarCraft II: unit stats, physics, map and enemy AI differ. Say so wherever SMAX results are shown.

How this adapter uses it (jaxmarl 0.2.0; docs/tasks.md, "SMAX"):
- ``HeuristicEnemySMAX(scenario=map_name_to_scenario(name))`` (what ``jaxmarl.make("HeuristicEnemySMAX", ...)``
  builds; only jaxmarl's SMAX modules are imported, see envs.smax_jax._LazyPackage); B copies under ``jax.vmap``.
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
  included. Scale: the health part sums to 1 over a battle in which every enemy dies, so a won battle returns exactly
  2, a draw 1 and a lost or truncated one less than 1 (SMAC's shaped reward is normalised to a maximum of 20). Global state: SMAX's world state (every unit's health, position, cooldown, type; teams; types).
- Dead allies: zero observation, only action 4 ("stop", SMAX's no-op) available, alive and active False.
- Arrays cross between jax and torch with DLPack (zero copy when both sit on the same device). The jax side (the
  jaxmarl import and the jitted batched reset / step) lives in envs.smax_jax.
- JAX's persistent compilation cache is switched on (``JAX_COMPILATION_CACHE_DIR`` if set, else
  ``~/.cache/commformer/jax``) for every compile, and the batched reset / step are kept there as jax.export'ed
  modules (``smax_export/<digest of the settings, B, versions and sources>``): a run that finds its entry imports no
  jaxmarl module and traces nothing (2.1-2.7 CPU s less per training process at smax_3m; the same numbers, as
  written and read entries run one serialized module).

Key schedule (reproducible from ``reset(seed)``): reset: ``key = PRNGKey(seed)``; ``key, k = split(key)``; env b
resets with ``split(k, B)[b]``. Each step: ``key, k_step, k_reset = split(key, 3)``; env b steps with
``split(k_step, B)[b]`` and, if it finished, resets with ``split(k_reset, B)[b]``.
"""
from __future__ import annotations

import importlib.util
import logging
import math
import os
import secrets
from pathlib import Path
from typing import Any

import gymnasium
import numpy as np
import torch
from torch import Tensor

from envs.core import EnvConfigError, EnvSpec, FamilyInfo, Step, check_actions, check_num_envs
from envs.smax_jax import (  # noqa: F401  (NOOP_ACTION: re-exported, the action tests and callers use)
    MISSING_EXTRA, NOOP_ACTION, RESET_BOOLS, RESET_FLOATS, STEP_BOOLS, STEP_FLOATS, batched_calls, build_batched,
    import_jaxmarl, lowering_platform, quiet_backend_probe, scenarios, state_treedef,
)

log = logging.getLogger(__name__)

ATTACK_MODES = ("closest", "random")
DEFAULT_CACHE_DIR = Path.home() / ".cache" / "commformer" / "jax"


def enable_compilation_cache(jax: Any) -> str:
    """Switch on JAX's persistent compilation cache unless the user chose a folder; returns the folder in use.

    Every compile is kept, not only those over jax's default threshold of 1 s (the batched reset compiles in less
    and would otherwise be compiled anew by every run), unless JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS is set."""
    path = jax.config.jax_compilation_cache_dir
    if not path:
        path = os.environ.get("JAX_COMPILATION_CACHE_DIR") or str(DEFAULT_CACHE_DIR)
        Path(path).mkdir(parents=True, exist_ok=True)
        jax.config.update("jax_compilation_cache_dir", path)
    if "JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS" not in os.environ:
        jax.config.update("jax_persistent_cache_min_compile_time_secs", 0.0)
    return path


# ----------------------------------------------------------------------------------------------- jax -> torch


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


# ----------------------------------------------------------------------------------------------- the VecEnv


class SMAXVecEnv(FamilyInfo):
    """B SMAX battles against the heuristic enemy, stepped together in one jitted jax call per step.

    num_envs B, device (torch device of every returned tensor), scenario (a jaxmarl SMAX map, e.g. "3m", "2s3z",
    "5m_vs_6m", "smacv2_5_units"), episode_limit (steps before truncation; None keeps SMAX's 100),
    attack_mode (the enemy's targeting: "closest" or "random"), enemy_shoots (False: enemies only move).
    SMAX numbers are not comparable to real SMAC (see the module docstring).
    """

    results_note = "SMAX numbers are not comparable to SMAC"

    @classmethod
    def unavailable_reason(cls) -> str | None:
        """The [smax] extra's install line when jax or jaxmarl cannot be found (neither is imported), else None."""
        if importlib.util.find_spec("jax") is None or importlib.util.find_spec("jaxmarl") is None:
            return MISSING_EXTRA
        return None

    def __init__(self, num_envs: int, device: torch.device | str = "cpu", scenario: str = "3m",
                 episode_limit: int | None = None, attack_mode: str = "closest", enemy_shoots: bool = True) -> None:
        try:
            import jax
        except ImportError as err:
            raise ImportError(MISSING_EXTRA) from err
        check_num_envs(num_envs)
        if not isinstance(scenario, str):
            raise EnvConfigError(f"env.scenario={scenario!r}; allowed: {scenarios()}")
        if episode_limit is not None and (not isinstance(episode_limit, int) or isinstance(episode_limit, bool)
                                          or episode_limit < 1):
            raise EnvConfigError(f"env.episode_limit={episode_limit!r}; must be an integer >= 1 or null")
        if attack_mode not in ATTACK_MODES:
            raise EnvConfigError(f"env.attack_mode={attack_mode!r}; allowed: {list(ATTACK_MODES)}")
        if not isinstance(enemy_shoots, bool):
            raise EnvConfigError(f"env.enemy_shoots={enemy_shoots!r}; must be true or false")
        self._jax = jax
        self.cache_dir = enable_compilation_cache(jax)
        self.num_envs = num_envs
        self.device = torch.device(device)
        self.scenario = scenario
        with quiet_backend_probe():  # the backends start here when jaxmarl was not imported
            self._jax_device = _jax_device(jax, self.device)
        platform = lowering_platform(self._jax_device)
        calls = batched_calls(scenario, episode_limit, attack_mode, enemy_shoots, num_envs, platform, self.cache_dir)
        self._settings = (scenario, int(calls.meta["max_steps"]), attack_mode, enemy_shoots)
        self._reset_fn, self._step_fn = calls.reset, calls.step
        self.spec = _spec(calls.meta)
        self._shapes = field_shapes(num_envs, self.spec)
        self._key: Any = None
        self._carry: tuple | None = None  # (state leaves, episode_return [B], episode_length [B]) in jax

    # ------------------------------------------------------------------ VecEnv API

    def reset(self, seed: int | None = None) -> Step:
        """Reset all B envs. seed None draws one from the OS (not reproducible)."""
        jax = self._jax
        if seed is None:
            seed = secrets.randbits(31)
        key = jax.device_put(jax.random.PRNGKey(int(seed)), self._jax_device)
        self._key, states, ep_return, ep_length, floats, bools = self._reset_fn(key)
        self._carry = (states, ep_return, ep_length)
        f = unpack(self._to_torch(floats), RESET_FLOATS, self._shapes)
        b = unpack(self._to_torch(bools), RESET_BOOLS, self._shapes)
        B, N = self.num_envs, self.spec.n_agents
        zeros_b = torch.zeros(B, device=self.device)
        no_b = torch.zeros(B, dtype=torch.bool, device=self.device)
        return Step.alive_is_active(
            obs=f["obs"], state=f["state"], avail_actions=b["avail_actions"],
            reward=torch.zeros(B, N, device=self.device), terminated=no_b, truncated=no_b.clone(),
            alive=b["alive"],
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
        return Step.alive_is_active(
            obs=f["obs"], state=f["state"], avail_actions=b["avail_actions"], reward=f["reward"],
            terminated=b["terminated"], truncated=b["truncated"], alive=b["alive"],
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
        """The underlying jaxmarl HeuristicEnemySMAX (one env; shared by instances with the same settings; built
        on first use, as the run itself needs only the exported functions)."""
        return build_batched(*self._settings)[0]

    @property
    def jax_state(self) -> Any:
        """The batched jaxmarl state (a pytree whose leaves have a leading axis B)."""
        if self._carry is None:
            raise RuntimeError("SMAXVecEnv.jax_state before reset()")
        return self._jax.tree.unflatten(state_treedef(*self._settings, self.num_envs), self._carry[0])

    @jax_state.setter
    def jax_state(self, states: Any) -> None:
        if self._carry is None:
            raise RuntimeError("SMAXVecEnv.jax_state before reset()")
        leaves, treedef = self._jax.tree.flatten(states)
        expected = state_treedef(*self._settings, self.num_envs)
        if treedef != expected:
            raise ValueError(f"jax_state: a pytree {treedef} where the env's state is {expected}")
        self._carry = (tuple(leaves),) + self._carry[1:]

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


def _spec(meta: dict) -> EnvSpec:
    """The EnvSpec of a HeuristicEnemySMAX from its sizes (smax_jax.META_KEYS): N allies, O = SMAX's obs size,
    S = its world-state size."""
    names = tuple(meta["agents"])
    n_actions = int(meta["num_ally_actions"])
    obs_space = gymnasium.spaces.Box(-1.0, 1.0, (int(meta["obs_size"]),), dtype=np.float32)
    return EnvSpec(
        n_agents=int(meta["num_allies"]), obs_dim=int(meta["obs_size"]), state_dim=int(meta["state_size"]),
        n_actions=n_actions, episode_limit=int(meta["max_steps"]), agent_names=names,
        observation_spaces={a: obs_space for a in names},
        action_spaces={a: gymnasium.spaces.Discrete(n_actions) for a in names},
        task_metrics=("won",),
    )
