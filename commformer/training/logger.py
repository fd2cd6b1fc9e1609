"""Logger facade: a progress bar with ETA and live return/success (on a terminal), console lines through `logging`
(so Hydra's train.log holds them too), metrics.csv (one row per iteration), wandb (imported lazily; offline into the
run folder by default, env_steps as its x-axis, graph images at evaluations) and optional TensorBoard."""
from __future__ import annotations

import contextlib
import csv
import logging
import math
import os
import re
import socket
import sys
import threading
import time
import urllib.parse
import urllib.request
from dataclasses import dataclass
from pathlib import Path
from typing import Any, Mapping, Sequence

from commformer.config import LoggerConfig

log = logging.getLogger("commformer")

CONSOLE_KEYS = ("train/return", "eval/return", "eval/success", "eval/won", "eval/steps", "perf/env_steps_per_s")
PROBE_TIMEOUT_S = 3.0  # logger.wandb=online: how long the server may take to accept a TCP connection
INIT_TIMEOUT_S = 20.0  # ... and wandb.init, once the server answered


def _fmt(v: Any) -> str:
    return f"{v:.4g}" if isinstance(v, float) else str(v)


def _duration(seconds: float) -> str:
    s = int(round(seconds))
    return f"{s // 3600}h{s % 3600 // 60:02d}m" if s >= 3600 else f"{s // 60}m{s % 60:02d}s"


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


# ---- where the run sits (Hydra) -------------------------------------------------------------------------------------

@dataclass(frozen=True)
class RunContext:
    """name: the run's display name (wandb, console prefix under -m); group: its wandb group; multirun: one job of a
    Hydra sweep (-m)."""

    name: str
    group: str | None = None
    multirun: bool = False


def sweep_group(sweep_dir: str | os.PathLike) -> str:
    """The wandb group of a sweep: its folder's name, with the date folder above it when there is one (the default
    runs/multirun/<date>/<time> gives "<date>_<time>")."""
    p = Path(sweep_dir)
    if re.fullmatch(r"\d{4}-\d{2}-\d{2}", p.parent.name):
        return f"{p.parent.name}_{p.name}"
    return p.name


def swept_keys(sweep_dir: str | os.PathLike) -> set[str] | None:
    """The keys a sweep varies (`key=a,b`, `key=range(...)`, ...) on the command line or in hydra.sweeper.params (a
    study's grid), read from the multirun.yaml that Hydra's basic sweeper writes into the sweep folder before it
    launches a job; None when there is none to read."""
    from hydra.core.override_parser.overrides_parser import OverridesParser
    from hydra.errors import HydraException
    from omegaconf import OmegaConf
    from omegaconf.errors import OmegaConfBaseException

    try:
        hydra_cfg = OmegaConf.load(Path(sweep_dir) / "multirun.yaml").hydra
        params = [f"{k}={v}" for k, v in (OmegaConf.select(hydra_cfg, "sweeper.params") or {}).items()]
        parsed = OverridesParser.create().parse_overrides(params + [str(o) for o in hydra_cfg.overrides.task])
    except (OSError, OmegaConfBaseException, HydraException):
        return None
    return {o.key_or_group for o in parsed if o.is_sweep_override()}


def run_context(base_name: str, group: str | None = None) -> RunContext:
    """The RunContext of the current process. Inside a Hydra app the name is `base_name` plus the overrides that set
    this run apart: under -m the swept ones (their values in this job), else every task override, e.g.
    pp_commformer_s1_algo.sparsity=0.6. Keys of hydra.job.config.override_dirname.exclude_keys never count, nor do
    seed, env and algo (base_name carries them). Under -m the group defaults to the sweep folder (sweep_group).
    Outside Hydra: base_name and `group` as given."""
    try:
        from hydra.core.hydra_config import HydraConfig
        from hydra.types import RunMode
    except ImportError:
        return RunContext(base_name, group)
    if not HydraConfig.initialized():
        return RunContext(base_name, group)
    hc = HydraConfig.get()
    multirun = hc.mode == RunMode.MULTIRUN
    exclude = set(hc.job.config.override_dirname.exclude_keys) | {"seed", "env", "algo"}
    swept = swept_keys(hc.sweep.dir) if multirun else None
    keys = {o: o.split("=", 1)[0].lstrip("+~") for o in hc.overrides.task}
    differing = sorted(o for o, k in keys.items() if k not in exclude and (swept is None or k in swept))
    name = base_name + ("_" + ",".join(differing) if differing else "")
    if multirun and group is None:
        group = sweep_group(hc.sweep.dir)
    return RunContext(name, group, multirun)


# ---- wandb ----------------------------------------------------------------------------------------------------------

def unreachable(url: str, timeout: float = PROBE_TIMEOUT_S) -> str | None:
    """Why `url`'s server (or the https/http proxy in the environment) does not accept a TCP connection within
    `timeout` seconds, name resolution included; None when it does."""
    parts = urllib.parse.urlsplit(url)
    proxy = urllib.request.getproxies().get(parts.scheme)
    if proxy and not urllib.request.proxy_bypass(parts.hostname or ""):
        parts = urllib.parse.urlsplit(proxy if "//" in proxy else "http://" + proxy)
    host = parts.hostname or ""
    port = parts.port or (443 if parts.scheme == "https" else 80)
    result: list[str | None] = []

    def probe() -> None:
        try:
            socket.create_connection((host, port), timeout=timeout).close()
            result.append(None)
        except OSError as e:
            result.append(f"cannot reach {host}:{port} ({e.strerror or e})")

    thread = threading.Thread(target=probe, daemon=True)  # getaddrinfo has no timeout of its own
    thread.start()
    thread.join(timeout + 0.5)
    return result[0] if result else f"no answer from {host}:{port} within {timeout:g} s"


def run_tags(config: Mapping[str, Any], extra: Sequence[str] = ()) -> list[str]:
    """wandb tags: the env's name and family, the algo preset's name, then `extra` (no repeats, no empties)."""
    env, algo = config.get("env") or {}, config.get("algo") or {}
    tags = [env.get("name"), env.get("family"), algo.get("name"), *extra]
    return list(dict.fromkeys(str(t)[:64] for t in tags if t))


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
            self.wandb = self._init_wandb(config, wandb_id)
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
            from tqdm import tqdm
            from tqdm.contrib.logging import logging_redirect_tqdm

            self.bar = tqdm(total=self.end_env_steps - start_env_steps, unit="step", unit_scale=True,
                            dynamic_ncols=True, desc=run_name, file=sys.stderr)
            self._redirect.enter_context(logging_redirect_tqdm())  # console handlers write above the bar

    @property
    def wandb_id(self) -> str | None:
        """The wandb run's id (kept in checkpoints so a resume continues the same run); None without wandb."""
        return None if self.wandb is None else self.wandb.id

    @property
    def wants_media(self) -> bool:
        """Whether log(media=...) records images (wandb on and logger.media, until an image fails)."""
        return self.wandb is not None and self.cfg.media and not self._media_failed

    @property
    def wants_video(self) -> bool:
        return self.wandb is not None and self.cfg.video

    def _init_wandb(self, config: dict, wandb_id: str | None):
        os.environ.setdefault("WANDB_SILENT", "true")
        try:
            import wandb
        except ImportError as e:
            raise ImportError("logger.wandb needs the wandb package (pip install wandb), "
                              "or set logger.wandb=disabled") from e
        c = self.cfg
        kwargs: dict[str, Any] = dict(
            project=c.project, entity=c.entity, group=self.context.group, job_type=c.job_type,
            tags=run_tags(config, c.tags) or None, name=self.context.name, dir=str(self.run_dir), config=config,
            reinit="finish_previous", id=wandb_id, resume="allow" if wandb_id else None)
        run = None
        if c.wandb == "online":
            from wandb.sdk import wandb_setup

            why = unreachable(wandb_setup.singleton().settings.base_url)
            if why is None:
                try:
                    run = wandb.init(mode="online", settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S), **kwargs)
                except wandb.errors.Error as e:  # no API key, a refused key, a server that does not answer
                    why = (str(e).strip().splitlines() or [type(e).__name__])[0]
            if run is None:
                log.warning("logger.wandb=online: %s; recording offline in %s instead (upload later with "
                            "`wandb sync`)", why, self.run_dir / "wandb")
        if run is None:
            run = wandb.init(mode="offline", **kwargs)
        run.define_metric("env_steps")
        run.define_metric("*", step_metric="env_steps")  # every panel's x-axis: env steps, not wandb's own _step
        return run

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
            self.bar.n = step - self.start_env_steps
            live = {k.split("/")[-1]: _fmt(row[k]) for k in ("train/return", "eval/success", "eval/won")
                    if k in row and not (isinstance(row[k], float) and math.isnan(row[k]))}
            self.bar.set_postfix(live, refresh=True)
        it = int(row["iteration"])
        if it % self.cfg.console_every == 0 or any(k.startswith("eval/") for k in row):
            self.console(row)

    def _images(self, media: Mapping[str, Any]) -> dict[str, Any]:
        out: dict[str, Any] = {}
        for key, value in media.items():
            if self.wants_media:
                import wandb

                try:
                    out[key] = wandb.Image(value)
                except Exception as e:  # e.g. pillow missing, or a value wandb cannot picture
                    self._media_failed = True
                    log.warning("logger.media: no more images this run (%s: %s)", key,
                                (str(e).splitlines() or [type(e).__name__])[0])
            if hasattr(value, "savefig"):  # a matplotlib Figure: free it
                import matplotlib.pyplot as plt

                plt.close(value)
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
        parts += [f"{k} {_fmt(row[k])}" for k in CONSOLE_KEYS if k in row]
        if self.bar is None and self.cfg.progress:  # plain progress where there is no bar
            parts.append(self._progress(int(row["env_steps"])))
        self._line(" | ".join(parts))

    def _progress(self, step: int) -> str:
        done, todo = step - self.start_env_steps, self.end_env_steps - self.start_env_steps
        elapsed = time.monotonic() - self.started
        eta = elapsed * (todo - done) / done if done > 0 else float("nan")
        pct = 100.0 * done / todo if todo > 0 else 100.0
        return f"{pct:.0f}% eta {_duration(eta) if math.isfinite(eta) else '?'}"

    def _line(self, msg: str, had_bar: bool = False) -> None:
        """One console line through logging (Hydra's console handler and train.log), named by the run under -m.
        Where logging is not set up (outside Hydra) a line that would be lost goes beside the bar instead."""
        if self.context.multirun:
            msg = f"[{self.context.name}] {msg}"
        if (self.bar is not None or had_bar) and not log.hasHandlers():
            from tqdm import tqdm

            tqdm.write(msg, file=sys.stderr)
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
