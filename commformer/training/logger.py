"""Logger facade: a progress bar with ETA and live return/success, periodic console summaries (logging),
metrics.csv (one row per iteration), wandb (imported lazily; offline into the run folder by default) and optional
TensorBoard."""
from __future__ import annotations

import csv
import logging
import math
import os
from pathlib import Path
from typing import Any, Mapping

from commformer.config import LoggerConfig

log = logging.getLogger("commformer")

CONSOLE_KEYS = ("train/return", "eval/return", "eval/success", "eval/won", "eval/steps", "perf/env_steps_per_s")


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


class CsvWriter:
    """metrics.csv with a header that grows when a new key appears (the file is rewritten then)."""

    def __init__(self, path: Path, resume: bool = False) -> None:
        self.path = path
        self.keys: list[str] = []
        self.rows: list[dict[str, Any]] = []
        if resume and path.is_file():
            with path.open(newline="") as f:
                reader = csv.DictReader(f)
                self.keys = list(reader.fieldnames or [])
                self.rows = list(reader)

    def truncate_after(self, iteration: int) -> None:
        """Drop rows past `iteration` (rows logged after the checkpoint a run resumes from)."""
        self.rows = [r for r in self.rows if int(float(r.get("iteration", 0))) <= iteration]
        self._rewrite()

    def write(self, row: Mapping[str, Any]) -> None:
        new = [k for k in row if k not in self.keys]
        self.rows.append(dict(row))
        if new or not self.path.exists():
            self.keys += new
            self._rewrite()
            return
        with self.path.open("a", newline="") as f:
            csv.DictWriter(f, fieldnames=self.keys).writerow(dict(row))

    def _rewrite(self) -> None:
        tmp = self.path.with_suffix(".csv.tmp")
        with tmp.open("w", newline="") as f:
            w = csv.DictWriter(f, fieldnames=self.keys)
            w.writeheader()
            w.writerows(self.rows)
        os.replace(tmp, self.path)


class Logger:
    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict, total_env_steps: int, run_name: str,
                 start_env_steps: int = 0, resume_iteration: int | None = None) -> None:
        self.cfg, self.run_dir = cfg, run_dir
        run_dir.mkdir(parents=True, exist_ok=True)
        self.csv = CsvWriter(run_dir / "metrics.csv", resume=resume_iteration is not None)
        if resume_iteration is not None:
            self.csv.truncate_after(resume_iteration)
        self.wandb = None
        if cfg.wandb != "disabled":
            self.wandb = self._init_wandb(config, run_name)
        self.tb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("logger.tensorboard=true needs the [tensorboard] extra: "
                                  "pip install -e '.[tensorboard]'") from e
            self.tb = SummaryWriter(str(run_dir / "tensorboard"))
        self.bar = None
        if cfg.progress:
            from tqdm import tqdm
            self.bar = tqdm(total=total_env_steps, initial=start_env_steps, unit="step", unit_scale=True,
                            dynamic_ncols=True, desc=run_name)

    def _init_wandb(self, config: dict, run_name: str):
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb
        except ImportError as e:
            raise ImportError("logger.wandb needs the wandb package (pip install wandb), "
                              "or set logger.wandb=disabled") from e
        c = self.cfg
        return wandb.init(project=c.project, entity=c.entity, group=c.group, tags=list(c.tags) or None,
                          name=run_name, dir=str(self.run_dir), mode=c.wandb, config=config, reinit=True)

    def log(self, row: Mapping[str, Any]) -> None:
        """Record one iteration's row (must hold 'iteration' and 'env_steps')."""
        self.csv.write(row)
        step = int(row["env_steps"])
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not (
            isinstance(v, float) and math.isnan(v))}
        if self.wandb is not None:
            self.wandb.log(numeric, step=step)
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(k, v, step)
        if self.bar is not None:
            self.bar.n = step
            live = {k.split("/")[-1]: _fmt(row[k]) for k in ("train/return", "eval/success", "eval/won")
                    if k in row and not (isinstance(row[k], float) and math.isnan(row[k]))}
            self.bar.set_postfix(live, refresh=True)
        it = int(row["iteration"])
        if it % self.cfg.console_every == 0 or any(k.startswith("eval/") for k in row):
            self.console(row)

    def console(self, row: Mapping[str, Any]) -> None:
        parts = [f"iter {row['iteration']}", f"steps {row['env_steps']}"]
        parts += [f"{k} {_fmt(row[k])}" for k in CONSOLE_KEYS if k in row]
        msg = " | ".join(parts)
        if self.bar is not None:
            self.bar.write(msg)
        else:
            log.info(msg)

    def summary(self, lines: list[str]) -> None:
        """The end-of-run lines, after the progress bar is closed (plain lines beside a bar, else logging)."""
        bar, self.bar = self.bar, None
        if bar is not None:
            bar.close()
        for line in lines:
            if bar is not None:
                bar.write(line)
            else:
                log.info(line)

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()
