#!/usr/bin/env python
"""Train CommFormer: `python scripts/train.py [env=pp] [algo=commformer] [key=value ...]` (Hydra overrides;
`--help` lists the config groups, `-m` sweeps)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commformer.cli import train  # noqa: E402

if __name__ == "__main__":
    train()
