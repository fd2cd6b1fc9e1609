"""The key table of `python scripts/train.py --help`: every key with its value in the composed config (the default
unless the command overrides it) and its description from the config dataclasses (commformer.config.field_docs).

conf/config.yaml's hydra.help.template calls the `commformer_keys` resolver; register_key_help() registers it
(commformer.cli does before Hydra starts). Hydra resolves the template only to print the help."""
from __future__ import annotations

import ast
import dataclasses
import inspect
import textwrap
from typing import Any

from omegaconf import DictConfig, ListConfig, OmegaConf

from commformer.config import Config, ConfigError, LoggerConfig
from commformer.hydra_glue import algo_schema

def field_docs(cls: type) -> dict[str, str]:
    """{field name: its description}: the string literal under each field of a config dataclass and of the
    dataclasses it extends (its one home; the `--help` text and the key tables of docs/tools.md are made from it)."""
    docs: dict[str, str] = {}
    for klass in reversed(cls.__mro__):
        if not dataclasses.is_dataclass(klass):
            continue
        tree = ast.parse(textwrap.dedent(inspect.getsource(klass)))
        body = tree.body[0].body  # type: ignore[attr-defined]
        for node, nxt in zip(body, body[1:]):
            if (isinstance(node, ast.AnnAssign) and isinstance(node.target, ast.Name) and isinstance(nxt, ast.Expr)
                    and isinstance(nxt.value, ast.Constant) and isinstance(nxt.value.value, str)):
                docs[node.target.id] = " ".join(nxt.value.value.split())
    return docs


RESOLVER = "commformer_keys"
WIDTH = 118  # wrap descriptions at this column
KEY_COLUMN = 30  # descriptions start here (a longer key=value pushes its description to the next line)
def sections(cfg: Any) -> tuple[tuple[str, type], ...]:
    """(group, schema) of the key table: algo.* by the schema of the composed `algo.policy`."""
    try:
        algo = algo_schema(str(OmegaConf.select(cfg, "algo.policy", default="commformer")))
    except ConfigError:
        algo = algo_schema("commformer")
    return (("algo", algo), ("logger", LoggerConfig))


def _value_text(value: Any) -> str:
    if isinstance(value, (DictConfig, ListConfig)):
        value = OmegaConf.to_container(value, resolve=True)
    if value is None:
        return "null"
    if isinstance(value, bool):
        return str(value).lower()
    return str(value)


def _entry(key: str, value: Any, doc: str) -> list[str]:
    head = f"  {key}={_value_text(value)}"
    if not doc:
        return [head]
    indent = " " * KEY_COLUMN
    body = textwrap.wrap(doc, WIDTH - KEY_COLUMN) or [""]
    if len(head) < KEY_COLUMN - 1:
        lines = [head.ljust(KEY_COLUMN) + body[0]]
        rest = body[1:]
    else:
        lines, rest = [head], body
    return lines + [indent + line for line in rest]


def key_table(cfg: Any | None = None) -> str:
    """The table: top-level keys, then algo.*, logger.* and env.* (values from `cfg`, a composed config, else the
    dataclass defaults). '$' is doubled (Hydra fills the template with string.Template)."""
    if cfg is None:
        cfg = OmegaConf.structured(Config)
    top_docs = field_docs(Config)
    lines = ["Run keys:"]
    for f in dataclasses.fields(Config):
        if f.name in ("env", "algo", "logger"):
            continue
        lines += _entry(f.name, OmegaConf.select(cfg, f.name, default=None), top_docs.get(f.name, ""))
    for name, cls in sections(cfg):
        lines += ["", f"{name}.*: {top_docs[name]}"]
        docs = field_docs(cls)
        for f in dataclasses.fields(cls):
            default = f.default if f.default is not dataclasses.MISSING else None
            lines += _entry(f"{name}.{f.name}", OmegaConf.select(cfg, f"{name}.{f.name}", default=default),
                            docs.get(f.name, ""))
    env = OmegaConf.select(cfg, "env", default=None)
    lines += ["", f"env.*: {top_docs['env']}"]
    if isinstance(env, DictConfig):
        lines += [f"  env.{k}={_value_text(env[k])}" for k in env]
    return "\n".join(lines).replace("$", "$$")


def _resolve(*, _root_: Any) -> str:
    return key_table(_root_)


def register_key_help() -> None:
    """Register the `commformer_keys` resolver (idempotent)."""
    OmegaConf.register_new_resolver(RESOLVER, _resolve, replace=True)
