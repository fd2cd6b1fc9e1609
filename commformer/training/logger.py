"""Logger facade: a progress bar with ETA and live return/success (on a terminal), console lines through `logging`
(so Hydra's train.log holds them too), metrics.csv (one row per iteration), wandb (imported lazily; offline into the
run folder by default, env_steps as its x-axis, graph images at evaluations) and optional TensorBoard.

The pieces live in their own modules: csv_sink (metrics.csv), wandb_sink (the wandb run, its tags, images),
progress (the bar and the ETA) and sweep_naming (the run's name and group under Hydra); Logger combines them."""
from __future__ import annotations

import contextlib
import logging
import math
import os
import sys
import time
from pathlib import Path
from typing import Any, Mapping

from commformer.config import LoggerConfig
from commformer.training import progress
from commformer.training.csv_sink import CsvWriter
from commformer.training.sweep_naming import run_context
from commformer.training.wandb_sink import init_wandb, pil_available, wandb_images

log = logging.getLogger("commformer")

CONSOLE_KEYS = ("train/return", "eval/return", "eval/success", "eval/won", "eval/steps", "perf/env_steps_per_s")


class Logger:
    """One run's recorder.

    end_env_steps: the env-step count the run reaches when it finishes (iterations * T * B); start_env_steps: where
    a resumed run starts (the bar counts the steps in between); resume_iteration: keep metrics.csv rows up to it;
    wandb_id: continue this wandb run (a resume of the same run folder)."""

    def __init__(self, cfg: LoggerConfig, run_dir: Path, config: dict, end_env_steps: int, run_name: str,
                 start_env_steps: int = 0, resume_iteration: int | None = None,
                 wandb_id: str | None = None) -> None:
        self.cfg, self.run_dir = cfg, Path(run_dir)
        self.run_dir.mkdir(parents=True, exist_ok=True)
        self.context = run_context(run_name, cfg.group)
        self.start_env_steps, self.end_env_steps = start_env_steps, max(end_env_steps, start_env_steps)
        self.started = time.monotonic()
        self.csv = CsvWriter(self.run_dir / "metrics.csv", resume=resume_iteration is not None)
        if resume_iteration is not None:
            self.csv.truncate_after(resume_iteration)
        self.wandb = None
        self._media_failed = False
        if cfg.wandb != "disabled":
            self.wandb = init_wandb(cfg, self.context, self.run_dir, config, wandb_id)
            if cfg.media and not pil_available():  # a fresh install without Pillow: no images, nothing to warn about
                self._media_failed = True
                log.debug("logger.media: no images this run (wandb.Image needs the PIL package, not installed)")
        self.tb = None
        if cfg.tensorboard:
            try:
                from torch.utils.tensorboard import SummaryWriter
            except ImportError as e:
                raise ImportError("logger.tensorboard=true needs the [tensorboard] extra: "
                                  "pip install -e '.[tensorboard]'") from e
            self.tb = SummaryWriter(str(self.run_dir / "tensorboard"))
        self._redirect = contextlib.ExitStack()
        self.bar = None
        # a bar only where it can redraw in place: a terminal, and one run per terminal (not a sweep's job)
        if cfg.progress and sys.stderr.isatty() and not self.context.multirun:
            self.bar = progress.open_bar(self.end_env_steps - start_env_steps, run_name, self._redirect)

    @property
    def wandb_id(self) -> str | None:
        """The wandb run's id (kept in checkpoints so a resume continues the same run); None without wandb."""
        return None if self.wandb is None else self.wandb.id

    @property
    def wants_media(self) -> bool:
        """Whether log(media=...) records images (wandb on, logger.media and Pillow installed, until an image fails)."""
        return self.wandb is not None and self.cfg.media and not self._media_failed

    @property
    def wants_video(self) -> bool:
        return self.wandb is not None and self.cfg.video

    def log(self, row: Mapping[str, Any], media: Mapping[str, Any] | None = None) -> None:
        """Record one iteration's row (must hold 'iteration' and 'env_steps'). media: {key: matplotlib Figure or
        image array [H,W,3] uint8} logged as wandb images at this row's env_steps (when wants_media; figures are
        closed either way)."""
        self.csv.write(row)
        step = int(row["env_steps"])
        numeric = {k: v for k, v in row.items() if isinstance(v, (int, float)) and not (
            isinstance(v, float) and math.isnan(v))}
        images = self._images(media) if media else {}
        if self.wandb is not None:
            self.wandb.log({**numeric, **images})
        if self.tb is not None:
            for k, v in numeric.items():
                self.tb.add_scalar(k, v, step)
        if self.bar is not None:
            progress.update_bar(self.bar, step - self.start_env_steps, row)
        it = int(row["iteration"])
        if it % self.cfg.console_every == 0 or any(k.startswith("eval/") for k in row):
            self.console(row)

    def _images(self, media: Mapping[str, Any]) -> dict[str, Any]:
        wanted = self.wants_media
        out, still_works = wandb_images(media, wanted)
        if wanted and not still_works:
            self._media_failed = True
        return out

    def video(self, path: str | os.PathLike, key: str = "media/eval_episode") -> None:
        """A video file (GIF or MP4) as a wandb video at the last row's env_steps (when wants_video)."""
        if not self.wants_video:
            return
        import wandb

        step = int(float(self.csv.rows[-1]["env_steps"])) if self.csv.rows else 0
        self.wandb.log({key: wandb.Video(str(path)), "env_steps": step})

    def console(self, row: Mapping[str, Any]) -> None:
        parts = [f"iter {row['iteration']}", f"steps {row['env_steps']}"]
        parts += [f"{k} {progress.fmt(row[k])}" for k in CONSOLE_KEYS if k in row]
        if self.bar is None and self.cfg.progress:  # plain progress where there is no bar
            parts.append(self._progress(int(row["env_steps"])))
        self._line(" | ".join(parts))

    def _progress(self, step: int) -> str:
        return progress.progress_text(step - self.start_env_steps, self.end_env_steps - self.start_env_steps,
                                      time.monotonic() - self.started)

    def _line(self, msg: str, had_bar: bool = False) -> None:
        """One console line through logging (Hydra's console handler and train.log), named by the run under -m.
        Where logging is not set up (outside Hydra) a line that would be lost goes beside the bar instead."""
        if self.context.multirun:
            msg = f"[{self.context.name}] {msg}"
        if (self.bar is not None or had_bar) and not log.hasHandlers():
            progress.write_beside_bar(msg)
        else:
            log.info(msg)

    def summary(self, lines: list[str]) -> None:
        """The end-of-run lines, after the progress bar is closed."""
        had_bar = self.bar is not None
        self._close_bar()
        for line in lines:
            self._line(line, had_bar)

    def _close_bar(self) -> None:
        bar, self.bar = self.bar, None
        if bar is not None:
            bar.close()
        self._redirect.close()

    def close(self) -> None:
        self._close_bar()
        if self.wandb is not None:
            self.wandb.finish()
        if self.tb is not None:
            self.tb.close()
