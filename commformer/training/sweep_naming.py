"""Where the run sits (Hydra): its display name, its wandb group and whether it is one job of a sweep (-m), read
from Hydra's runtime config and the multirun.yaml of the sweep folder."""
from __future__ import annotations

import os
import re
from dataclasses import dataclass
from pathlib import Path

from commformer.overrides import override_key


@dataclass(frozen=True)
class RunContext:
    """name: the run's display name (wandb, console prefix under -m); group: its wandb group; multirun: one job of a
    Hydra sweep (-m)."""

    name: str
    group: str | None = None
    multirun: bool = False


def sweep_group(sweep_dir: str | os.PathLike) -> str:
    """The wandb group of a sweep: its folder's name, with the date folder above it when there is one (the default
    runs/multirun/<date>/<time> gives "<date>_<time>")."""
    p = Path(sweep_dir)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.parent.name):
        return f"{p.parent.name}_{p.name}"
    return p.name


def swept_keys(sweep_dir: str | os.PathLike) -> set[str] | None:
    """The keys a sweep varies (`key=a,b`, `key=range(...)`, ...) on the command line or in hydra.sweeper.params (a
    study's grid), read from the multirun.yaml that Hydra's basic sweeper writes into the sweep folder before it
    launches a job; None when there is none to read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        hydra_cfg = OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra
        params = [f"{k}={v}" for k, v in (OmegaConf.select(hydra_cfg, "sweeper.params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides(params + [str(o) for o in hydra_cfg.overrides.task])
    except (OSError, OmegaConfBaseException, HydraException):
        return None
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def run_context(base_name: str, group: str | None = None) -> RunContext:
    """The RunContext of the current process. Inside a Hydra app the name is `base_name` plus the overrides that set
    this run apart: under -m the swept ones (their values in this job), else every task override, e.g.
    pp_commformer_s1_algo.sparsity=0.6. Keys of hydra.job.config.override_dirname.exclude_keys never count, nor do
    seed, env and algo (base_name carries them). Under -m the group defaults to the sweep folder (sweep_group).
    Outside Hydra: base_name and `group` as given."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return RunContext(base_name, group)
    if not HydraConfig.initialized():
        return RunContext(base_name, group)
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    exclude = set(hc.job.config.override_dirname.exclude_keys) | {"seed", "env", "algo"}
    swept = swept_keys(hc.sweep.dir) if multirun else None
    keys = {o: override_key(o) for o in hc.overrides.task}
    differing = sorted(o for o, k in keys.items() if k not in exclude and (swept is None or k in swept))
    name = base_name + ("_" + ",".join(differing) if differing else "")
    if multirun and group is None:
        group = sweep_group(hc.sweep.dir)
    return RunContext(name, group, multirun)
