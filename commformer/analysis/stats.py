"""Summary statistics for results tables: interquartile mean and percentile bootstrap confidence intervals.

The field's protocol (REFERENCE.md 7; Agarwal et al. 2021, "Deep RL at the Edge of the Statistical Precipice", and
marl-eval) reports the interquartile mean (IQM) of the per-run scores with a 95% stratified percentile bootstrap
interval over runs. Pure numpy; every random draw comes from a numpy Generator seeded by the caller.

IQM boundary convention: sort the n values and drop floor(n / 4) from each end, then average what is left (the
convention of scipy.stats.trim_mean(x, 0.25), which rliable and marl-eval use). For n divisible by 4 that is exactly
the middle half ([1..8] -> mean(3, 4, 5, 6) = 4.5); otherwise slightly more than half is kept (n = 5 keeps the middle
3, n < 4 keeps everything). No fractional weights.
"""
from __future__ import annotations

from typing import Callable, Sequence, Union

import numpy as np

ArrayLike = Union[np.ndarray, Sequence[float]]
# A statistic over the last axis: [..., n] -> [...]
Statistic = Callable[[np.ndarray], np.ndarray]


def _as_values(x: ArrayLike, name: str = "x") -> np.ndarray:
    a = np.asarray(x, dtype=np.float64)
    if a.ndim == 0 or a.shape[-1] == 0:
        raise ValueError(f"{name} has shape {a.shape}; need at least one value along the last axis")
    return a


def iqm(x: ArrayLike) -> np.ndarray | float:
    """Interquartile mean over the last axis: x [..., n] -> [...] (a float for 1-D input).

    Drops floor(n/4) values from each end of the sorted values (module docstring), NaN-free input expected."""
    a = _as_values(x)
    n = a.shape[-1]
    cut = n // 4
    kept = np.sort(a, axis=-1)[..., cut:n - cut]
    out = kept.mean(axis=-1)
    return float(out) if out.ndim == 0 else out


def mean(x: ArrayLike) -> np.ndarray | float:
    """Plain mean over the last axis (same calling convention as iqm, for bootstrap_ci)."""
    out = _as_values(x).mean(axis=-1)
    return float(out) if out.ndim == 0 else out


def _strata(x: ArrayLike | Sequence[ArrayLike]) -> list[np.ndarray]:
    """A flat sequence or 1-D array is one stratum; a list (or tuple) of 1-D sequences is one stratum each (for
    runs of several tasks: one stratum per task; their lengths may differ)."""
    if isinstance(x, np.ndarray) or (len(x) > 0 and np.isscalar(x[0])):
        a = np.asarray(x, dtype=np.float64)
        if a.ndim != 1:
            raise ValueError(f"x has shape {a.shape}; allowed: a 1-D array or a list of 1-D arrays (one per stratum)")
        return [_as_values(a)]
    if len(x) == 0:
        raise ValueError("x is empty; need at least one stratum with one value")
    out = []
    for k, s in enumerate(x):
        a = _as_values(s, f"x[{k}]")
        if a.ndim != 1:
            raise ValueError(f"x[{k}] has shape {a.shape}; each stratum must be 1-D")
        out.append(a)
    return out


def bootstrap_ci(x: ArrayLike | Sequence[ArrayLike], stat: Statistic = iqm, n_boot: int = 2000,
                 confidence: float = 0.95, seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval (low, high) of stat(all values), stratified over runs.

    x: [n] values (one stratum) or a list of 1-D strata (e.g. one per task, each holding that task's runs).
    Each replicate resamples, with replacement, n_s values within every stratum s (so every stratum keeps its size
    and tasks are never traded for each other, as in rliable's stratified bootstrap), concatenates them and applies
    stat over the last axis. stat: [..., n] -> [...] (iqm or mean here). The generator is
    np.random.default_rng(seed): same seed, same interval. With one value per stratum, or constant strata, the
    interval collapses onto the point estimate."""
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot}; must be >= 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}; must be in (0, 1)")
    strata = _strata(x)
    rng = np.random.default_rng(seed)
    draws = [s[rng.integers(0, s.size, size=(n_boot, s.size))] for s in strata]  # each [n_boot, n_s]
    replicates = np.asarray(stat(np.concatenate(draws, axis=1)), dtype=np.float64)  # [n_boot]
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return float(low), float(high)


def summarize(x: ArrayLike | Sequence[ArrayLike], n_boot: int = 2000, confidence: float = 0.95,
              seed: int = 0) -> dict[str, float | list[float]]:
    """{'n', 'mean', 'mean_ci': [low, high], 'iqm', 'iqm_ci': [low, high]} of the values (strata as bootstrap_ci)."""
    strata = _strata(x)
    flat = np.concatenate(strata)
    return {
        "n": int(flat.size),
        "mean": mean(flat),
        "mean_ci": list(bootstrap_ci(strata, mean, n_boot, confidence, seed)),
        "iqm": iqm(flat),
        "iqm_ci": list(bootstrap_ci(strata, iqm, n_boot, confidence, seed)),
    }
