#!/usr/bin/env python
"""Which receivers hear a sender at the end of each run: `python scripts/listeners.py RUN_DIRS... [--sender 0]
[--receivers 1,2,3,4]` (`--help` for all options)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commformer.analysis.listeners import listeners_main  # noqa: E402

if __name__ == "__main__":
    listeners_main(sys.argv[1:])
