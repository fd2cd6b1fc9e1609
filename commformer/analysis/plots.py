"""Figures of run reports (matplotlib, the [plot] extra): sample-efficiency curves, performance profiles, and
performance against messages per step. One panel per env, one line (or point) per group."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

import numpy as np

from commformer.analysis import stats
from commformer.analysis.protocol import MESSAGES
from commformer.analysis.tables import BOOT_SEED, CONFIDENCE, N_BOOT
from commformer.errors import MissingExtraError
from envs.registry import family_note

# (report row, grid [G], {metric: values [n_runs, G]}) of one group
Curves = tuple[Mapping[str, Any], np.ndarray, Mapping[str, np.ndarray]]


def require_matplotlib(option: str = "--plot"):
    """The matplotlib module, or an ImportError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError(f"{option} needs matplotlib: pip install -e '.[plot]' (or pip install matplotlib)"
                                ) from None
    return matplotlib


def _pyplot():
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    return plt


def _envs(rows: Sequence[Mapping[str, Any]]) -> list[str]:
    return sorted({r["env"] for r in rows if not r.get("aggregate")})


def _title(env: str, rows: Sequence[Mapping[str, Any]]) -> str:
    notes = sorted({n for r in rows if r["env"] == env and (n := family_note(r["family"]))})
    return "\n".join([env] + notes)


def _save(fig, plt, out: str | Path) -> Path:
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


def _iqm_band(values: np.ndarray, n_boot: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
    """values [n_runs, G] -> (IQM [G], low [G], high [G]) with a percentile bootstrap over runs at each step."""
    centre = np.asarray([stats.iqm(values[:, k]) for k in range(values.shape[1])])
    bands = np.asarray([stats.bootstrap_ci(values[:, k], stats.iqm, n_boot, CONFIDENCE, BOOT_SEED)
                        for k in range(values.shape[1])])
    return centre, bands[:, 0], bands[:, 1]


def plot_curves(curves: Sequence[Curves], out: str | Path, n_boot: int = N_BOOT) -> Path:
    """Sample-efficiency curves: per env, the IQM over runs of the reported metric against env steps on the group's
    common grid, shaded by its 95% bootstrap interval; below it the same for messages per step (when logged)."""
    if not curves:
        raise ValueError("plot_curves: no group has a curve to draw")
    plt = _pyplot()
    rows = [c[0] for c in curves]
    envs = _envs(rows)
    with_messages = any(MESSAGES in c[2] for c in curves)
    fig, axes = plt.subplots(2 if with_messages else 1, len(envs), figsize=(5 * len(envs), 7 if with_messages else 3.6),
                             squeeze=False)
    for col, env in enumerate(envs):
        for row, grid, values in curves:
            if row["env"] != env:
                continue
            for ax, metric in zip(axes[:, col], [row["metric"], MESSAGES]):
                if metric not in values:
                    continue
                centre, low, high = _iqm_band(values[metric], n_boot)
                (line,) = ax.plot(grid, centre, label=row["label"])
                ax.fill_between(grid, low, high, alpha=0.2, color=line.get_color())
        axes[0, col].set_title(_title(env, rows), fontsize=10)
        axes[0, col].set_ylabel(f"IQM {', '.join(sorted({r['metric'] for r in rows if r['env'] == env}))}")
        if with_messages:
            axes[1, col].set_ylabel("IQM messages per step")
        for ax in axes[:, col]:
            ax.set_xlabel("env steps")
            ax.locator_params(axis="x", nbins=5)
            ax.legend(fontsize=8)
    return _save(fig, plt, out)


def plot_profiles(rows: Sequence[Mapping[str, Any]], out: str | Path, points: int = 101) -> Path:
    """Performance profiles: per env, the fraction of a group's runs whose final value exceeds tau, for tau from the
    lowest to the highest final value in that env."""
    plt = _pyplot()
    envs = _envs(rows)
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        members = [r for r in rows if r["env"] == env and not r.get("aggregate")]
        every = np.concatenate([np.asarray(r["values"], dtype=np.float64) for r in members])
        margin = 0.05 * (every.max() - every.min()) or 0.5  # so every line starts at 1 and ends at 0
        taus = np.linspace(every.min() - margin, every.max() + margin, points)
        for r in members:
            ax.step(taus, stats.performance_profile(r["values"], taus), where="post", label=r["label"])
        ax.set_title(_title(env, rows), fontsize=10)
        ax.set_xlabel(f"tau ({', '.join(sorted({r['metric'] for r in members}))})")
        ax.set_ylabel("fraction of runs with score > tau")
        ax.set_ylim(-0.02, 1.02)
        ax.locator_params(axis="x", nbins=5)
        ax.legend(fontsize=8)
    return _save(fig, plt, out)


def plot_messages(rows: Sequence[Mapping[str, Any]], out: str | Path) -> Path:
    """Performance against communication: per env, one point per group at (IQM messages per step, IQM of the
    metric), each with its 95% bootstrap intervals as error bars (groups without logged messages are left out)."""
    plt = _pyplot()
    envs = _envs(rows)
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for r in rows:
            if r["env"] != env or r.get("messages") is None:
                continue
            x, (xl, xh), y, (yl, yh) = r["messages"], r["messages_ci"], r["iqm"], r["iqm_ci"]
            ax.errorbar([x], [y], xerr=[[x - xl], [xh - x]], yerr=[[y - yl], [yh - y]], fmt="o", capsize=3,
                        label=r["label"])
        ax.set_title(_title(env, rows), fontsize=10)
        ax.set_xlabel("IQM messages per step (evaluation)")
        ax.set_ylabel(f"IQM {', '.join(sorted({r['metric'] for r in rows if r['env'] == env}))}")
        ax.legend(fontsize=8)
    return _save(fig, plt, out)
