"""Console entry points. Each finds conf/ beside the package (an editable install or a source checkout); bad
input ends with one line and exit status 2 (commformer.errors)."""
from __future__ import annotations

import sys
from pathlib import Path

from commformer.errors import fail, guarded

CONF_DIR = Path(__file__).resolve().parent.parent / "conf"


def _train_main(cfg) -> float | None:
    from hydra.core.hydra_config import HydraConfig

    from commformer.config import load_config
    from commformer.training.trainer import Trainer

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
    from commformer.analysis.reevaluate import evaluate_main

    evaluate_main(sys.argv[1:])


def report() -> None:
    from commformer.analysis.report import report_main

    report_main(sys.argv[1:])


def benchmark() -> None:
    from commformer.analysis.benchmark import main

    main(sys.argv[1:])
