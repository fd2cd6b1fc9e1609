#!/usr/bin/env python
"""CommFormer's claims C1-C4 decided from the studies: `python scripts/claims.py [--studies runs/studies]
[--out docs/results/claims.md]` (`--help`). A ratio claim (C1, C3's IQM side, C4) is decided on the 95% bootstrap
interval of IQM(X) / IQM(Y) with both groups resampled; the rule is in commformer/analysis/claims.py."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commformer.analysis.claims import claims_main  # noqa: E402

if __name__ == "__main__":
    claims_main(sys.argv[1:])
