"""Environments behind one batched-tensor contract (envs.core). This package never imports commformer."""
from envs.core import EnvSpec, Step, VecEnv
from envs.registry import FAMILIES, make_env, validate_env_config

__all__ = ["EnvSpec", "Step", "VecEnv", "FAMILIES", "make_env", "validate_env_config"]
