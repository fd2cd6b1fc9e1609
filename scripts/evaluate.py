#!/usr/bin/env python
"""Re-evaluate checkpoints: `python scripts/evaluate.py CHECKPOINT_OR_RUN_DIR [...] [--episodes N] [--seed S]
[--device cpu] [--graph auto|deterministic|sample|full] [--out FILE.json|.csv]` (`--help` for all options)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commformer.analysis.reevaluate import evaluate_main  # noqa: E402

if __name__ == "__main__":
    evaluate_main(sys.argv[1:])
