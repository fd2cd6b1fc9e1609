"""Pictures of a run's communication graph (`scripts/plot_graph.py RUN_DIR [--out DIR]`), from its
graph_history.jsonl (commformer/training/graph_history.py):

- alpha_heatmaps.png: one panel per evaluation (at most MAX_PANELS, evenly spaced, first and last kept): alpha
  [N,N] (row = receiver, column = sender; the diagonal is not a choice and is blank), the senders the evaluation
  used boxed, the smallest row margin in the title. Graphs without alpha (full / none / random) show the acting
  graph instead.
- graph.png: the final acting graph as a directed network, agents on a circle, arrows sender -> receiver, each
  agent coloured by its gate-open rate in the final evaluation (grey without a gate).

Files are the product of this command; diagnostics go through logging. Needs matplotlib (the [plot] extra).
"""
from __future__ import annotations

import argparse
import logging
import math
from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from commformer.analysis.plots import require_matplotlib
from commformer.cli_args import OneLineParser
from commformer.errors import UsageError, guarded
from commformer.log_setup import script_logging
from commformer.training.graph_history import read_history

log = logging.getLogger("commformer")

MAX_PANELS = 12
HEATMAP_FILE = "alpha_heatmaps.png"
NETWORK_FILE = "graph.png"


def pick_panels(n: int, max_panels: int = MAX_PANELS) -> list[int]:
    """Indices of the records to draw: all of them when n <= max_panels, else max_panels evenly spaced with the
    first and the last among them (10 of 30 -> 0, 3, 6, ..., 29)."""
    if n <= max_panels:
        return list(range(n))
    return sorted({round(i * (n - 1) / (max_panels - 1)) for i in range(max_panels)})


def _pyplot():
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _matrix(record: Mapping[str, Any]) -> tuple[np.ndarray, bool]:
    """(the panel's values [N,N] with a NaN diagonal, whether they are alpha). Without alpha: the graph's mean over
    the evaluation's steps where recorded (a graph drawn per step), else its 0/1 graph."""
    has_alpha = record.get("alpha") is not None
    plain = record["graph"] if record.get("graph_mean") is None else record["graph_mean"]
    values = np.array(record["alpha"] if has_alpha else plain, dtype=float)
    np.fill_diagonal(values, np.nan)
    return values, has_alpha


def _min_margin(record: Mapping[str, Any]) -> float | None:
    margins = [m for m in (record.get("margins") or []) if m is not None]
    return min(margins) if margins else None


def plot_alpha_heatmaps(records: Sequence[Mapping[str, Any]], out: str | Path,
                        max_panels: int = MAX_PANELS) -> Path:
    """A grid of heatmaps of alpha over training (module docstring); returns the PNG's path."""
    plt = _pyplot()
    picked = [records[i] for i in pick_panels(len(records), max_panels)]
    mats = [_matrix(r) for r in picked]
    n = mats[0][0].shape[0]
    cols = min(len(picked), 4)
    rows = math.ceil(len(picked) / cols)
    size = 1.1 + 0.32 * n
    # 0.45 inch more per row: each panel's two-line title clears the sender label of the panel above it
    fig, axes = plt.subplots(rows, cols, figsize=(size * cols + 1.2, (size + 0.45) * rows + 0.6), squeeze=False)
    fig.subplots_adjust(hspace=0.55)
    finite = np.concatenate([m[np.isfinite(m)] for m, _ in mats])
    lo, hi = (float(finite.min()), float(finite.max())) if finite.size else (0.0, 1.0)
    if hi - lo < 1e-6:
        lo, hi = lo - 0.5, hi + 0.5
    cmap = plt.get_cmap("viridis").with_extremes(bad="white")
    image = None
    for p, (ax, rec, (values, has_alpha)) in enumerate(zip(axes.flat, picked, mats)):
        image = ax.imshow(values, cmap=cmap, vmin=lo, vmax=hi)
        chosen = np.array(rec["graph"], dtype=bool)
        for i, j in zip(*np.nonzero(chosen)):
            ax.add_patch(plt.Rectangle((j - 0.5, i - 0.5), 1, 1, fill=False, edgecolor="red", linewidth=1.6))
        margin = _min_margin(rec)
        title = f"iter {rec['iteration']} ({rec['env_steps']:,} steps)"
        if margin is not None:
            title += f"\nmin margin {margin:.2f}"
        elif not has_alpha:
            title += f"\n{rec.get('mode', '')} graph (no alpha)"
        if rec.get("graph_choice") == "full":
            title += " [warmup: full]"
        ax.set_title(title, fontsize=8)
        ticks = range(n) if n <= 12 else range(0, n, max(1, n // 6))
        ax.set_xticks(list(ticks))
        ax.set_yticks(list(ticks))
        ax.tick_params(labelsize=7)
        if p + cols >= len(picked):  # the last panel of its column
            ax.set_xlabel("sender j", fontsize=7)
        if p % cols == 0:
            ax.set_ylabel("receiver i", fontsize=7)
    for ax in list(axes.flat)[len(picked):]:
        ax.axis("off")
    label = "alpha" if mats[-1][1] else "graph (0/1)"
    fig.colorbar(image, ax=axes.ravel().tolist(), shrink=0.8, label=label)
    k = picked[-1].get("k")
    fig.suptitle(f"communication graph over training (k={k} senders per receiver; red boxes: the graph used)",
                 fontsize=9)
    return _save(fig, plt, out)


def plot_graph_network(record: Mapping[str, Any], out: str | Path) -> Path:
    """The record's acting graph as a directed network (module docstring); returns the PNG's path."""
    plt = _pyplot()
    graph = np.array(record["graph"], dtype=bool)
    n = graph.shape[0]
    angle = np.pi / 2 - 2 * np.pi * np.arange(n) / n
    xy = np.stack([np.cos(angle), np.sin(angle)], axis=1)
    gate = record.get("gate_open")
    fig, ax = plt.subplots(figsize=(5.2, 5.0))
    node = 0.13 if n <= 10 else max(0.04, 1.3 / n)
    for i, j in zip(*np.nonzero(graph)):  # receiver i listens to sender j: arrow j -> i
        both = graph[j, i]
        ax.annotate("", xy=xy[i], xytext=xy[j], arrowprops=dict(
            arrowstyle="-|>", color="tab:orange", lw=1.8, mutation_scale=16, shrinkA=node * 150, shrinkB=node * 150,
            connectionstyle="arc3,rad=0.15" if both else "arc3,rad=0.0"))
    if gate is not None:
        values = np.array([np.nan if g is None else g for g in gate], dtype=float)
        nodes = ax.scatter(xy[:, 0], xy[:, 1], s=(node * 600) ** 2 / 4, c=values, cmap="Greens", vmin=0, vmax=1,
                           edgecolors="black", zorder=3)
        fig.colorbar(nodes, ax=ax, shrink=0.7, label="gate open (fraction of evaluation steps)")
    else:
        ax.scatter(xy[:, 0], xy[:, 1], s=(node * 600) ** 2 / 4, c="lightgrey", edgecolors="black", zorder=3)
    for i in range(n):
        ax.text(xy[i, 0], xy[i, 1], str(i), ha="center", va="center", fontsize=10 if n <= 10 else 6, zorder=4)
    ax.set_xlim(-1.35, 1.35)
    ax.set_ylim(-1.35, 1.35)
    ax.set_aspect("equal")
    ax.axis("off")
    mps = record.get("messages_per_step")
    extra = "" if mps is None else f", {mps:.3g} messages per step"
    ax.set_title(f"graph at iteration {record['iteration']} ({record['env_steps']:,} env steps)\n"
                 f"arrow: sender -> receiver; k={record.get('k')}{extra}", fontsize=9)
    return _save(fig, plt, out)


def _save(fig: Any, plt: Any, out: str | Path) -> Path:
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=110, bbox_inches="tight")
    plt.close(fig)
    return path


def plot_run(run_dir: str | Path, out_dir: str | Path | None = None) -> list[Path]:
    """Both pictures of a run folder into out_dir (default RUN_DIR/plots); returns their paths."""
    run_dir = Path(run_dir)
    if not run_dir.is_dir():
        raise UsageError(f"RUN_DIR={str(run_dir)!r} is not a folder")
    records = read_history(run_dir)
    out = Path(out_dir) if out_dir is not None else run_dir / "plots"
    paths = [plot_alpha_heatmaps(records, out / HEATMAP_FILE), plot_graph_network(records[-1], out / NETWORK_FILE)]
    if any(r.get("alpha_grad") for r in records):
        paths.append(plot_alpha_grads(records, out / ALPHA_GRADS_FILE))
    return paths


ALPHA_GRADS_FILE = "alpha_grads.png"


def plot_alpha_grads(records: Sequence[Mapping[str, Any]], out: str | Path, sender: int = 0) -> Path:
    """One panel per loss term of the records' alpha_grad (logger.alpha_grads): over training, the accumulated step
    direction (minus the gradient, summed over the evaluations so far) of the edges toward `sender`, averaged over the
    other receivers, against the mean of every other edge of those receivers (up: the term pushes toward hearing)."""
    plt = _pyplot()
    recs = [r for r in records if r.get("alpha_grad")]
    terms = list(recs[0]["alpha_grad"])
    n = len(recs[0]["alpha_grad"][terms[0]])
    receivers = [i for i in range(n) if i != sender]
    x = [r["env_steps"] for r in recs]
    fig, axes = plt.subplots(1, len(terms), figsize=(4.0 * len(terms), 3.2), squeeze=False)
    for ax, term in zip(axes[0], terms):
        toward = np.cumsum([-np.mean([r["alpha_grad"][term][i][sender] for i in receivers]) for r in recs])
        others = np.cumsum([-np.mean([r["alpha_grad"][term][i][j] for i in receivers for j in range(n)
                                      if j not in (i, sender)]) for r in recs])
        ax.plot(x, toward, color="tab:red", label=f"toward sender {sender}")
        ax.plot(x, others, color="tab:gray", linestyle="--", label="toward the others")
        ax.axhline(0.0, color="black", linewidth=0.5)
        ax.set_title(f"{term}: -d/d alpha, summed")
        ax.set_xlabel("env steps")
    axes[0][0].set_ylabel("accumulated step direction")
    axes[0][-1].legend(fontsize=7, loc="best")
    return _save(fig, plt, out)


def plot_graph_parser() -> argparse.ArgumentParser:
    p = OneLineParser(
        prog="plot_graph.py",
        description="Draw a run's communication graph from its graph_history.jsonl: alpha heatmaps over training "
                    f"({HEATMAP_FILE}) and the final graph as a directed network ({NETWORK_FILE}). Needs matplotlib "
                    "(pip install -e '.[plot]').")
    p.add_argument("run_dir", metavar="RUN_DIR", help="a run folder (it holds graph_history.jsonl)")
    p.add_argument("--out", default=None, metavar="DIR", help="output folder (default: RUN_DIR/plots)")
    return p


def _plot(args: argparse.Namespace) -> list[Path]:
    require_matplotlib()
    paths = plot_run(args.run_dir, args.out)
    for path in paths:
        log.info("wrote %s", path)
    return paths


def plot_graph_main(argv: Sequence[str] | None = None) -> list[Path]:
    """`scripts/plot_graph.py RUN_DIR [--out DIR]`; returns the files written."""
    args = guarded(lambda: plot_graph_parser().parse_args(argv))
    script_logging()
    return guarded(lambda: _plot(args))  # type: ignore[return-value]
