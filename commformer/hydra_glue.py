"""The Hydra glue: the schema registered in Hydra's ConfigStore, the composed config checked and typed (load_config:
the algo node by the schema of the policy `algo.policy` names), unknown keys named with the allowed ones, and the
config as YAML text (run folders, checkpoints). The schema itself is commformer/config.py.
"""
from __future__ import annotations

import dataclasses
import typing
from typing import Any, Iterable, Optional, Sequence

from hydra.core.config_store import ConfigStore
from omegaconf import DictConfig, OmegaConf
from omegaconf.errors import OmegaConfBaseException

from commformer.config import AlgoConfig, Config, ConfigError, LoggerConfig, check
from commformer.protocol import policy_entry
from envs.registry import closest_name

GROUPS = ("env", "algo", "logger")


def schema_keys(algo: type | None = None) -> list[str]:
    """Every dotted key of the schema: top-level fields, algo.* (of the algo schema `algo`, default commformer's),
    logger.* (env.* depend on the env family)."""
    keys = []
    for f in dataclasses.fields(Config):
        if f.name == "algo":
            keys += [f"algo.{g.name}" for g in dataclasses.fields(algo or algo_schema("commformer"))]
        elif f.name == "logger":
            keys += [f"logger.{g.name}" for g in dataclasses.fields(LoggerConfig)]
        else:
            keys.append(f.name)
    return keys


def unknown_key_line(key: str, value: Any, algo: type | None = None) -> str:
    """'<key>=<value>: unknown key (did you mean ...?); allowed: ...' for a key outside the schema (algo: the algo
    schema in force)."""
    if key.startswith("env."):
        return f"{key}={value}: unknown key for this env (env keys are checked against the env family's schema)"
    keys = schema_keys(algo)
    prefix = key.rsplit(".", 1)[0] + "." if "." in key else ""
    siblings = [k for k in keys if k.startswith(prefix) and k.count(".") == key.count(".")] if prefix else \
        [k for k in keys if "." not in k] + list(GROUPS)
    return f"{key}={value}: unknown key{closest_hint(key, siblings)}; allowed: {', '.join(sorted(set(siblings)))}"


def closest_hint(word: str, allowed: Sequence[str]) -> str:
    """' (did you mean X?)' for the closest allowed name, or ''."""
    match = closest_name(word, allowed)
    return f" (did you mean {match}?)" if match else ""


def bool_keys(algo: type | None = None) -> list[str]:
    """The dotted keys of the schema whose type is bool: top-level, algo.* (of the algo schema `algo`, default
    commformer's) and logger.*."""
    keys = []
    for cls, prefix in ((Config, ""), (algo or algo_schema("commformer"), "algo."), (LoggerConfig, "logger.")):
        try:
            hints = typing.get_type_hints(cls)
        except Exception:  # a policy's schema with annotations that do not resolve here: its literal ones
            hints = {f.name: f.type for f in dataclasses.fields(cls)}
        keys += [prefix + f.name for f in dataclasses.fields(cls)
                 if hints.get(f.name) in (bool, Optional[bool], "bool", "Optional[bool]")]
    return keys


def check_bools(values: Iterable[tuple[str, Any]], algo: type | None = None) -> None:
    """ConfigError for a value of a bool key (bool_keys) that is not true / false (or null): OmegaConf would turn
    2, 'yes' or 'on' into true without a word. values: (dotted key, value as given) pairs; interpolations pass."""
    keys = set(bool_keys(algo))
    for key, value in values:
        if key not in keys or value is None or isinstance(value, bool):
            continue
        if isinstance(value, str) and "${" in value:
            continue
        shown = repr(value) if isinstance(value, str) else value
        raise ConfigError(f"{key}={shown}; must be true or false")


def _dotted(container: Any, prefix: str = "") -> Iterable[tuple[str, Any]]:
    """(dotted key, value) of every leaf of a nested dict."""
    if isinstance(container, dict):
        for k, v in container.items():
            yield from _dotted(v, f"{prefix}{k}.") if isinstance(v, dict) else [(f"{prefix}{k}", v)]


def algo_schema(policy: str) -> type:
    """The algo schema of a policy: the `config` of its PolicyEntry (commformer.protocol.policy_entry; ConfigError
    naming the value otherwise)."""
    try:
        schema = policy_entry(policy).config
    except ValueError as e:
        raise ConfigError(str(e)) from None
    check(isinstance(schema, type) and issubclass(schema, AlgoConfig),
           f"algo.policy={policy!r}: its config {schema!r} must subclass commformer.config.AlgoConfig")
    return schema


def register_configs() -> None:
    """Register the schema in Hydra's ConfigStore (name "config_schema", the first entry of conf/config.yaml's
    defaults list). Its algo node holds the keys every policy shares (AlgoConfig) and is open to the policy's own keys:
    load_config, which every entry point runs right after composing, types it with the schema `algo.policy` names and
    rejects a key outside it. Done on import of this module, so every compose (scripts, tests, the benchmark) finds
    it."""
    node = OmegaConf.structured(Config)
    node.algo = OmegaConf.structured(AlgoConfig)
    OmegaConf.set_struct(node.algo, False)
    ConfigStore.instance().store(name="config_schema", node=node)


register_configs()


def load_config(cfg: DictConfig | dict) -> Config:
    """Merge a composed config onto the schema and run every check; ConfigError with one line on a bad value."""
    # plain values: the composed algo node is typed with the shared keys only (register_configs)
    raw = OmegaConf.create(OmegaConf.to_container(cfg, resolve=False) if isinstance(cfg, DictConfig) else cfg)
    schema = algo_schema(str(OmegaConf.select(raw, "algo.policy", default="commformer")))
    check_bools(_dotted(OmegaConf.to_container(raw, resolve=False)), schema)
    try:
        base = OmegaConf.structured(Config)
        base.algo = OmegaConf.structured(schema)
        merged = OmegaConf.merge(base, raw)
        return OmegaConf.to_object(merged)  # type: ignore[return-value]
    except ConfigError:
        raise
    except OmegaConfBaseException as e:
        key = getattr(e, "full_key", None)
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        if key and type(e).__name__ == "ConfigKeyError":  # a key outside the schema
            value = OmegaConf.select(raw, key, default="?")
            raise ConfigError(unknown_key_line(key, value, schema)) from None
        raise ConfigError(f"{key}: {first}" if key else first) from None
    except ValueError as e:  # a __post_init__ check wrapped by OmegaConf
        raise ConfigError(str(e).splitlines()[0]) from None


def to_yaml(cfg: Config) -> str:
    """The resolved config as YAML text (stored in checkpoints and the run folder)."""
    return OmegaConf.to_yaml(OmegaConf.structured(cfg))


def from_yaml(text: str) -> Config:
    return load_config(OmegaConf.create(text))
