"""Evaluation episodes of a checkpoint as a video (`scripts/evaluate.py RUN --video out.gif`).

One env copy that draws its frames (envs.render_adapters.make_render_env: the Predator-Prey family, MPE and other
PettingZoo envs, SMAX) plays `episodes` episodes with argmax actions and the evaluation's graph and gate (the --graph
/ --gate choices of scripts/evaluate.py). Before each step the frame of the current state is drawn with that step's
communication edges (sender -> receiver arrows) and closed gates, under a caption line (episode, step, messages).
GIF through imageio (the [plot] extra); .mp4 needs imageio's ffmpeg plugin (pip install imageio-ffmpeg).
"""
from __future__ import annotations

import logging
from pathlib import Path
from typing import Any, Sequence

import numpy as np
import torch

from commformer.errors import MissingExtraError, UsageError, UserError
from commformer.protocol import state_kwarg

log = logging.getLogger("commformer")

VIDEO_SUFFIXES = (".gif", ".mp4")
CAPTION_HEIGHT = 20
DEFAULT_VIDEO_EPISODES = 3
FPS = 5.0  # frames (env steps) per second


def video_format(path: str | Path) -> str:
    """'gif' or 'mp4' from the file name; UsageError for anything else."""
    suffix = Path(path).suffix.lower()
    if suffix not in VIDEO_SUFFIXES:
        raise UsageError(f"--video={str(path)!r}; must end in {' or '.join(VIDEO_SUFFIXES)}")
    return suffix[1:]


def require_imageio():
    """imageio.v3, after checking Pillow too (the renderers draw with it); MissingExtraError naming the extra."""
    try:
        import PIL  # noqa: F401
        import imageio.v3 as iio
    except ImportError as e:
        raise MissingExtraError(f"--video needs {e.name or 'imageio'}: pip install -e '.[plot]'") from None
    return iio


def with_caption(frame: np.ndarray, text: str) -> np.ndarray:
    """frame [H,W,3] uint8 with a white strip of text on top -> [H+CAPTION_HEIGHT,W,3] uint8."""
    try:
        from PIL import Image, ImageDraw, ImageFont
    except ImportError:
        raise MissingExtraError("--video needs Pillow: pip install -e '.[plot]'") from None
    h, w = frame.shape[:2]
    pic = Image.new("RGB", (w, h + CAPTION_HEIGHT), (255, 255, 255))
    pic.paste(Image.fromarray(np.ascontiguousarray(frame[..., :3], dtype=np.uint8)), (0, CAPTION_HEIGHT))
    try:
        font = ImageFont.load_default(size=12)
    except TypeError:
        font = ImageFont.load_default()
    ImageDraw.Draw(pic).text((6, CAPTION_HEIGHT // 2), text, fill=(0, 0, 0), font=font, anchor="lm")
    return np.asarray(pic, dtype=np.uint8).copy()


@torch.no_grad()
def record_episodes(run: Any, device: torch.device, graph: str = "auto", gate: str = "auto", seed: int | None = None,
                    episodes: int = DEFAULT_VIDEO_EPISODES) -> tuple[list[np.ndarray], list[dict[str, float]]]:
    """Play `episodes` episodes of checkpoint `run` (a reevaluate.LoadedRun) on one env copy reset with `seed`
    (default: reevaluate's default seed); returns (frames, each [H,W,3] uint8, one per step; per-episode stats:
    return, length and task metrics)."""
    from commformer.analysis.loaded_run import build_eval_policy, default_seed, resolve_choices
    from envs.render_adapters import make_render_env  # envs' renderers: one declared method, render_frame

    cfg = run.cfg
    seed = default_seed(cfg.seed) if seed is None else seed
    env = make_render_env(cfg.env, device)
    frames: list[np.ndarray] = []
    stats: list[dict[str, float]] = []
    try:
        policy = build_eval_policy(run, env.spec, device)
        how = resolve_choices(policy, graph, gate, cfg, run.iteration)
        carry = policy.initial_carry(1)
        torch.manual_seed(seed)  # only --graph sample / --gate sample draw from it
        step = env.reset(seed=seed).to(device)
        t = 0
        limit = episodes * (env.spec.episode_limit + 1)
        for _ in range(limit):
            out = policy.act(step.obs, step.avail_actions, step.alive, how, None, deterministic=True, carry=carry,
                             **state_kwarg(policy, step.state))
            gate_row = None if out.gate is None else out.gate[0]
            frame = env.render_frame(0, None if out.graph is None else out.graph[0], gate_row)
            msgs = float(policy.messages(out.stored, step.alive)[0])
            frames.append(with_caption(frame, f"episode {len(stats) + 1}/{episodes}  step {t}  "
                                              f"messages {msgs:.0f}  ({cfg.env['name']}, iteration {run.iteration})"))
            step = env.step(out.actions.to(env.device)).to(device)
            carry = policy.reset_carry(out.carry, step.done)
            t += 1
            if bool(step.done[0]):
                stats.append({k: float(v[0]) for k, v in step.episode.items()})
                t = 0
                if len(stats) >= episodes:
                    break
    finally:
        close = getattr(env, "close", None)
        if close is not None:
            close()
    return frames, stats


def write_video(frames: Sequence[np.ndarray], path: str | Path, fps: float) -> Path:
    """Write frames ([H,W,3] uint8, one size) as a GIF (looping) or an MP4; returns the path."""
    fmt = video_format(path)
    if not frames:
        raise UsageError("--video: the episode produced no frame")
    shapes = {f.shape for f in frames}
    assert len(shapes) == 1, f"frames of different sizes {sorted(shapes)}"
    iio = require_imageio()
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    stack = np.stack(frames)
    if fmt == "gif":
        iio.imwrite(path, stack, extension=".gif", duration=int(1000 / fps), loop=0)
        return path
    try:
        iio.imwrite(path, stack, extension=".mp4", fps=fps)
    except (ImportError, ValueError, OSError, RuntimeError) as e:
        raise MissingExtraError(f"--video={str(path)!r}: writing MP4 needs imageio's ffmpeg plugin "
                                f"(pip install imageio-ffmpeg), or use a .gif ({type(e).__name__})") from None
    return path


def video_main(run: Any, path: str | Path, device: torch.device, graph: str, gate: str, seed: int | None,
               episodes: int) -> Path:
    """record_episodes + write_video, with one log line per episode; returns the video's path."""
    video_format(path)
    require_imageio()
    frames, stats = record_episodes(run, device, graph, gate, seed, episodes)
    out = write_video(frames, path, FPS)
    for i, s in enumerate(stats, start=1):
        log.info("video episode %d: %s", i, ", ".join(f"{k} {v:.4g}" for k, v in s.items()))
    log.info("wrote %s (%d frames)", out, len(frames))
    return out


def log_final_video(trainer: Any) -> None:
    """logger.video: one evaluation episode of a Trainer's final checkpoint, drawn by the env's renderer, into
    videos/final.gif and logged as a wandb video; a warning instead where the env does not draw or the [plot] extra
    is missing."""
    from commformer.analysis.loaded_run import load_run

    try:
        frames, _ = record_episodes(load_run(trainer.run_dir), trainer.device, episodes=1)
        path = write_video(frames, trainer.run_dir / "videos" / "final.gif", FPS)
    except (UserError, ValueError, ImportError) as e:
        log.warning("logger.video: no video (%s)", (str(e).splitlines() or [type(e).__name__])[0])
        return
    trainer.logger.video(path)
