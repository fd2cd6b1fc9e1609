#!/usr/bin/env python
"""CommFormer's claims C1-C4 decided from the studies: `python scripts/claims.py [--studies runs/studies]
[--out docs/results/claims.md]` (`--help`)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commformer.analysis.claims import claims_main  # noqa: E402

if __name__ == "__main__":
    claims_main(sys.argv[1:])
