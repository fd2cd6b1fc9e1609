"""Progress of a run on the console: a tqdm bar with ETA and live return / success where a terminal can redraw it,
else a percentage and an ETA on the console lines."""
from __future__ import annotations

import contextlib
import math
import sys
from typing import Any, Mapping

# the row keys shown live on the bar (the last part of each key)
BAR_KEYS = ("train/return", "eval/success", "eval/won")


def fmt(v: Any) -> str:
    """A metric value for the console: floats with 4 significant digits."""
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def duration(seconds: float) -> str:
    """'1h02m' from an hour on, else '3m07s'."""
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


def progress_text(done: int, todo: int, elapsed: float) -> str:
    """'<percent>% eta <duration>' after `done` of `todo` env steps in `elapsed` seconds ('?' before the first)."""
    eta = elapsed * (todo - done) / done if done > 0 else float("nan")
    pct = 100.0 * done / todo if todo > 0 else 100.0
    return f"{pct:.0f}% eta {duration(eta) if math.isfinite(eta) else '?'}"


def open_bar(total: int, desc: str, redirect: contextlib.ExitStack):
    """A tqdm bar of `total` env steps on stderr; console log handlers write above it until `redirect` closes."""
    from tqdm import tqdm
    from tqdm.contrib.logging import logging_redirect_tqdm

    bar = tqdm(total=total, unit="step", unit_scale=True, dynamic_ncols=True, desc=desc, file=sys.stderr)
    redirect.enter_context(logging_redirect_tqdm())
    return bar


def update_bar(bar, done: int, row: Mapping[str, Any]) -> None:
    """Move the bar to `done` env steps and show the row's BAR_KEYS (NaN left out)."""
    bar.n = done
    live = {k.split("/")[-1]: fmt(row[k]) for k in BAR_KEYS
            if k in row and not (isinstance(row[k], float) and math.isnan(row[k]))}
    bar.set_postfix(live, refresh=True)


def write_beside_bar(msg: str) -> None:
    """A line printed above a tqdm bar (where no logging handler would show it)."""
    from tqdm import tqdm

    tqdm.write(msg, file=sys.stderr)
