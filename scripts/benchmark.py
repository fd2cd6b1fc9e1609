#!/usr/bin/env python
"""Throughput tables (env-only and end-to-end training): `python scripts/benchmark.py --help`."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commformer.analysis.benchmark import main  # noqa: E402

if __name__ == "__main__":
    main(sys.argv[1:])
