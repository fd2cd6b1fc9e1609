#!/usr/bin/env python
"""Results table over run folders: `python scripts/report.py RUN_DIR_OR_PARENT [...] [--metric eval/success]
[--out report.md] [--plot curves.png]` (`--help` for all options)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commformer.analysis.report import report_main  # noqa: E402

if __name__ == "__main__":
    report_main(sys.argv[1:])
