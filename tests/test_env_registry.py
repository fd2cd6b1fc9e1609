"""The env registry and the helpers every family shares (envs/registry.py, envs/core.py): config validation against
each family's constructor, what a family declares without being built, and the shared checks."""
from __future__ import annotations

import importlib.util
import subprocess
import sys
from pathlib import Path

import pytest
import torch
import yaml
from omegaconf import OmegaConf

from envs.core import EnvConfigError, Step, check_available, check_num_envs, plain, random_available
from envs.registry import (
    FAMILIES, META_KEYS, REQUIRED, env_class, env_schema, family_note, family_unavailable, make_env,
    validate_env_config,
)

ROOT = Path(__file__).resolve().parents[1]
CONF_ENV = ROOT / "conf" / "env"
PP_KEYS = "['dim', 'episode_limit', 'eval_envs', 'eval_episodes', 'family', 'n_predators', 'name', 'vision']"


# ---------------------------------------------------------------------------------------------------------------------
# validate_env_config
# ---------------------------------------------------------------------------------------------------------------------

@pytest.mark.parametrize("path", sorted(CONF_ENV.glob("*.yaml")), ids=lambda p: p.stem)
def test_every_shipped_config_is_valid(path):
    raw = yaml.safe_load(path.read_text())
    assert validate_env_config(raw) == raw
    out = validate_env_config(OmegaConf.load(path))  # the form the trainer passes
    assert out == raw and type(out) is dict


def test_validation_imports_no_optional_dependency():
    code = ("import sys, glob, yaml; from envs.registry import validate_env_config, family_note, family_unavailable\n"
            "for f in glob.glob('conf/env/*.yaml'):\n"
            "    cfg = yaml.safe_load(open(f)); validate_env_config(cfg); family_note(cfg['family'])\n"
            "    family_unavailable(cfg['family'])\n"
            "heavy = [m for m in sys.modules if m.split('.')[0] in ('jax', 'jaxmarl', 'smacv2', 'pysc2', 'mpe2')]\n"
            "sys.exit(f'imported {heavy}' if heavy else 0)")
    subprocess.run([sys.executable, "-c", code], check=True, cwd=ROOT)


def test_unknown_key_names_the_allowed_ones_and_the_closest():
    with pytest.raises(ValueError) as info:
        validate_env_config({"name": "pp", "family": "predator_prey", "dimm": 5})
    assert str(info.value) == (f"env.dimm=5: unknown key for env family 'predator_prey'; allowed: {PP_KEYS}; "
                               "did you mean 'dim'?")
    with pytest.raises(ValueError) as info:
        validate_env_config({"family": "predator_prey", "zzz": 1})
    assert str(info.value) == f"env.zzz=1: unknown key for env family 'predator_prey'; allowed: {PP_KEYS}"


@pytest.mark.parametrize("cfg, message", [
    ({"family": "predator_prey", "dim": "abc"},
     "env.dim='abc': wrong type for env family 'predator_prey'; expected int, got str"),
    ({"family": "predator_prey", "dim": True},
     "env.dim=True: wrong type for env family 'predator_prey'; expected int, got bool"),
    ({"family": "smax", "episode_limit": 2.5},
     "env.episode_limit=2.5: wrong type for env family 'smax'; expected int | None, got float"),
    ({"family": "smax", "enemy_shoots": "yes"},
     "env.enemy_shoots='yes': wrong type for env family 'smax'; expected bool, got str"),
    ({"family": "pettingzoo", "factory": "m:f", "kwargs": [1]},
     "env.kwargs=[1]: wrong type for env family 'pettingzoo'; expected mapping | None, got list"),
])
def test_wrong_type_names_key_value_and_type(cfg, message):
    with pytest.raises(ValueError) as info:
        validate_env_config(cfg)
    assert str(info.value) == message


def test_null_and_mapping_values_fit_optional_keys():
    validate_env_config({"family": "smax", "episode_limit": None})
    validate_env_config({"family": "smacv2", "map_name": "3m", "env_kwargs": OmegaConf.create({"a": 1})})


def test_unknown_or_missing_family():
    with pytest.raises(ValueError) as info:
        validate_env_config({"family": "predator_pray"})
    assert str(info.value) == f"env.family='predator_pray'; allowed: {sorted(FAMILIES)}; did you mean 'predator_prey'?"
    with pytest.raises(ValueError, match=r"^env config needs a 'family' key; allowed families: \["):
        validate_env_config({"name": "pp"})


def test_missing_required_key():
    with pytest.raises(ValueError) as info:
        validate_env_config({"family": "smacv2"})
    assert str(info.value) == "env.map_name is missing: env family 'smacv2' needs it (required keys: ['map_name'])"


def test_config_errors_are_env_config_errors():
    """One type for a bad env config, from the registry and from the constructors; still a ValueError."""
    for cfg in ({"family": "nope"}, {"family": "predator_prey", "dimm": 5}, {"family": "predator_prey", "dim": 1},
                {"family": "signal", "shift": 3}, {"family": "pettingzoo", "factory": "no_such_pkg.mod:make"}):
        with pytest.raises(EnvConfigError) as info:
            make_env(cfg, num_envs=1)
        assert isinstance(info.value, ValueError) and str(info.value).startswith("env.")


def test_make_env_validates_before_building():
    with pytest.raises(ValueError, match=r"^env\.dimm=5: unknown key .*; did you mean 'dim'\?$"):
        make_env({"family": "predator_prey", "dimm": 5}, num_envs=2)
    with pytest.raises(ValueError, match=r"^num_envs=0; must be >= 1$"):
        make_env({"family": "predator_prey"}, num_envs=0)


def test_schema_comes_from_the_constructor():
    schema = env_schema("predator_prey")
    assert list(schema.keys) == ["dim", "n_predators", "vision", "episode_limit"] and not schema.extra_keys
    assert (schema.keys["dim"].type, schema.keys["dim"].default) == (int, 5)
    assert env_schema("pettingzoo").keys["factory"].default is REQUIRED
    for family in FAMILIES:
        assert not set(env_schema(family).keys) & set(META_KEYS), family


# ---------------------------------------------------------------------------------------------------------------------
# What a family declares without being built
# ---------------------------------------------------------------------------------------------------------------------

def test_family_note():
    assert family_note("smax") == "SMAX numbers are not comparable to SMAC"
    assert [f for f in FAMILIES if family_note(f) is not None] == ["smax"]
    with pytest.raises(ValueError, match=r"^env\.family='nope'; allowed: "):
        family_note("nope")


def test_family_unavailable(monkeypatch):
    for family in ("predator_prey", "predator_capture_prey", "signal", "pettingzoo"):
        assert family_unavailable(family) is None
    monkeypatch.delenv("SC2PATH", raising=False)
    assert family_unavailable("smacv2").startswith("StarCraft II not found: SC2PATH is unset; run "
                                                   "scripts/install_sc2.sh")
    real = importlib.util.find_spec
    monkeypatch.setattr(importlib.util, "find_spec", lambda name, *a: None if name == "jaxmarl" else real(name, *a))
    assert family_unavailable("smax") == "SMAX needs the [smax] extra: pip install -e '.[smax]'"
    assert env_class("smax").unavailable_reason() == family_unavailable("smax")


# ---------------------------------------------------------------------------------------------------------------------
# Shared helpers (envs/core.py)
# ---------------------------------------------------------------------------------------------------------------------

def test_check_available_names_env_agent_action_and_the_available_ones():
    avail = torch.ones(2, 3, 4, dtype=torch.bool)
    avail[1, 2] = torch.tensor([True, False, True, False])
    names = ("a", "b", "c")
    check_available(torch.tensor([[3, 3, 3], [0, 0, 2]]), avail, names)
    with pytest.raises(ValueError) as info:
        check_available(torch.tensor([[0, 0, 0], [0, 0, 1]]), avail, names)
    assert str(info.value) == "step(): action 1 of agent 'c' in env 1 is not available; available: [0, 2]"
    with pytest.raises(ValueError, match=r"^step\(\): action 4 of agent 'b' in env 0 is not available; "
                                         r"available: \[0, 1, 2, 3\]$"):
        check_available(torch.tensor([[0, 4, 0], [0, 0, -1]]), avail, names)  # the first in row-major order


def test_check_num_envs():
    assert check_num_envs(3) == 3
    with pytest.raises(ValueError) as info:
        check_num_envs(0)
    assert str(info.value) == "num_envs=0; must be >= 1"
    for bad in (True, 2.0, "2"):
        with pytest.raises(ValueError, match=r"; must be an integer >= 1$"):
            check_num_envs(bad)


def test_random_available_picks_only_available_actions_uniformly():
    gen = torch.Generator().manual_seed(0)
    avail = torch.rand(64, 5, 7, generator=gen) < 0.4
    avail[..., 3] = True  # every agent has at least one
    counts = torch.zeros(64, 5, 7)
    for _ in range(200):
        a = random_available(avail, gen)
        assert a.dtype == torch.long and a.shape == (64, 5)
        assert bool(avail.gather(-1, a[..., None]).all())
        counts.scatter_add_(-1, a[..., None], torch.ones(64, 5, 1))
    assert bool((counts[avail] > 0).float().mean() > 0.99), "nearly every available action is drawn"
    same = [random_available(avail, torch.Generator().manual_seed(1)) for _ in range(2)]
    assert torch.equal(*same)


def test_step_alive_is_active():
    alive = torch.tensor([[True, False]])
    z = torch.zeros(1, 2, 3)
    step = Step.alive_is_active(obs=z, state=z[:, 0], avail_actions=alive[..., None], reward=z[..., 0],
                                terminated=alive[:, 0], truncated=alive[:, 0], alive=alive, final_obs=z,
                                final_state=z[:, 0], final_alive=alive, episode={})
    assert torch.equal(step.active, alive) and step.active.data_ptr() != alive.data_ptr()


def test_plain_turns_containers_into_dicts_and_lists():
    node = OmegaConf.create({"a": {"b": [1, {"c": (2, 3)}]}, "s": "xy", 1: None})
    out = plain(node)
    assert out == {"a": {"b": [1, {"c": [2, 3]}]}, "s": "xy", "1": None}
    assert type(out["a"]) is dict and type(out["a"]["b"]) is list and type(out["a"]["b"][1]["c"]) is list
