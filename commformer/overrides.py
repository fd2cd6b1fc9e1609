"""Hydra command-line overrides as text: the one helper every tool that reads `key=value` overrides shares."""
from __future__ import annotations


def override_key(override: str) -> str:
    """The dotted key of an override ('+algo.lr=1' -> 'algo.lr', 'env=pcp' -> 'env', '~seed' -> 'seed')."""
    key = override.split("=", 1)[0]
    return key.lstrip("+~").split("@", 1)[0].strip()
