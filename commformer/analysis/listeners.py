"""Who hears a given sender at the end of each run (`scripts/listeners.py`): for every run folder, the final
evaluation's metric and the receivers whose evaluation graph includes the sender, counted only where the choice is
strict (alpha's row margin > 0, so no tie of alpha decides it). On the scout task (conf/env/pcp_scout.yaml) the
sender is the scout, agent 0, and the receivers the four blind agents. With `--shift S` every receiver i has its
own source, agent (i + S) mod N (the signal game, conf/env/signal*.yaml): the table counts the receivers that hear
their source, strictly."""
from __future__ import annotations

import argparse
import logging
import math
import sys
from pathlib import Path
from typing import Any, Mapping, Sequence

from commformer.analysis.runs import find_run_dirs, read_run
from commformer.analysis.tables import md_table
from commformer.cli_args import OneLineParser, int_in
from commformer.errors import UsageError, guarded
from commformer.log_setup import script_logging
from commformer.training.graph_history import read_history

log = logging.getLogger("commformer")


def strict_listeners(record: Mapping[str, Any], sender: int, receivers: Sequence[int]) -> list[int]:
    """The receivers whose graph row in a graph-history record selects `sender`, where that choice is strict: for a
    learned graph alpha[i, sender] is above every unselected alpha of the row (margin > 0); a fixed graph's rows are
    taken as they are."""
    graph, alpha = record["graph"], record.get("alpha")
    out = []
    for i in receivers:
        if not graph[i][sender]:
            continue
        if alpha is not None:
            unselected = [alpha[i][j] for j in range(len(graph[i])) if j != i and not graph[i][j]]
            if unselected and not alpha[i][sender] > max(unselected):
                continue
        out.append(i)
    return out


def final_graphs(roots: Sequence[str | Path], metric: str) -> list[tuple[Path, Any, float, Mapping[str, Any]]]:
    """(run folder, its run, final `metric`, last graph-history record) of every run under `roots`; UsageError when
    there is none."""
    out = []
    for path in find_run_dirs(roots):
        run = read_run(path)
        if run is None:
            continue
        final = next((float(r[metric]) for r in reversed(run.rows) if r.get(metric) not in (None, "")), math.nan)
        out.append((path, run, final, read_history(path)[-1]))
    if not out:
        raise UsageError(f"no run folders under {', '.join(map(str, roots))} (folders holding metrics.csv and "
                         "config.yaml)")
    return out


def listeners_rows(roots: Sequence[str | Path], sender: int, receivers: Sequence[int], metric: str) -> list[list[str]]:
    """Table rows: run folder, algo, seed, final metric, receivers hearing the sender (strictly) out of all."""
    rows = []
    for path, run, final, record in final_graphs(roots, metric):
        heard = strict_listeners(record, sender, receivers)
        rows.append([path.name, run.algo, str(run.config.get("seed", "?")), f"{final:.3f}",
                     f"{len(heard)} of {len(receivers)} {heard}"])
    return rows


def source_rows(roots: Sequence[str | Path], shift: int, metric: str) -> list[list[str]]:
    """Table rows for the signal game: run folder, algo, seed, k, final metric, receivers i hearing their source
    (i + shift) mod N (strictly) out of N."""
    rows = []
    for path, run, final, record in final_graphs(roots, metric):
        n = len(record["graph"])
        heard = [i for i in range(n) if strict_listeners(record, (i + shift) % n, [i])]
        rows.append([path.name, run.algo, str(run.config.get("seed", "?")), str(record.get("k", "?")),
                     f"{final:.3f}", f"{len(heard)} of {n}"])
    return rows


def listeners_parser() -> argparse.ArgumentParser:
    p = OneLineParser(prog="listeners.py", description="Per run folder: the final metric and which receivers hear a "
                                                       "sender in the final evaluation graph (strict choices only).")
    p.add_argument("roots", nargs="+", metavar="RUN_DIR_OR_PARENT", help="run folders, or folders holding them")
    p.add_argument("--sender", type=int_in(0), default=0, help="the sender (default 0: the scout of pcp_scout)")
    p.add_argument("--receivers", default="1,2,3,4", help="comma-separated receivers (default 1,2,3,4)")
    p.add_argument("--metric", default="eval/success", help="the final metric column (default eval/success)")
    p.add_argument("--shift", type=int_in(1), default=None,
                   help="instead of one sender: receiver i's source is agent (i + SHIFT) mod N (the signal game); "
                        "counts the receivers hearing their own source")
    return p


def listeners_main(argv: Sequence[str] | None = None) -> list[list[str]]:
    args = guarded(lambda: listeners_parser().parse_args(argv))
    script_logging()

    def run() -> list[list[str]]:
        if args.shift is not None:
            rows = source_rows(args.roots, args.shift, args.metric)
            sys.stdout.write(md_table(["run", "algo", "seed", "k", args.metric, f"hear source i+{args.shift}"], rows)
                             + "\n")
            return rows
        try:
            receivers = [int(x) for x in args.receivers.split(",") if x.strip()]
        except ValueError:
            raise UsageError(f"--receivers={args.receivers!r}; expected comma-separated agent indices") from None
        rows = listeners_rows(args.roots, args.sender, receivers, args.metric)
        sys.stdout.write(md_table(["run", "algo", "seed", args.metric, f"hear sender {args.sender}"], rows) + "\n")
        return rows

    return guarded(run)  # type: ignore[return-value]
