"""The run's graph history: one JSON line per evaluation in RUN_DIR/graph_history.jsonl, beside metrics.csv.

Each record (N agents; lists are receiver-major: row i = receiver i, column j = sender j):
    iteration        int, the iteration the evaluation followed (0: before training, eval_at_start)
    env_steps        int, env steps trained by then
    mode             str, algo.graph (learned | full | none | random) for CommFormer's graph; per_step for a policy
                     without one whose evaluation still reports the graph it acted on (the recurrent communication
                     methods: the graph of their messages at each step); none where no graph is reported
    graph_choice     str, how evaluation picked the graph (deterministic, or full during warmup; per_step as above)
    k                int, senders each receiver keeps besides itself
    alpha            [N][N] float, the graph logits at that time (null for graphs without alpha)
    graph            [N][N] 0/1, the acting graph of the evaluation (its first step)
    graph_mean       [N][N] float, the acting graph averaged over the evaluation's live steps (differs from graph
                     for policies that draw a graph per step: GA-Comm, MAGIC); null without a graph
    margins          [N] float, per receiver alpha's k-th minus (k+1)-th largest among j != i (null where undefined)
    gate_open        [N] float, per agent, the fraction of its evaluation steps with the gate open (null: no gate)
    messages_per_step  float, the evaluation's mean messages per step (comm/eval_messages_per_step)
    alpha_grad       {term: [N][N] float}, with logger.alpha_grads: d(loss term)/d(alpha) on the rollout before the
                     evaluation, per term (policy, value, entropy, extra); a step moves alpha against it

A resumed run keeps the records up to the checkpoint's iteration and appends after them (as metrics.csv does).
"""
from __future__ import annotations

import json
import math
import os
from pathlib import Path
from typing import Any, Mapping, Sequence

import torch

from commformer.errors import UserError
from commformer.training.evaluation import EvalDetails

HISTORY_FILE = "graph_history.jsonl"


class HistoryError(UserError, ValueError):
    """A graph history that is missing or unreadable (one line naming the file and what is wrong)."""


def _floats(values: Sequence[float]) -> list[float | None]:
    """Python floats, NaN as None (JSON has no NaN)."""
    return [None if math.isnan(v) else float(v) for v in values]


def choice_name(how: Any) -> str:
    """The name of how an evaluation picked its graph: the `graph` field of a policy's acting choices (CommFormer's
    Acting), else the choices' own text."""
    choice = getattr(how, "graph", how)
    return str(getattr(choice, "value", choice))


def graph_record(graph: Any, details: EvalDetails, metrics: Mapping[str, float], iteration: int,
                 env_steps: int, how: Any) -> dict[str, Any]:
    """The history record of one evaluation (fields in the module docstring) from the policy's comm_graph (an object
    with mode, k, learned, alpha and margins(); None for a policy without one), the evaluation's EvalDetails and its
    metrics (for comm/eval_messages_per_step)."""
    margins = graph.margins() if graph is not None else torch.full((1,), float("nan"))
    mode = graph.mode if graph is not None else ("none" if details.graph is None else "per_step")
    return {
        "iteration": int(iteration), "env_steps": int(env_steps), "mode": mode,
        "graph_choice": mode if how is None else choice_name(how),
        "k": 0 if graph is None else int(graph.k),
        "alpha": graph.alpha.detach().cpu().tolist() if graph is not None and graph.learned else None,
        "graph": None if details.graph is None else details.graph.int().tolist(),
        "graph_mean": None if details.graph_mean is None else [[round(float(x), 4) for x in row]
                                                               for row in details.graph_mean.tolist()],
        "margins": None if bool(torch.isnan(margins).all()) else _floats(margins.tolist()),
        "gate_open": None if details.gate_open is None else _floats(details.gate_open.tolist()),
        "messages_per_step": _floats([metrics.get("comm/eval_messages_per_step", float("nan"))])[0],
    }


def read_history(path: str | Path) -> list[dict[str, Any]]:
    """The records of a graph_history.jsonl (a run folder names its file); HistoryError (one line) when it is
    missing, empty or not JSON lines."""
    path = Path(path)
    if path.is_dir():
        path = path / HISTORY_FILE
    if not path.is_file():
        raise HistoryError(f"no graph history at {str(path)!r}; runs record one at every evaluation "
                           f"(a run folder holds {HISTORY_FILE} beside metrics.csv)")
    records = []
    for n, line in enumerate(path.read_text().splitlines(), start=1):
        if not line.strip():
            continue
        try:
            rec = json.loads(line)
        except json.JSONDecodeError as e:
            raise HistoryError(f"{str(path)!r} line {n} is not JSON ({e.msg})") from None
        if not isinstance(rec, dict) or "iteration" not in rec or "graph" not in rec:
            raise HistoryError(f"{str(path)!r} line {n} is not a graph-history record (needs iteration and graph)")
        records.append(rec)
    if not records:
        raise HistoryError(f"{str(path)!r} holds no record: the run has not evaluated yet")
    return records


class GraphHistory:
    """Appends records to RUN_DIR/graph_history.jsonl. resume_iteration: keep the records up to it and drop those
    past it (the evaluations after the checkpoint a resumed run starts from); None: a new run, which starts the file
    afresh (as metrics.csv does)."""

    def __init__(self, run_dir: str | Path, resume_iteration: int | None = None) -> None:
        self.path = Path(run_dir) / HISTORY_FILE
        if resume_iteration is None:
            self.path.unlink(missing_ok=True)
        else:
            self.truncate_after(resume_iteration)

    def truncate_after(self, iteration: int) -> None:
        """Keep only records with iteration <= `iteration` (rewritten atomically; nothing to do without a file)."""
        if not self.path.is_file():
            return
        kept = [line for line in self.path.read_text().splitlines()
                if line.strip() and int(json.loads(line)["iteration"]) <= iteration]
        tmp = self.path.with_suffix(".jsonl.tmp")
        tmp.write_text("".join(line + "\n" for line in kept))
        os.replace(tmp, self.path)

    def append(self, record: Mapping[str, Any]) -> None:
        """Write one record as one line (allow_nan=False: NaN must already be None)."""
        with self.path.open("a") as f:
            f.write(json.dumps(dict(record), allow_nan=False, separators=(",", ":")) + "\n")
