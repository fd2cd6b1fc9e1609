#!/usr/bin/env python
"""How often a GA-Comm or MAGIC checkpoint's Gumbel draw would keep each pair: `python scripts/talk_probability.py
CHECKPOINT_OR_RUN_DIR [...] [--episodes 50] [--seed S]` (`--help` for all options)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commformer.analysis.talk_probability import talk_main  # noqa: E402

if __name__ == "__main__":
    talk_main(sys.argv[1:])
