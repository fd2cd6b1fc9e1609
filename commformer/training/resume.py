"""Resuming a run: what a command may change, which folder it continues in, and the checks that come first.

A resume continues the run of the checkpoint it is given, in the run folder it is given (a copied or moved folder
carries on by itself; the original is never written). The command may change only the keys of RESUME_OVERRIDABLE;
any other override that differs from the checkpoint's run is an error, as is a budget below the steps already done.
"""
from __future__ import annotations

import shutil
from dataclasses import replace
from pathlib import Path
from typing import Any, Sequence

from omegaconf import OmegaConf

from commformer.config import Config, ConfigError
from commformer.hydra_glue import from_yaml
from commformer.overrides import override_key
from commformer.training.checkpoint import CheckpointError, checkpoint_path, load_checkpoint, remove_stale_temps

# Keys a resumed run takes from the command line instead of the checkpoint's config.
RESUME_OVERRIDABLE = ("total_env_steps", "eval_every", "checkpoint_every", "logger", "device", "torch_threads",
                      "run_dir", "resume")
# Files of a run folder that a resume into another folder brings along when that folder lacks them.
CARRIED_FILES = ("metrics.csv", "graph_history.jsonl")


def resumed_config(saved: Config, current: Config, overrides: Sequence[str] | None = None) -> Config:
    """The checkpoint's config with the keys of RESUME_OVERRIDABLE taken from the current config: all of them
    (overrides None: a config built in code), or only those the command line sets (overrides: its key=value
    strings; `resume` and `run_dir` always come from the command)."""
    given = None if overrides is None else {override_key(o).split(".", 1)[0] for o in overrides}
    keys = [k for k in RESUME_OVERRIDABLE if given is None or k in given or k in ("resume", "run_dir")]
    return replace(saved, **{k: getattr(current, k) for k in keys})


def run_folder_of(resume: str | Path) -> Path | None:
    """The run folder a `resume=` argument names: the folder itself, or the folder holding checkpoints/<file>.pt;
    None for a checkpoint file outside a run folder."""
    path = Path(resume)
    if path.is_dir():
        return path
    if path.parent.name == "checkpoints":
        return path.parent.parent
    return None


def check_first_write(resume: str) -> None:
    """A run folder without a checkpoint whose checkpoints/ holds only the temp file of a killed write (the run was
    stopped during its first checkpoint write): CheckpointError saying so, after removing the temp file as a later
    start would. Anything else is left to checkpoint_path's own error."""
    try:
        checkpoint_path(resume)
        return
    except CheckpointError:
        pass
    path = Path(resume)
    folders = [path / "checkpoints", path] if path.is_dir() else [path.parent] if path.parent.is_dir() else []
    removed = [p for folder in folders for p in remove_stale_temps(folder)]
    if removed:
        raise CheckpointError(f"resume={resume!r}: the run has no complete checkpoint yet: it was stopped during its "
                              f"first checkpoint write (the partial file {removed[0].name} is removed); start it "
                              "again (the same command without resume=)")


def saved_config(ckpt: dict[str, Any], resume: str) -> Config:
    try:
        return from_yaml(ckpt["config"])
    except (KeyError, ValueError, TypeError) as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {resume!r} holds no valid config ({first})") from None


def changed_overrides(saved: Config, current: Config, overrides: Sequence[str]) -> list[str]:
    """The overrides of the command (key=value strings) that set a key outside RESUME_OVERRIDABLE to something else
    than the checkpoint's run has (a group override such as env=pcp compares the whole group)."""
    old = OmegaConf.structured(saved)
    new = OmegaConf.structured(current)
    out = []
    for override in overrides:
        key = override_key(override)
        if key.startswith("hydra") or key.split(".", 1)[0] in RESUME_OVERRIDABLE:
            continue
        if OmegaConf.select(old, key, default=None) != OmegaConf.select(new, key, default=None):
            out.append(override)
    return out


def plan_resume(current: Config, overrides: Sequence[str] | None = None) -> tuple[dict[str, Any], Config]:
    """(checkpoint, resumed Config) for a config with `resume=` set; CheckpointError / ConfigError (one line) when
    the checkpoint is unusable, when an override cannot apply to a resume, or when the budget is below the steps the
    run already did. overrides: the command line's key=value strings (None for a config built in code: then every
    RESUME_OVERRIDABLE key comes from `current` and nothing else is compared)."""
    assert current.resume, "plan_resume needs cfg.resume"
    check_first_write(current.resume)
    ckpt = load_checkpoint(current.resume, map_location="cpu")
    saved = saved_config(ckpt, current.resume)
    bad = changed_overrides(saved, current, overrides or ())
    if bad:
        raise ConfigError(f"{bad[0]}: a resume continues the checkpoint's run and cannot change "
                          f"{bad[0].split('=', 1)[0].lstrip('+~')}; a resume may change only: "
                          f"{', '.join(k for k in RESUME_OVERRIDABLE if k != 'resume')} (start a new run instead)")
    cfg = resumed_config(saved, current, overrides)
    done = int(ckpt.get("env_steps", 0))
    if cfg.iterations < int(ckpt.get("iteration", 0)):
        raise ConfigError(f"total_env_steps={cfg.total_env_steps}: below the {done} env steps this run already did "
                          f"(iteration {ckpt.get('iteration')}); give at least {done}, or leave it out to keep "
                          f"{saved.total_env_steps}")
    return ckpt, cfg


def carry_files(resume: str | Path, run_dir: Path) -> None:
    """Bring metrics.csv and the graph history from the checkpoint's run folder into `run_dir` when a resume
    continues in another folder that lacks them (so its rows continue where the checkpoint's run left off)."""
    source = run_folder_of(checkpoint_path(resume))
    if source is None or source.resolve() == run_dir.resolve():
        return
    for name in CARRIED_FILES:
        if (source / name).is_file() and not (run_dir / name).exists():
            run_dir.mkdir(parents=True, exist_ok=True)
            shutil.copy2(source / name, run_dir / name)


def resumed_wandb_id(ckpt: dict[str, Any], run_dir: Path) -> str | None:
    """The wandb run a resume continues: the checkpoint's, when the run goes on in the folder that wrote it; a copy
    of the folder is a run of its own and gets a new wandb run (None)."""
    recorded = ckpt.get("run_dir")
    if not ckpt.get("wandb_id") or not recorded:
        return None
    return str(ckpt["wandb_id"]) if Path(recorded).resolve() == Path(run_dir).resolve() else None
