"""Checkpoints: atomic writes, weights-only loads, and one clear error for a corrupt or foreign file.

A checkpoint is a dict of tensors, numbers, strings and lists (so torch.load(weights_only=True) accepts it):
format, config (YAML text), counters, model / graph / optimiser / value-normaliser states, RNG states, and the env's
state when the env can save it.
"""
from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Any

import torch

FORMAT = "commformer-checkpoint-v1"


class CheckpointError(ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and why."""


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` (plus the format tag) to `path` atomically: a temp file in the same folder, then rename."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
    os.close(fd)
    try:
        torch.save({"format": FORMAT, **state}, tmp)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path


def checkpoint_path(arg: str | os.PathLike, key: str = "resume") -> Path:
    """The checkpoint file that `arg` names: the file itself, or a run folder's checkpoints/last.pt (or last.pt).
    CheckpointError naming `key` when there is none."""
    path = Path(arg)
    if path.is_file():
        return path
    for candidate in (path / "checkpoints" / "last.pt", path / "last.pt"):
        if candidate.is_file():
            return candidate
    raise CheckpointError(f"{key}={str(arg)!r}: no such checkpoint file, nor a run folder with checkpoints/last.pt "
                          "(give a .pt file or a run folder)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    key: str = "resume") -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint (weights only: no code runs from the file); `path` may be a run
    folder (see checkpoint_path)."""
    path = checkpoint_path(path, key)
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except Exception as e:  # corrupt, truncated, pickled code, or not a torch file at all
        reason = str(e).splitlines()[0][:200] if str(e) else type(e).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read ({reason}); "
                              f"expected a file written by commformer") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is not a commformer checkpoint "
                              f"(format {found!r}; expected {FORMAT!r})")
    return state
