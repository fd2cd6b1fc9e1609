"""wandb for the Logger: the run (imported lazily; offline into the run folder by default, online with a fallback to
offline when the server cannot be reached, env_steps as every panel's x-axis), its tags, and media as wandb images."""
from __future__ import annotations

import logging
import os
import socket
import threading
import urllib.parse
import urllib.request
from pathlib import Path
from typing import Any, Mapping, Sequence

from commformer.config import LoggerConfig
from commformer.training.sweep_naming import RunContext

log = logging.getLogger("commformer")

PROBE_TIMEOUT_S = 3.0  # logger.wandb=online: how long the server may take to accept a TCP connection
INIT_TIMEOUT_S = 20.0  # ... and wandb.init, once the server answered


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


def init_wandb(cfg: LoggerConfig, context: RunContext, run_dir: Path, config: dict, wandb_id: str | None):
    """The wandb run of logger config `cfg` (cfg.wandb: "online" or "offline"), recorded under run_dir/wandb;
    wandb_id: continue that run. logger.wandb=online falls back to offline, with a warning, when the server cannot
    be reached or refuses the run."""
    os.environ.setdefault("WANDB_SILENT", "true")
    if not os.environ.get("WANDB_MODE", "unset").strip():  # set but empty: as if unset (wandb would reject it)
        del os.environ["WANDB_MODE"]
    try:
        import wandb
    except ImportError as e:
        raise ImportError("logger.wandb needs the wandb package (pip install wandb), "
                          "or set logger.wandb=disabled") from e
    kwargs: dict[str, Any] = dict(
        project=cfg.project, entity=cfg.entity, group=context.group, job_type=cfg.job_type,
        tags=run_tags(config, cfg.tags) or None, name=context.name, dir=str(run_dir), config=config,
        reinit="finish_previous", id=wandb_id, resume="allow" if wandb_id else None)
    run = None
    if cfg.wandb == "online":
        from wandb.sdk import wandb_setup

        why = unreachable(wandb_setup.singleton().settings.base_url)
        if why is None:
            try:
                run = wandb.init(mode="online", settings=wandb.Settings(init_timeout=INIT_TIMEOUT_S), **kwargs)
            except wandb.errors.Error as e:  # no API key, a refused key, a server that does not answer
                why = (str(e).strip().splitlines() or [type(e).__name__])[0]
        if run is None:
            log.warning("logger.wandb=online: %s; recording offline in %s instead (upload later with "
                        "`wandb sync`)", why, run_dir / "wandb")
    if run is None:
        run = wandb.init(mode="offline", **kwargs)
    run.define_metric("env_steps")
    run.define_metric("*", step_metric="env_steps")  # every panel's x-axis: env steps, not wandb's own _step
    return run


def pil_available() -> bool:
    """Whether Pillow is installed (wandb.Image needs it to picture arrays and figures)."""
    try:
        import PIL  # noqa: F401
    except ImportError:
        return False
    return True


def wandb_images(media: Mapping[str, Any], enabled: bool = True) -> tuple[dict[str, Any], bool]:
    """({key: wandb.Image} of `media` (matplotlib Figures or [H,W,3] uint8 arrays), whether images still work).

    With enabled=False nothing is pictured. The first value wandb cannot picture ends the pictures (a warning naming
    the key and why); matplotlib figures are closed either way."""
    out: dict[str, Any] = {}
    for key, value in media.items():
        if enabled:
            import wandb

            try:
                out[key] = wandb.Image(value)
            except Exception as e:  # a value wandb cannot picture, a broken Pillow
                enabled = False
                log.warning("logger.media: no more images this run (%s: %s)", key,
                            (str(e).splitlines() or [type(e).__name__])[0])
        if hasattr(value, "savefig"):  # a matplotlib Figure: free it
            import matplotlib.pyplot as plt

            plt.close(value)
    return out, enabled
