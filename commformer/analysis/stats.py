"""Summary statistics for results tables: interquartile mean and percentile bootstrap confidence intervals, the
probability of improvement between two sets of runs, performance profiles, and binomial (Wilson) intervals for
success rates.

The field's protocol (docs/studies.md, "Evaluation protocol"; Agarwal et al. 2021, "Deep RL at the Edge of the
Statistical Precipice", and marl-eval) reports the interquartile mean (IQM) of the per-run scores with a 95%
stratified percentile bootstrap interval over runs. Pure numpy; every random draw comes from a numpy Generator seeded
by the caller.

IQM boundary convention: sort the n values and drop floor(n / 4) from each end, then average what is left (the
convention of scipy.stats.trim_mean(x, 0.25), which rliable and marl-eval use). For n divisible by 4 that is exactly
the middle half ([1..8] -> mean(3, 4, 5, 6) = 4.5); otherwise slightly more than half is kept (n = 5 keeps the middle
3, n < 4 keeps everything). No fractional weights.
"""
from __future__ import annotations

from statistics import NormalDist
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


def probability_of_improvement(x: ArrayLike, y: ArrayLike) -> np.ndarray | float:
    """P(X > Y) over the last axis: the fraction of (x_i, y_j) pairs with x_i > y_j, a tie counting 1/2 (the
    Mann-Whitney U statistic over n*m, as in Agarwal et al. 2021 for one task). x [..., n], y [..., m] -> [...]
    (a float for 1-D input). 0.5 when X and Y are alike; 1 when every x beats every y."""
    a, b = _as_values(x, "x")[..., :, None], _as_values(y, "y")[..., None, :]
    out = (a > b).mean(axis=(-2, -1)) + 0.5 * (a == b).mean(axis=(-2, -1))
    return float(out) if np.ndim(out) == 0 else out


def probability_of_improvement_ci(x: ArrayLike, y: ArrayLike, n_boot: int = 2000, confidence: float = 0.95,
                                  seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of probability_of_improvement(x, y): each replicate resamples the runs of X and
    of Y with replacement, each set keeping its size (two strata); generator np.random.default_rng(seed)."""
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot}; must be >= 1")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}; must be in (0, 1)")
    a, b = _strata(x)[0], _strata(y)[0]
    rng = np.random.default_rng(seed)
    xa = a[rng.integers(0, a.size, size=(n_boot, a.size))]  # [n_boot, n]
    yb = b[rng.integers(0, b.size, size=(n_boot, b.size))]  # [n_boot, m]
    replicates = probability_of_improvement(xa, yb)  # [n_boot]
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(replicates, [tail, 1.0 - tail])
    return float(low), float(high)


def iqm_ratio_ci(x: ArrayLike, y: ArrayLike, n_boot: int = 2000, confidence: float = 0.95,
                 seed: int = 0) -> tuple[float, float]:
    """Percentile bootstrap interval of IQM(X) / IQM(Y), the runs of X and of Y resampled separately (each keeping
    its size), so the comparator's own spread counts; a replicate with IQM(Y) = 0 counts as +inf (or nan when
    IQM(X) is 0 too, and is dropped). Generator np.random.default_rng(seed)."""
    if n_boot < 1:
        raise ValueError(f"n_boot={n_boot}; must be >= 1")
    a, b = _strata(x)[0], _strata(y)[0]
    rng = np.random.default_rng(seed)
    num = np.atleast_1d(iqm(a[rng.integers(0, a.size, size=(n_boot, a.size))]))
    den = np.atleast_1d(iqm(b[rng.integers(0, b.size, size=(n_boot, b.size))]))
    with np.errstate(divide="ignore", invalid="ignore"):
        ratio = np.where(den > 0, num / np.where(den > 0, den, 1.0), np.where(num > 0, np.inf, np.nan))
    ratio = ratio[~np.isnan(ratio)]
    if ratio.size == 0:
        return float("nan"), float("nan")
    tail = (1.0 - confidence) / 2.0
    low, high = np.quantile(ratio, [tail, 1.0 - tail], method="nearest")  # an infinite replicate stays inf
    return float(low), float(high)


def performance_profile(x: ArrayLike, taus: ArrayLike) -> np.ndarray:
    """The fraction of runs whose score exceeds each threshold: x [n], taus [K] -> [K] with out[k] = mean(x > tau_k)
    (the run-score distribution of Agarwal et al. 2021)."""
    a = _strata(x)[0]
    return (a[None, :] > np.asarray(taus, dtype=np.float64)[:, None]).mean(axis=1)


def wilson_interval(successes: int, n: int, confidence: float = 0.95) -> tuple[float, float]:
    """Wilson score interval (low, high) of a binomial rate from `successes` of `n` trials: centre
    (p + z^2/2n) / (1 + z^2/n), half-width z sqrt(p(1-p)/n + z^2/4n^2) / (1 + z^2/n), z the normal quantile of
    (1 + confidence) / 2. Unlike the normal (Wald) interval it stays inside [0, 1] and is not empty at 0 or n
    successes."""
    if n < 1:
        raise ValueError(f"n={n}; need at least one trial")
    if not 0 <= successes <= n:
        raise ValueError(f"successes={successes}; must be in [0, n={n}]")
    if not 0.0 < confidence < 1.0:
        raise ValueError(f"confidence={confidence}; must be in (0, 1)")
    z = NormalDist().inv_cdf(0.5 + confidence / 2.0)
    p = successes / n
    denom = 1.0 + z * z / n
    centre = (p + z * z / (2 * n)) / denom
    half = z * np.sqrt(p * (1.0 - p) / n + z * z / (4 * n * n)) / denom
    low = 0.0 if successes == 0 else float(centre - half)  # exact ends (no rounding residue) at 0 and n
    high = 1.0 if successes == n else float(centre + half)
    return low, high
