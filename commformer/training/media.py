"""Images of the graph for the dashboards: the alpha (or fixed graph) heatmap and the per-agent gate-open rates.

matplotlib (the [plot] extra) draws labelled figures; without it the same pictures come as plain RGB arrays, so
logger.media never needs an extra. Both are accepted by Logger.log(media=...)."""
from __future__ import annotations

from typing import Any

import numpy as np

CELL_PX = 24  # array fallback: pixels per heatmap cell / per gate bar
BAR_PX = 96  # array fallback: height of a full (rate 1) gate bar


def _matplotlib_pyplot():
    try:
        import matplotlib
    except ImportError:
        return None
    matplotlib.use("Agg", force=False)
    import matplotlib.pyplot as plt

    return plt


def _ramp(x: np.ndarray) -> np.ndarray:
    """[...] in [0, 1] -> [..., 3] uint8 on a dark-blue to yellow ramp (a viridis-like map without matplotlib)."""
    lo, hi = np.array([68, 1, 84], dtype=np.float64), np.array([253, 231, 37], dtype=np.float64)
    return (lo + (hi - lo) * x[..., None]).round().astype(np.uint8)


def _heatmap_array(values: np.ndarray) -> np.ndarray:
    """values [N,N] (NaN allowed) -> RGB [N*CELL_PX, N*CELL_PX, 3] uint8, min-max scaled over the finite values
    (constant values: mid colour)."""
    finite = values[np.isfinite(values)]
    low, span = (float(finite.min()), float(finite.max() - finite.min())) if finite.size else (0.0, 0.0)
    scaled = (values - low) / span if span > 0 else np.full(values.shape, 0.5)
    rgb = _ramp(np.nan_to_num(scaled, nan=0.0))
    rgb[~np.isfinite(values)] = (200, 200, 200)  # NaN (the diagonal): grey
    return np.kron(rgb, np.ones((CELL_PX, CELL_PX, 1), dtype=np.uint8))


def _bars_array(rates: np.ndarray) -> np.ndarray:
    """rates [N] in [0, 1] -> RGB [BAR_PX, N*CELL_PX, 3] uint8: one bar per agent on white, 2 px gaps."""
    img = np.full((BAR_PX, len(rates) * CELL_PX, 3), 255, dtype=np.uint8)
    for i, r in enumerate(np.clip(np.nan_to_num(rates, nan=0.0), 0.0, 1.0)):
        h = int(round(float(r) * BAR_PX))
        if h:
            img[BAR_PX - h:, i * CELL_PX + 2:(i + 1) * CELL_PX - 2] = (31, 119, 180)
    return img


def graph_media(scores: Any, chosen: Any | None = None, gate_rates: Any | None = None,
                title: str = "alpha") -> dict[str, Any]:
    """{"media/alpha": heatmap, "media/gate_rate": bars (only with gate_rates)}, each a matplotlib Figure or, without
    matplotlib, an RGB uint8 array.

    scores [N,N] (alpha, or a fixed graph as 0/1; row = receiver, column = sender) | chosen [N,N] bool: the acting
    graph, marked with dots | gate_rates [N] in [0, 1]: the fraction of steps each agent's gate was open."""
    scores = np.array(_numpy(scores), dtype=np.float64)
    np.fill_diagonal(scores, np.nan)  # receivers never choose themselves: no colour for the self-loop
    chosen_np = None if chosen is None else np.asarray(_numpy(chosen), dtype=bool)
    rates = None if gate_rates is None else np.asarray(_numpy(gate_rates), dtype=np.float64)
    plt = _matplotlib_pyplot()
    out: dict[str, Any] = {}
    if plt is None:
        out["media/alpha"] = _heatmap_array(scores)
        if rates is not None:
            out["media/gate_rate"] = _bars_array(rates)
        return out
    n = scores.shape[0]
    fig, ax = plt.subplots(figsize=(1.0 + 0.45 * n, 0.8 + 0.4 * n), dpi=80)
    im = ax.imshow(scores, cmap="viridis")
    if chosen_np is not None:
        rows, cols = np.nonzero(chosen_np)
        ax.scatter(cols, rows, s=14, c="white", edgecolors="black", linewidths=0.5)
    ax.set_xlabel("sender j")
    ax.set_ylabel("receiver i")
    ax.set_title(title + (" (dots: acting graph)" if chosen_np is not None else ""), fontsize=8)
    ax.set_xticks(range(n))
    ax.set_yticks(range(n))
    fig.colorbar(im, ax=ax, fraction=0.046, pad=0.04)
    fig.tight_layout()
    out["media/alpha"] = fig
    if rates is not None:
        fig, ax = plt.subplots(figsize=(1.0 + 0.35 * len(rates), 2.2), dpi=80)
        ax.bar(range(len(rates)), rates, color="tab:blue")
        ax.set_ylim(0.0, 1.0)
        ax.set_xticks(range(len(rates)))
        ax.set_xlabel("agent")
        ax.set_ylabel("gate open rate")
        fig.tight_layout()
        out["media/gate_rate"] = fig
    return out


def _numpy(x: Any) -> Any:
    """A torch tensor (any device) as numpy; anything else unchanged."""
    if hasattr(x, "detach"):
        return x.detach().float().cpu().numpy() if x.dtype.is_floating_point else x.detach().cpu().numpy()
    return x
