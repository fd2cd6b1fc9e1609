"""make_env(cfg): the env config (conf/env/*.yaml) -> a VecEnv.

An env config is flat: `family` picks the class, `name` labels the run, `eval_episodes` is read by the evaluator,
and every other key is a keyword argument of the family's constructor (checked here against its signature).
Families import lazily, so optional dependencies (jax, StarCraft II) are only needed when used.
"""
from __future__ import annotations

import importlib
import inspect
from typing import Any, Mapping

import torch

from envs.core import VecEnv

# family -> "module:Class"; each class is constructed as Class(num_envs=B, device=..., **params).
FAMILIES: dict[str, str] = {
    "predator_prey": "envs.predator_prey:PredatorPrey",
    "predator_capture_prey": "envs.predator_prey:PredatorCapturePrey",
    "signal": "envs.signal:SignalGame",
    "pettingzoo": "envs.pettingzoo:PettingZooVecEnv",
    "smax": "envs.smax:SMAXVecEnv",
    "smacv2": "envs.smacv2:SMACv2VecEnv",
}

# Keys of an env config that are not constructor arguments.
META_KEYS = ("name", "family", "eval_episodes", "eval_envs")


def env_class(family: str) -> type:
    """The VecEnv class registered for `family` (ValueError naming the allowed families)."""
    if family not in FAMILIES:
        raise ValueError(f"env.family={family!r}; allowed: {sorted(FAMILIES)}")
    module, cls = FAMILIES[family].split(":")
    return getattr(importlib.import_module(module), cls)


def env_params(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor keyword arguments of an env config (all keys but META_KEYS)."""
    return {k: v for k, v in cfg.items() if k not in META_KEYS}


def make_env(cfg: Mapping[str, Any], num_envs: int, device: str | torch.device = "cpu") -> VecEnv:
    """Build the VecEnv described by `cfg` (a mapping with `family` and the constructor's keys).

    Unknown keys raise ValueError naming the key and the allowed ones. Seeding happens in reset(seed).
    """
    if "family" not in cfg:
        raise ValueError(f"env config needs a 'family' key; allowed families: {sorted(FAMILIES)}")
    cls = env_class(str(cfg["family"]))
    params = env_params(cfg)
    sig = inspect.signature(cls.__init__)
    allowed = [p for p in sig.parameters if p not in ("self", "num_envs", "device")]
    takes_any = any(p.kind == p.VAR_KEYWORD for p in sig.parameters.values())
    for key in params:
        if key not in allowed and not takes_any:
            raise ValueError(f"env.{key}={params[key]!r}: unknown key for env family {cfg['family']!r}; "
                             f"allowed: {sorted(allowed + list(META_KEYS))}")
    if num_envs < 1:
        raise ValueError(f"num_envs={num_envs}; must be >= 1")
    return cls(num_envs=num_envs, device=torch.device(device), **params)
