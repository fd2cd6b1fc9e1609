"""The jax side of envs.smax: importing jaxmarl (only when an env is built), and the jitted batched reset / step with
auto-reset whose outputs are packed into one f32 and one bool buffer per call (envs.smax's docstring gives the rules
and the key schedule). Importing this module imports neither jax nor jaxmarl."""
from __future__ import annotations

import contextlib
import functools
import hashlib
import inspect
import io
import json
import logging
import os
import shutil
import sys
import types
from pathlib import Path
from typing import Any, Callable, NamedTuple

from envs.core import EnvConfigError

log = logging.getLogger(__name__)

# SMAX's discrete ally actions: 0-3 move, 4 stop (the no-op, the only action of a dead unit), 5 + j attack enemy j.
NOOP_ACTION = 4
# What to install when jax or jaxmarl is missing.
MISSING_EXTRA = "SMAX needs the [smax] extra: pip install -e '.[smax]'"

# Step fields as they travel from jax to torch: packed, flattened, into one f32 and one bool buffer per call
# (two DLPack hand-overs instead of thirteen), unpacked in torch as views.
RESET_FLOATS = ("obs", "state")
RESET_BOOLS = ("avail_actions", "alive")
STEP_FLOATS = ("obs", "state", "reward", "final_obs", "final_state", "return", "length", "won")
STEP_BOOLS = ("avail_actions", "alive", "terminated", "truncated", "final_alive")


@contextlib.contextmanager
def quiet_backend_probe():
    """Silence jax's INFO lines about accelerators it probes for and lacks (e.g. "Unable to initialize backend
    'tpu'") while the backends start; the logger's level is restored afterwards."""
    probe_log = logging.getLogger("jax._src.xla_bridge")
    level = probe_log.level
    probe_log.setLevel(max(level, logging.WARNING))
    try:
        yield
    finally:
        probe_log.setLevel(level)


class _LazyPackage(types.ModuleType):
    """A package whose __init__ runs only when one of its own attributes is first read (PEP 562 __getattr__).

    jaxmarl's package __init__ imports every jaxmarl environment (storm, coin_game, jaxnav, ...: 2.5 s of CPU, 90% of
    the import) although SMAX needs none of them. With `jaxmarl` and `jaxmarl.environments` registered as lazy
    packages, `import jaxmarl.environments.smax` loads just the SMAX modules; anyone who later reads an attribute of
    either package (`jaxmarl.make`, `jaxmarl.environments.SMAX`) gets the complete package, its __init__ run then.
    """

    def __getattr__(self, name: str) -> Any:
        probe = name.startswith("__") and name not in ("__all__", "__version__")  # e.g. inspect's __wrapped__
        if probe or self.__dict__.get("_lazy_loaded"):
            raise AttributeError(f"module {self.__name__!r} has no attribute {name!r}")
        self.__dict__["_lazy_loaded"] = True
        self.__spec__.loader.exec_module(self)  # the package's own __init__, in this module's namespace
        return getattr(self, name)


def _lazy_package(name: str) -> None:
    """Register package `name` (its parent already imported) as a _LazyPackage; nothing of its __init__ runs."""
    import importlib.util

    spec = importlib.util.find_spec(name)
    if spec is None or spec.submodule_search_locations is None:
        raise ImportError(f"no package {name}")
    module = _LazyPackage(name)
    module.__spec__, module.__loader__ = spec, spec.loader
    module.__path__, module.__file__ = list(spec.submodule_search_locations), spec.origin
    module.__package__ = name
    sys.modules[name] = module
    if "." in name:
        parent, _, child = name.rpartition(".")
        sys.modules[parent].__dict__[child] = module


def import_jaxmarl() -> tuple[Any, Any]:
    """Import jax and jaxmarl's SMAX modules (ImportError naming the extra when absent); returns (jax, jaxmarl).

    Only jaxmarl.environments.smax and what it imports are loaded (see _LazyPackage); the rest of jaxmarl loads when
    first used. jaxmarl's package import prints two lines and resets sys.stdout / sys.stderr to the interpreter's
    originals (its optional brax import): where that happens here, the lines go to the debug log and the caller's
    streams are put back (a later full load by other code prints them itself).
    """
    try:
        import jax
    except ImportError as err:
        raise ImportError(MISSING_EXTRA) from err
    if "jaxmarl.environments.smax" in sys.modules:
        return jax, sys.modules["jaxmarl"]
    saved = sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__
    sink = io.StringIO()
    try:
        sys.stdout = sys.__stdout__ = sink
        if "jaxmarl" not in sys.modules:
            _lazy_package("jaxmarl")
            _lazy_package("jaxmarl.environments")
        with quiet_backend_probe():  # jaxmarl builds jax arrays at import: the backends start here
            import jaxmarl.environments.smax  # noqa: F401  (registers the scenarios)
    except ImportError as err:
        for name in ("jaxmarl.environments", "jaxmarl"):
            if isinstance(sys.modules.get(name), _LazyPackage) and not sys.modules[name].__dict__.get("_lazy_loaded"):
                del sys.modules[name]
        raise ImportError(MISSING_EXTRA) from err
    finally:
        sys.stdout, sys.stderr, sys.__stdout__, sys.__stderr__ = saved
    if sink.getvalue():
        log.debug("jaxmarl import said: %s", sink.getvalue().strip())
    return jax, sys.modules["jaxmarl"]


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


@functools.lru_cache(maxsize=None)
def build_batched(scenario: str, episode_limit: int, attack_mode: str, enemy_shoots: bool) -> tuple:
    """The jaxmarl env and its jitted batched reset / step, shared by every VecEnv with these settings.

    Returns (env, reset_fn, step_fn):
      reset_fn(key, B) -> (key, states, episode_return [B], episode_length [B], floats, bools)
      step_fn(key, states, episode_return [B] f32, episode_length [B] f32, actions [B,N] i32)
          -> (key, states, episode_return, episode_length, floats, bools)
    states: the batched jaxmarl state; episode_return / episode_length: running sums of the unfinished episodes;
    floats / bools: the fields RESET_* or STEP_* flattened and concatenated (shapes in field_shapes).
    """
    jax, _ = import_jaxmarl()
    import jax.numpy as jnp
    from jaxmarl.environments.smax import HeuristicEnemySMAX, map_name_to_scenario

    # what jaxmarl.make("HeuristicEnemySMAX", **kwargs) builds, without loading jaxmarl's other environments
    env = HeuristicEnemySMAX(scenario=map_name_to_scenario(scenario), max_steps=episode_limit,
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


# ----------------------------------------------------------------------------------------------- export cache

# Bump when the exported functions' signature or the files' layout changes (old entries are then never read).
EXPORT_FORMAT = 1
META_KEYS = ("agents", "num_allies", "obs_size", "state_size", "num_ally_actions", "max_steps", "n_leaves")


class BatchedCalls(NamedTuple):
    """The batched reset / step of one SMAX setting at one B, as jitted calls of jax.export'ed modules.

    reset(key) -> (key, leaves, episode_return [B], episode_length [B], floats, bools)
    step(key, leaves, episode_return, episode_length, actions [B,N] i32) -> the same
    leaves: the batched jaxmarl state as a tuple of arrays (jax.tree.leaves order; state_treedef() rebuilds it);
    floats / bools as in build_batched. meta: the env's sizes (META_KEYS). loaded: True when read from the cache.
    """
    meta: dict
    reset: Callable
    step: Callable
    loaded: bool


@functools.lru_cache(maxsize=None)
def export_key(scenario: str, episode_limit: int | None, attack_mode: str, enemy_shoots: bool, num_envs: int,
               platform: str) -> str:
    """A digest of everything the exported reset / step depend on: the settings, B, the jax device platform, the
    versions of jax, jaxlib and jaxmarl, this file's source and jaxmarl's SMAX sources (a local edit of either makes
    a new entry). jaxmarl is located, not imported."""
    import importlib.util
    from importlib import metadata

    spec = importlib.util.find_spec("jaxmarl")
    if spec is None or spec.origin is None:
        raise ImportError(MISSING_EXTRA)
    digest = hashlib.sha256()
    versions = [metadata.version(dist) for dist in ("jax", "jaxlib", "jaxmarl")]
    digest.update(repr([EXPORT_FORMAT, scenario, episode_limit, attack_mode, enemy_shoots, num_envs, platform,
                        versions]).encode())
    digest.update(Path(__file__).read_bytes())
    for path in sorted((Path(spec.origin).parent / "environments" / "smax").glob("*.py")):
        digest.update(path.name.encode() + b"\0" + path.read_bytes())
    return digest.hexdigest()[:40]


def lowering_platform(device: Any) -> str:
    """jax.export's name of a jax device's platform: "cpu", "tpu", or for a GPU (jax platform "gpu") "cuda" or
    "rocm", read from the client's platform version."""
    if device.platform != "gpu":
        return str(device.platform)
    version = str(getattr(device.client, "platform_version", "")).lower()
    return "rocm" if "rocm" in version else "cuda"


@functools.lru_cache(maxsize=None)
def state_treedef(scenario: str, episode_limit: int, attack_mode: str, enemy_shoots: bool, num_envs: int) -> Any:
    """The pytree structure of the batched jaxmarl state at B = num_envs (traced, not run)."""
    jax, _ = import_jaxmarl()
    _, reset_fn, _ = build_batched(scenario, episode_limit, attack_mode, enemy_shoots)
    out = jax.eval_shape(lambda k: reset_fn(k, num_envs), jax.ShapeDtypeStruct((2,), jax.numpy.uint32))
    return jax.tree.structure(out[1])


def _export(scenario: str, episode_limit: int, attack_mode: str, enemy_shoots: bool, num_envs: int,
            platform: str) -> tuple[dict, Any, Any]:
    """Trace build_batched's reset / step at B = num_envs with the state flattened -> (meta, Exported, Exported)."""
    jax, _ = import_jaxmarl()
    from jax import export

    env, reset_fn, step_fn = build_batched(scenario, episode_limit, attack_mode, enemy_shoots)
    treedef = state_treedef(scenario, episode_limit, attack_mode, enemy_shoots, num_envs)

    def reset_flat(key: Any) -> tuple:
        key, states, ep_return, ep_length, floats, bools = reset_fn(key, num_envs)
        return (key, tuple(jax.tree.leaves(states)), ep_return, ep_length, floats, bools)

    def step_flat(key: Any, leaves: tuple, ep_return: Any, ep_length: Any, actions: Any) -> tuple:
        out = step_fn(key, jax.tree.unflatten(treedef, leaves), ep_return, ep_length, actions)
        return (out[0], tuple(jax.tree.leaves(out[1]))) + out[2:]

    key = jax.ShapeDtypeStruct((2,), jax.numpy.uint32)
    shapes = jax.eval_shape(reset_flat, key)
    actions = jax.ShapeDtypeStruct((num_envs, env.num_allies), jax.numpy.int32)
    exp_reset = export.export(jax.jit(reset_flat), platforms=(platform,))(key)
    exp_step = export.export(jax.jit(step_flat), platforms=(platform,))(key, *shapes[1:4], actions)
    meta = {"agents": list(env.agents), "num_allies": env.num_allies, "obs_size": env.obs_size,
            "state_size": env.state_size, "num_ally_actions": env.num_ally_actions, "max_steps": env.max_steps,
            "n_leaves": len(shapes[1])}
    return meta, exp_reset, exp_step


def _read_entry(folder: Path, quiet: bool = False) -> tuple[dict, Any, Any] | None:
    """A cache entry (meta.json, reset.bin, step.bin) -> (meta, Exported, Exported); None when absent or unreadable
    (a damaged entry is logged unless quiet, and ignored: the caller exports anew and replaces it)."""
    if not (folder / "meta.json").is_file():
        return None
    from jax import export

    try:
        meta = json.loads((folder / "meta.json").read_text())
        if sorted(meta) != sorted(META_KEYS):
            raise ValueError(f"meta.json keys {sorted(meta)}")
        blobs = [bytearray((folder / name).read_bytes()) for name in ("reset.bin", "step.bin")]
        return meta, export.deserialize(blobs[0]), export.deserialize(blobs[1])
    except Exception as e:  # noqa: BLE001 (any damage: a truncated file, a flatbuffer jax rejects, bad JSON)
        if quiet:
            return None
        log.warning("SMAX export cache entry %s is unreadable (%s: %s); exporting it anew", folder,
                    type(e).__name__, e)
        return None


def _write_entry(folder: Path, meta: dict, exp_reset: Any, exp_step: Any) -> None:
    """Write a cache entry atomically: a sibling temp folder renamed into place, over a damaged entry (the caller
    found it unreadable) but never over a readable one a concurrent run wrote first (its module is the same). A
    failure is logged, not raised: the run goes on with what it exported."""
    tmp = folder.with_name(f"{folder.name}.{os.getpid()}.tmp")
    try:
        tmp.mkdir(parents=True, exist_ok=True)
        (tmp / "reset.bin").write_bytes(exp_reset.serialize())
        (tmp / "step.bin").write_bytes(exp_step.serialize())
        (tmp / "meta.json").write_text(json.dumps(meta))
        if folder.exists() and _read_entry(folder, quiet=True) is not None:
            return  # written meanwhile by another run
        shutil.rmtree(folder, ignore_errors=True)
        os.replace(tmp, folder)
    except OSError as e:
        if not (folder / "meta.json").is_file():
            log.warning("SMAX export cache %s not written (%s); the next run exports again", folder,
                        e.strerror or e)
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


@functools.lru_cache(maxsize=None)
def batched_calls(scenario: str, episode_limit: int | None, attack_mode: str, enemy_shoots: bool, num_envs: int,
                  platform: str, cache_dir: str) -> BatchedCalls:
    """The exported batched reset / step for these settings at B = num_envs on `platform` (lowering_platform()).

    Read from cache_dir/smax_export/<export_key> when there (jaxmarl is then not imported and nothing is traced:
    only XLA's compile remains, itself served by jax's persistent compilation cache); else traced from
    build_batched, exported, and written there. Both ways run the same serialized module, so a run computes the
    same numbers whether its entry was read or written. A scenario jaxmarl does not know (never in the cache) raises
    EnvConfigError naming the allowed ones."""
    try:
        import jax
    except ImportError as err:
        raise ImportError(MISSING_EXTRA) from err
    folder = Path(cache_dir) / "smax_export" / export_key(scenario, episode_limit, attack_mode, enemy_shoots,
                                                          num_envs, platform)
    entry = _read_entry(folder)
    loaded = entry is not None
    if entry is None:
        allowed = scenarios()
        if scenario not in allowed:
            raise EnvConfigError(f"env.scenario={scenario!r}; allowed: {allowed}")
        limit = default_episode_limit() if episode_limit is None else episode_limit
        entry = _export(scenario, limit, attack_mode, enemy_shoots, num_envs, platform)
        _write_entry(folder, *entry)
        # what a later run reads: the serialized form (so a written and a read entry run one module)
        entry = _read_entry(folder) or entry
    meta, exp_reset, exp_step = entry
    return BatchedCalls(meta, jax.jit(exp_reset.call), jax.jit(exp_step.call), loaded)
