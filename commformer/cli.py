"""Console entry points. Each finds conf/ beside the package (an editable install or a source checkout); bad
input ends with one line and exit status 2 (commformer.errors)."""
from __future__ import annotations

import shutil
import sys
import time
from pathlib import Path

from commformer.errors import fail, guarded, one_line, user_errors

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"
# run folders (run_dir, a resumed folder) that existed before Hydra wrote its files into them: a rejected job takes
# only Hydra's files out of them, never the folder
_EXISTING_FOLDERS: set[Path] = set()


def _train_main(cfg) -> float | None:
    """Hydra's task function: one job. Its config was already checked by prepare_train (so a rejected command never
    reaches here); a job of a multirun that prepare_train reported is skipped and its folder removed."""
    from hydra.core.hydra_config import HydraConfig

    from commformer.hydra_glue import load_config
    from commformer.training.trainer import Trainer

    hc = HydraConfig.get()
    output_dir = hc.runtime.output_dir
    try:
        config = load_config(cfg)
    except user_errors():
        if hc.mode.name == "MULTIRUN":  # reported with its line before the sweep started
            remove_job_folder(Path(output_dir))
            return None
        raise
    try:
        trainer = Trainer(config, config.run_dir or output_dir, overrides=list(hc.overrides.task))
    except user_errors() as e:  # e.g. an env that rejects its settings: leave no folder behind
        remove_job_folder(Path(output_dir))
        fail(one_line(e), getattr(e, "exit_code", 2))
    from commformer.analysis.video import log_final_video

    result = guarded(lambda: trainer.train(at_end=log_final_video if config.logger.video else None))
    # sweepers (e.g. Optuna) read the returned number: the final success / win rate, else the return
    for key in ("eval/success", "eval/won", "eval/return"):
        if key in result:
            return float(result[key])
    return None


def remove_job_folder(folder: Path) -> None:
    """Delete a rejected multirun job's folder when it holds only what Hydra wrote (.hydra/ and the job log)."""
    if folder.is_dir() and all(p.name in (".hydra", "train.log") for p in folder.iterdir()):
        if folder.resolve() in _EXISTING_FOLDERS:
            shutil.rmtree(folder / ".hydra", ignore_errors=True)
            (folder / "train.log").unlink(missing_ok=True)
        else:
            shutil.rmtree(folder, ignore_errors=True)


def has_override(overrides: list[str], key: str) -> bool:
    from commformer.overrides import override_key

    return any(override_key(o) == key for o in overrides)


def hydra_quote(value: str) -> str:
    """`value` as the value of a Hydra override: plain when Hydra's grammar reads it as it is, else quoted."""
    import re

    if re.fullmatch(r"[\w./+@:%-]+", value):
        return value
    return "'" + value.replace("'", "\\'") + "'"


def prepare_train(argv: list[str], multirun: bool, overrides: list[str]) -> tuple[list[str], int]:
    """Check every job of the command before Hydra starts (commformer.compose) and return (the argv Hydra gets, the
    number of rejected jobs). A single run with a bad value raises its one-line error (nothing is written). In a
    multirun each rejected job is reported with its line; sweep values that only give rejected jobs are dropped from
    the sweep, so the others run. A study's grid (hydra.sweeper.params of conf/study/<name>.yaml) is expanded with
    the command line's sweeps, as Hydra's basic sweeper does, and checked the same way. A resume continues in the
    folder it names and records its own Hydra files (.hydra/resume_<time>/), keeping the original run's."""
    from commformer.compose import (compose_job, expand_sweep, rebuild_sweep, study_command_line, sweeper_params,
                                    with_params)
    from commformer.training.checkpoint import checkpoint_path
    from commformer.training.resume import run_folder_of
    from commformer.training.run_folder import check_run_folder

    if not multirun:
        config = compose_job(overrides, CONF_DIR)
        if has_override(overrides, "hydra.run.dir"):  # the command names Hydra's folder itself
            given = [o.split("=", 1)[1] for o in overrides if o.split("=", 1)[0].lstrip("+") == "hydra.run.dir"]
            if given:
                check_run_folder(Path(given[-1].strip("'\"")))
            return argv, 0
        # Hydra's own files (.hydra/, train.log) go to the run folder itself: run_dir when given, else the folder a
        # resume continues in (its own .hydra/ kept)
        folder = Path(config.run_dir) if config.run_dir else None
        if folder is None and config.resume:
            folder = run_folder_of(checkpoint_path(config.resume))
        if folder is not None:
            check_run_folder(folder)  # before Hydra tries to make it
            if folder.exists():
                _EXISTING_FOLDERS.add(folder.resolve())
            argv = argv + [f"hydra.run.dir={hydra_quote(str(folder.resolve()))}"]
            if config.resume:
                stamp = time.strftime("%Y-%m-%d_%H-%M-%S")
                argv = argv + [f"hydra.output_subdir=.hydra/resume_{stamp}"]
        return argv, 0
    # a study (+study=<name>) defines its grid in hydra.sweeper.params: its jobs are checked too
    params = sweeper_params(overrides, CONF_DIR)
    sweep = with_params(params, overrides) if params else list(overrides)
    jobs = expand_sweep(sweep)
    bad: list[int] = []
    for j, job in enumerate(jobs):
        try:
            compose_job(job, CONF_DIR)
        except user_errors() as e:
            bad.append(j)
            mine = " ".join(o for o in job if "=" in o)
            sys.stderr.write(f"error: job {j} of {len(jobs)} ({mine}): {one_line(e)}\n")
    if len(bad) == len(jobs):
        fail(f"every job of the sweep was rejected ({len(jobs)} of {len(jobs)}; see the lines above)")
    kept = rebuild_sweep(sweep, jobs, set(bad))
    if params:
        kept = study_command_line(overrides, params, kept)
    flags = [a for a in argv if a not in overrides]
    return flags + kept, len(bad)


def train(argv: list[str] | None = None) -> None:
    """`commformer-train [overrides...]` == `python scripts/train.py [overrides...]`. Every job is checked before
    Hydra makes a folder; a rejected command exits 2 with one line (a multirun runs the jobs that are fine, then
    exits 2 when it rejected some)."""
    import hydra
    from hydra._internal.utils import get_args_parser

    from commformer.compose import INFO_FLAGS

    argv = list(sys.argv[1:] if argv is None else argv)
    if not CONF_DIR.is_dir():
        fail(f"config folder {CONF_DIR} not found (install the project from a source checkout: pip install -e .)")
    args = get_args_parser().parse_args(argv)
    rejected = 0
    if not any(getattr(args, flag, None) for flag in INFO_FLAGS):
        argv, rejected = guarded(lambda: prepare_train(argv, bool(args.multirun), list(args.overrides)))
    sys.argv = [sys.argv[0]] + argv
    install_key_help()
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_train_main)()
    if rejected:
        fail(f"{rejected} job(s) of the sweep were rejected (see their lines above); the others ran")


def install_key_help() -> None:
    """`--help` lists every key with its value and description: conf/config.yaml's hydra.help.template calls the
    commformer_keys resolver (commformer.keyhelp), registered here before Hydra composes. --hydra-help is Hydra's."""
    from commformer.keyhelp import register_key_help

    register_key_help()


def evaluate() -> None:
    from commformer.analysis.reevaluate import evaluate_main

    evaluate_main(sys.argv[1:])


def report() -> None:
    from commformer.analysis.report import report_main

    report_main(sys.argv[1:])


def benchmark() -> None:
    from commformer.analysis.benchmark import main

    main(sys.argv[1:])
