"""Console entry points. Each finds conf/ beside the package (an editable install or a source checkout).

Bad input (an override, a config file, a checkpoint, a missing external dependency) exits with status 2 and one
line on stderr naming the key, the value and what is allowed; no traceback.
"""
from __future__ import annotations

import sys
from pathlib import Path
from typing import Callable, NoReturn

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def fail(message: str) -> NoReturn:
    """One error line on stderr, exit status 2."""
    sys.stderr.write(f"error: {message}\n")
    sys.stderr.flush()
    sys.exit(2)


def user_errors() -> tuple[type[BaseException], ...]:
    """Exceptions that mean bad input rather than a bug."""
    from commformer.checkpoint import CheckpointError
    from commformer.config import ConfigError
    from envs.core import EnvUnavailableError

    return (ConfigError, CheckpointError, EnvUnavailableError, ValueError, TypeError, ImportError,
            FileNotFoundError)


def guarded(fn: Callable[[], object]) -> object:
    """Run fn, turning user errors into one line and exit status 2."""
    try:
        return fn()
    except user_errors() as e:
        text = str(e).strip().splitlines()
        fail(text[0] if text else type(e).__name__)


def _train_main(cfg) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from commformer.config import load_config
    from commformer.trainer import Trainer

    config = guarded(lambda: load_config(cfg))
    run_dir = config.run_dir or HydraConfig.get().runtime.output_dir
    trainer = guarded(lambda: Trainer(config, run_dir))
    result = trainer.train()
    # sweepers (e.g. Optuna) read the returned number: the final success / win rate, else the return
    for key in ("eval/success", "eval/won", "eval/return"):
        if key in result:
            return float(result[key])
    return None


def train() -> None:
    """`commformer-train [overrides...]` == `python scripts/train.py [overrides...]`."""
    import hydra

    from commformer.config import register_configs

    if not CONF_DIR.is_dir():
        fail(f"config folder {CONF_DIR} not found (install the project from a source checkout: pip install -e .)")
    register_configs()
    hydra.main(config_path=str(CONF_DIR), config_name="config", version_base="1.3")(_train_main)()


def evaluate() -> None:
    from commformer.scripts_impl import evaluate_main

    evaluate_main(sys.argv[1:])


def report() -> None:
    from commformer.scripts_impl import report_main

    report_main(sys.argv[1:])


def benchmark() -> None:
    from commformer.benchmark import main

    main(sys.argv[1:])
