"""Composing and checking a run's config before anything is written (no run folder, no env, no worker).

`scripts/train.py` composes every job of the command here first (each combination of a `-m` sweep), with Hydra's
compose API and the same conf/ tree, converts it to the typed Config (commformer.config.load_config, every check) and,
for `resume=`, checks the checkpoint and what the command may change. Hydra's own multi-line errors become one line
naming the override and the closest allowed names. Only then does Hydra's app start and make the run folder.
"""
from __future__ import annotations

import itertools
from pathlib import Path
from typing import Sequence

from omegaconf import OmegaConf

from commformer.config import WANDB_ENV_MODES, Config, ConfigError
from commformer.hydra_glue import algo_schema, check_bools, closest_hint, load_config, unknown_key_line
from commformer.overrides import override_key

# Command-line flags of Hydra's app that print something instead of training: no validation then.
INFO_FLAGS = ("help", "hydra_help", "cfg", "info", "shell_completion")


def group_options(group: str, conf_dir: Path) -> list[str]:
    return sorted(p.stem for p in (conf_dir / group).glob("*.yaml"))


def hydra_error_line(e: Exception, overrides: Sequence[str], conf_dir: Path) -> str:
    """One line for an exception of Hydra's compose: the override at fault and the closest allowed names."""
    from hydra.errors import MissingConfigException, OverrideParseException

    text = str(e)
    if isinstance(e, MissingConfigException):
        missing = str(getattr(e, "missing_cfg_file", "") or "")
        group, _, option = missing.partition("/")
        options = list(getattr(e, "options", None) or group_options(group, conf_dir))
        if group and option:
            return (f"{group}={option}: no such option (conf/{group}/{option}.yaml does not exist)"
                    f"{closest_hint(option, options)}; allowed: {', '.join(options)}")
        if group:  # `env=`: an empty option
            return f"{group}=: no option given; allowed: {', '.join(options)}"
        return text.strip().splitlines()[0]
    if isinstance(e, OverrideParseException):
        bad = next((o for o in overrides if o in text), None) or " ".join(overrides)
        return f"cannot parse the override(s) {bad!r}: {text.splitlines()[0]} (write key=value; quote lists and strings)"
    first = text.strip().splitlines()[0] if text.strip() else type(e).__name__
    if first.startswith("Could not override '"):
        key = first.split("'")[1]
        value = next((o.split("=", 1)[1] for o in overrides if override_key(o) == key and "=" in o), "?")
        return unknown_key_line(key, value)
    if first.startswith("Error merging override "):
        bad = first[len("Error merging override "):]
        cause = e.__cause__
        reason = str(cause).strip().splitlines()[0] if cause is not None and str(cause).strip() else "bad value"
        return f"{bad}: {reason}"
    return first


def expand_sweep(overrides: Sequence[str]) -> list[list[str]]:
    """The jobs of a `-m` command: the cartesian product of every sweep override's values (Hydra's basic sweeper
    order), each job a list of plain overrides."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    axes = []
    for o in parsed:
        if o.is_sweep_override():
            key = o.get_key_element()
            axes.append([f"{key}={v}" for v in o.sweep_string_iterator()])
        else:
            axes.append([o.input_line])
    return [list(job) for job in itertools.product(*axes)]


def sweeper_params(overrides: Sequence[str], conf_dir: Path) -> list[str]:
    """hydra.sweeper.params of the config a `-m` command composes (a study's grid, conf/study/<name>.yaml), as
    overrides ['algo=nocomm,full', 'seed=1,2', ...]; [] when it sets none. Composed as Hydra composes a multirun's
    primary config: from the command line without its sweep overrides. A command line that does not compose gives []
    (each job's own check then says why)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    try:
        plain = [o.input_line for o in OverridesParser.create().parse_overrides(list(overrides))
                 if not o.is_sweep_override()]
        cfg = _compose(plain, conf_dir, return_hydra_config=True)
    except Exception:  # reported per job by compose_job (or, for hydra.* overrides, by Hydra itself)
        return []
    params = OmegaConf.select(cfg, "hydra.sweeper.params", default=None) or {}
    return [f"{key}={value}" for key, value in params.items()]


def with_params(params: Sequence[str], overrides: Sequence[str]) -> list[str]:
    """The override list Hydra's basic sweeper expands: the sweeper params, then the command line, where a
    command-line override of a param's key replaces that param in its place (so the job order stays the study's)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    merged: dict[str, str] = {}
    for o in OverridesParser.create().parse_overrides(list(params) + list(overrides)):
        merged[o.get_key_element()] = o.input_line
    return list(merged.values())


def _compose(overrides: Sequence[str], conf_dir: Path, return_hydra_config: bool = False):
    from hydra import compose, initialize_config_dir
    from hydra.core.global_hydra import GlobalHydra

    GlobalHydra.instance().clear()
    try:
        with initialize_config_dir(config_dir=str(conf_dir), version_base="1.3", job_name="train"):
            return compose("config", overrides=list(overrides), return_hydra_config=return_hydra_config)
    finally:
        GlobalHydra.instance().clear()


def compose_job(overrides: Sequence[str], conf_dir: Path) -> Config:
    """The typed, checked Config of one job's overrides (hydra.* overrides are Hydra's own and left out here);
    ConfigError with one line on any bad override or value. A `resume=` is checked too (commformer.training.resume)."""
    mine = [o for o in overrides if not override_key(o).startswith("hydra")]
    check_env_settings(mine, conf_dir)
    # env.<key>=... for a key the chosen env config lacks: compose it as +env.<key> so the env family's schema
    # (checked in load_config) names the allowed keys
    mine = [f"+{o}" if o.startswith("env.") else o for o in mine]
    try:
        cfg = _compose(mine, conf_dir)
    except Exception as e:  # Hydra's composition errors: converted to one line
        plain = [o[1:] if o.startswith("+env.") else o for o in mine]
        if ("already" in str(e) or "+" in str(e)) and any(o.startswith("+env.") for o in mine):  # the key exists: override, not append
            try:
                cfg = _compose(plain, conf_dir)
            except Exception as e2:
                raise ConfigError(hydra_error_line(e2, plain, conf_dir)) from None
        else:
            raise ConfigError(hydra_error_line(e, plain, conf_dir)) from None
    raw = OmegaConf.to_container(cfg, resolve=False)
    # bool keys the schema types (top-level, logger.*, the shared algo.*) were already turned into true by the
    # composition (2 -> true): check the command line's own values
    check_bools(override_values(mine), algo_schema(str(OmegaConf.select(cfg, "algo.policy", default="commformer"))))
    config = load_config(raw)
    config.algo.check_given(config, [override_key(o) for o in mine])
    if config.logger.wandb != "disabled":
        check_wandb_mode()
    if config.resume:
        from commformer.training.resume import plan_resume

        plan_resume(config, mine)
    return config


def override_values(overrides: Sequence[str]) -> list[tuple[str, object]]:
    """(key, value as Hydra parses it: bool, int, float, str, None, ...) of each plain key=value override."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    out = []
    for o in OverridesParser.create().parse_overrides(list(overrides)):
        if not o.is_delete() and not o.is_sweep_override():
            out.append((o.get_key_element().lstrip("+~"), o.value()))
    return out


def check_env_settings(overrides: Sequence[str], conf_dir: Path) -> None:
    """An explicit env_settings=<option> must name a file of conf/env_settings/ (the group is optional in
    conf/config.yaml, so Hydra would skip an unknown one without a word); ~env_settings drops the per-env settings."""
    options = group_options("env_settings", conf_dir)
    for o in overrides:
        if override_key(o) != "env_settings" or o.startswith("~") or "=" not in o:
            continue
        value = o.split("=", 1)[1]
        if value not in options:
            what = ("no option given" if value in ("", "null") else
                    f"no such option (conf/env_settings/{value}.yaml does not exist){closest_hint(value, options)}")
            raise ConfigError(f"env_settings={value}: {what}; allowed: {', '.join(options)} (or ~env_settings for "
                              "none; by default the env's own, where it has one)")


def check_wandb_mode() -> None:
    """The environment variable WANDB_MODE, which wandb reads on its own: empty or unset (logger.wandb decides; an
    empty one is dropped when wandb starts, commformer.training.wandb_sink) or a mode wandb knows."""
    import os

    value = os.environ.get("WANDB_MODE")
    if value is not None and value.strip() and value not in WANDB_ENV_MODES:
        raise ConfigError(f"WANDB_MODE={value!r} (environment variable); allowed: {', '.join(WANDB_ENV_MODES)}, or "
                          "unset (logger.wandb picks the mode)")


def rebuild_sweep(overrides: Sequence[str], jobs: Sequence[Sequence[str]], rejected: set[int]) -> list[str]:
    """The overrides of a `-m` command without the sweep values whose every job was rejected (so Hydra never
    composes them); jobs rejected only in combination stay (the job itself skips them)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parsed = OverridesParser.create().parse_overrides(list(overrides))
    out = []
    axis = 0
    for o in parsed:
        if not o.is_sweep_override():
            out.append(o.input_line)
            axis += 1
            continue
        key = o.get_key_element()
        values = [f"{key}={v}" for v in o.sweep_string_iterator()]
        kept = [v for v in values
                if any(j not in rejected for j, job in enumerate(jobs) if job[axis] == v)]
        out.append(f"{key}=" + ",".join(v.split("=", 1)[1] for v in kept))
        axis += 1
    return out


def study_command_line(overrides: Sequence[str], params: Sequence[str], kept: Sequence[str]) -> list[str]:
    """The command line for Hydra once rebuild_sweep cut values from with_params(params, overrides) (kept, one line
    per key): each command-line override as kept, then each sweeper param that lost values, as a command-line
    override of its key (Hydra's basic sweeper lets it replace the param)."""
    from hydra.core.override_parser.overrides_parser import OverridesParser

    parser = OverridesParser.create()

    def key(line: str) -> str:
        return parser.parse_override(line).get_key_element()

    kept_by_key = {key(line): line for line in kept}
    cli = [kept_by_key[key(o)] for o in overrides]
    cli_keys = {key(o) for o in overrides}
    return cli + [kept_by_key[key(p)] for p in params
                  if key(p) not in cli_keys and kept_by_key[key(p)] != parser.parse_override(p).input_line]
