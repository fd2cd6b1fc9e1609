"""make_env(cfg): the env config (conf/env/*.yaml) -> a VecEnv; validate_env_config(cfg): its checks, building nothing.

An env config is flat: `family` picks the class, `name` labels the run, `eval_episodes` / `eval_envs` are read by the
evaluator (META_KEYS), and every other key is a keyword argument of the family's constructor. The constructor's
signature is the family's schema (env_schema): its parameters other than num_envs and device are the allowed keys,
their annotations the types and their defaults the defaults, so each default lives in one place (the constructor).
Families import lazily, and their modules import no optional dependency (jax, smacv2, pysc2) at import time, so a
config is validated without them and without starting anything. What tools may ask a family without building an env
(a note for its results, why it cannot run here) comes from the class too: family_note(), family_unavailable().
"""
from __future__ import annotations

import collections.abc
import difflib
import importlib
import inspect
import types
import typing
from dataclasses import dataclass
from typing import Any, Mapping, Union

import torch

from envs.core import EnvConfigError, VecEnv, check_num_envs, plain

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
# Constructor parameters make_env passes itself (never config keys).
BUILD_ARGS = ("self", "num_envs", "device")
# EnvKey.default of a key the config must give.
REQUIRED = inspect.Parameter.empty


@dataclass(frozen=True)
class EnvKey:
    """One config key of an env family: its name, its type (the constructor's annotation, Any without one) and its
    default (REQUIRED when the constructor has none)."""

    name: str
    type: Any
    default: Any

    @property
    def required(self) -> bool:
        return self.default is REQUIRED


@dataclass(frozen=True)
class EnvSchema:
    """The config keys of one env family, read off its constructor; extra_keys: it takes **kwargs (other keys pass
    unchecked)."""

    family: str
    keys: Mapping[str, EnvKey]
    extra_keys: bool = False


def closest_name(word: str, choices: typing.Iterable[str]) -> str | None:
    """The closest of `choices` to `word` (difflib, ratio >= 0.6), or None when none is close."""
    close = difflib.get_close_matches(word, list(choices), n=1)
    return close[0] if close else None


def did_you_mean(word: str, choices: typing.Iterable[str]) -> str:
    """"; did you mean 'x'?" for the closest of `choices`, or "" when none is close."""
    close = closest_name(word, choices)
    return f"; did you mean {close!r}?" if close else ""


def check_family(family: Any) -> str:
    """`family` when it is registered, else EnvConfigError naming the allowed families (and the closest one)."""
    if not isinstance(family, str) or family not in FAMILIES:
        hint = did_you_mean(family, FAMILIES) if isinstance(family, str) else ""
        raise EnvConfigError(f"env.family={family!r}; allowed: {sorted(FAMILIES)}{hint}")
    return family


def env_class(family: str) -> type:
    """The VecEnv class registered for `family` (EnvConfigError naming the allowed families)."""
    module, cls = FAMILIES[check_family(family)].split(":")
    return getattr(importlib.import_module(module), cls)


def env_schema(family: str) -> EnvSchema:
    """The config keys of `family`: every constructor parameter but num_envs and device, typed by its annotation."""
    init = env_class(family).__init__
    hints = typing.get_type_hints(init)
    keys, extra = {}, False
    for name, p in inspect.signature(init).parameters.items():
        if p.kind == p.VAR_KEYWORD:
            extra = True
        elif p.kind != p.VAR_POSITIONAL and name not in BUILD_ARGS:
            keys[name] = EnvKey(name, hints.get(name, Any), p.default)
    return EnvSchema(family, keys, extra)


# ---------------------------------------------------------------------------------------------------------------------
# Types of config values (plain values: what YAML gives, after envs.core.plain)
# ---------------------------------------------------------------------------------------------------------------------

def type_matches(value: Any, tp: Any) -> bool:
    """Whether a plain config value fits annotation `tp` (bool is not an int; an int is a float; a mapping fits
    Mapping[...], a list fits list / tuple / Sequence[...]; parameters of generics are not checked)."""
    if tp is Any:
        return True
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return any(type_matches(value, arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return value is None
    if tp in (int, float) and isinstance(value, bool):
        return False
    if tp is float:
        return isinstance(value, (int, float))
    tp = origin or tp
    if tp in (list, tuple, collections.abc.Sequence):
        return isinstance(value, (list, tuple))
    return isinstance(value, tp) if isinstance(tp, type) else True


def type_text(tp: Any) -> str:
    """A short name of annotation `tp` for messages, e.g. "int", "int | None", "mapping"."""
    if tp is Any:
        return "any"
    origin = typing.get_origin(tp)
    if origin in (Union, types.UnionType):
        return " | ".join(type_text(arg) for arg in typing.get_args(tp))
    if tp is type(None):
        return "None"
    tp = origin or tp
    if isinstance(tp, type) and issubclass(tp, collections.abc.Mapping):
        return "mapping"
    if tp in (list, tuple, collections.abc.Sequence):
        return "list"
    return getattr(tp, "__name__", str(tp))


# ---------------------------------------------------------------------------------------------------------------------
# Validation, building, and what tools may ask a family
# ---------------------------------------------------------------------------------------------------------------------

def validate_env_config(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The env config as a plain dict (envs.core.plain), after checking it against its family's schema; builds and
    starts nothing, and imports no optional dependency.

    Raises envs.core.EnvConfigError (a ValueError) with one line: no or an unknown `family`; a key the family does not
    take (with the allowed keys and the closest one); a value of the wrong type (naming key, value and expected
    type); a required key that is missing.
    """
    if not isinstance(cfg, Mapping):
        raise TypeError(f"env config must be a mapping, got {type(cfg).__name__}")
    if "family" not in cfg:
        raise EnvConfigError(f"env config needs a 'family' key; allowed families: {sorted(FAMILIES)}")
    family = check_family(cfg["family"])
    out = plain(cfg)
    schema = env_schema(family)
    allowed = sorted([*schema.keys, *META_KEYS])
    for key, value in out.items():
        if key in META_KEYS:
            continue
        if key not in schema.keys:
            if schema.extra_keys:
                continue
            raise EnvConfigError(f"env.{key}={value!r}: unknown key for env family {family!r}; allowed: {allowed}"
                                 f"{did_you_mean(key, allowed)}")
        expected = schema.keys[key].type
        if not type_matches(value, expected):
            raise EnvConfigError(f"env.{key}={value!r}: wrong type for env family {family!r}; expected "
                                 f"{type_text(expected)}, got {type(value).__name__}")
    missing = [k for k, key in schema.keys.items() if key.required and k not in out]
    if missing:
        raise EnvConfigError(f"env.{missing[0]} is missing: env family {family!r} needs it (required keys: {missing})")
    check = getattr(env_class(family), "check_config", None)
    if check is not None:  # the family's own checks of values, which build nothing
        check({**{k: key.default for k, key in schema.keys.items() if not key.required}, **env_params(out)})
    return out


def env_params(cfg: Mapping[str, Any]) -> dict[str, Any]:
    """The constructor keyword arguments of an env config (all keys but META_KEYS)."""
    return {k: v for k, v in cfg.items() if k not in META_KEYS}


def make_env(cfg: Mapping[str, Any], num_envs: int, device: str | torch.device = "cpu") -> VecEnv:
    """Build the VecEnv described by `cfg` (a mapping with `family` and the constructor's keys).

    The config is checked first (validate_env_config: unknown keys, wrong types, missing keys raise EnvConfigError).
    Seeding happens in reset(seed).
    """
    params = env_params(validate_env_config(cfg))
    check_num_envs(num_envs)
    cls = env_class(cfg["family"])
    return cls(num_envs=num_envs, device=torch.device(device), **params)


def family_note(family: str) -> str | None:
    """The caveat to print wherever `family`'s numbers are shown (its class's results_note), or None; builds
    nothing."""
    return getattr(env_class(family), "results_note", None)


def family_unavailable(family: str) -> str | None:
    """Why an env of `family` cannot be built here (its class's unavailable_reason(): a missing extra, StarCraft II),
    or None; builds and starts nothing."""
    reason = getattr(env_class(family), "unavailable_reason", None)
    return None if reason is None else reason()
