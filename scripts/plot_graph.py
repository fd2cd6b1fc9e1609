#!/usr/bin/env python
"""Pictures of a run's communication graph: `python scripts/plot_graph.py RUN_DIR [--out DIR]` writes
alpha_heatmaps.png and graph.png (default into RUN_DIR/plots; `--help` for all options)."""
import sys
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))

from commformer.analysis.graph_plots import plot_graph_main  # noqa: E402

if __name__ == "__main__":
    plot_graph_main(sys.argv[1:])
