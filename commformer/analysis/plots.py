"""Figures of run reports (matplotlib, the [plot] extra)."""
from __future__ import annotations

from pathlib import Path
from typing import Any, Mapping, Sequence

from commformer.analysis import stats
from commformer.analysis.runs import Run, curve
from commformer.analysis.tables import BOOT_SEED, CONFIDENCE, N_BOOT
from commformer.errors import MissingExtraError
from envs.registry import family_note


def require_matplotlib():
    """The matplotlib module, or an ImportError naming the extra to install."""
    try:
        import matplotlib
    except ImportError:
        raise MissingExtraError("--plot needs matplotlib: pip install -e '.[plot]' (or pip install matplotlib)") from None
    return matplotlib


def plot_curves(groups: Mapping[tuple[str, str], Sequence[Run]], rows: Sequence[Mapping[str, Any]], out: str | Path,
                n_boot: int = N_BOOT) -> Path:
    """Learning curves: one panel per env, one line per algo: the IQM over runs of the reported metric at every
    env-step count where at least one run evaluated, shaded by its 95% bootstrap interval."""
    matplotlib = require_matplotlib()
    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    metric_of = {(r["env"], r["algo"]): r["metric"] for r in rows}
    envs = sorted({env for env, _ in metric_of})
    fig, axes = plt.subplots(1, len(envs), figsize=(5 * len(envs), 3.6), squeeze=False)
    for ax, env in zip(axes[0], envs):
        for (g_env, algo), runs in groups.items():
            if g_env != env or (g_env, algo) not in metric_of:
                continue
            metric = metric_of[(g_env, algo)]
            by_step: dict[int, list[float]] = {}
            for run in runs:
                for step, value in curve(run.rows, metric):
                    by_step.setdefault(step, []).append(value)
            steps = sorted(by_step)
            centre = [stats.iqm(by_step[s]) for s in steps]
            bands = [stats.bootstrap_ci(by_step[s], stats.iqm, n_boot, CONFIDENCE, BOOT_SEED) for s in steps]
            (line,) = ax.plot(steps, centre, label=algo)
            ax.fill_between(steps, [b[0] for b in bands], [b[1] for b in bands], alpha=0.2, color=line.get_color())
        notes = sorted({n for r in rows if r["env"] == env and (n := family_note(r["family"]))})
        ax.set_title("\n".join([env] + notes), fontsize=10)
        ax.set_xlabel("env steps")
        ax.set_ylabel(f"IQM {', '.join(sorted({m for (e, _), m in metric_of.items() if e == env}))}")
        ax.legend()
    fig.tight_layout()
    path = Path(out)
    path.parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(path, dpi=120)
    plt.close(fig)
    return path


