"""Checkpoints: atomic writes, weights-only loads, and one clear error for a corrupt or foreign file.

A checkpoint is a dict of tensors, numbers, strings and lists (so torch.load(weights_only=True) accepts it):
format, config (YAML text), counters, model / graph / optimiser / value-normaliser states, RNG states, and the env's
state when the env can save it.
"""
from __future__ import annotations

import io
import os
import pickle
import tempfile
import zipfile
from pathlib import Path
from typing import Any

import torch

from commformer.errors import UserError

FORMAT = "commformer-checkpoint-v1"


class CheckpointError(UserError, ValueError):
    """A checkpoint that cannot be used; the message is one line naming the file and why."""


def non_finite(state: Any, prefix: str = "") -> str | None:
    """The dotted name of the first floating-point tensor in a nested dict/list that holds NaN or inf, else None."""
    if isinstance(state, torch.Tensor):
        return prefix or "tensor" if state.is_floating_point() and not bool(torch.isfinite(state).all()) else None
    if isinstance(state, dict):
        items = state.items()
    elif isinstance(state, (list, tuple)):
        items = enumerate(state)
    else:
        return None
    for key, value in items:
        found = non_finite(value, f"{prefix}.{key}" if prefix else str(key))
        if found is not None:
            return found
    return None


def remove_stale_temps(folder: str | os.PathLike) -> list[Path]:
    """Delete the temp files a killed checkpoint write left in `folder` (<name>.pt.<random>.tmp); returns them."""
    folder = Path(folder)
    stale = sorted(folder.glob("*.pt.*.tmp")) if folder.is_dir() else []
    for tmp in stale:
        tmp.unlink(missing_ok=True)
    return stale


def save_checkpoint(path: str | os.PathLike, state: dict[str, Any]) -> Path:
    """Write `state` (plus the format tag) to `path` atomically: serialised in memory, written to a temp file in the
    same folder, flushed, then renamed over `path`, so `path` always holds a complete checkpoint. A write that fails
    (a full disk, an unwritable folder) raises CheckpointError naming the file and the OS's reason; the previous file
    at `path` is untouched and the temp file removed."""
    path = Path(path)
    buffer = io.BytesIO()
    torch.save({"format": FORMAT, **state}, buffer)
    tmp: str | None = None
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        fd, tmp = tempfile.mkstemp(prefix=path.name + ".", suffix=".tmp", dir=path.parent)
        with os.fdopen(fd, "wb") as f:
            f.write(buffer.getbuffer())
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except OSError as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        reason = e.strerror or type(e).__name__
        kept = "the previous checkpoint there is kept" if path.is_file() else "no checkpoint was written"
        raise CheckpointError(f"cannot write checkpoint {str(path)!r}: {reason} (errno {e.errno}); {kept}") from None
    except BaseException:
        if tmp is not None:
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
    raise CheckpointError(f"{key}={str(arg)!r}: no such checkpoint (no such file, nor a run folder with "
                          "checkpoints/last.pt; give a .pt file or a run folder)")


def load_checkpoint(path: str | os.PathLike, map_location: str | torch.device = "cpu",
                    key: str = "resume") -> dict[str, Any]:
    """Load a checkpoint written by save_checkpoint (weights only: no code runs from the file); `path` may be a run
    folder (see checkpoint_path)."""
    path = checkpoint_path(path, key)
    if not zipfile.is_zipfile(path):
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: not a torch checkpoint archive (damaged, "
                              "truncated or another kind of file); expected a .pt file written by commformer")
    try:
        state = torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError:
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: it holds pickled Python objects, which are "
                              "never loaded (no code runs from a checkpoint); expected a file written by commformer") from None
    except Exception as e:  # a corrupt or truncated archive
        raise CheckpointError(f"checkpoint {str(path)!r} cannot be read: the file is damaged or truncated "
                              f"({type(e).__name__}); expected a file written by commformer") from None
    if not isinstance(state, dict) or state.get("format") != FORMAT:
        found = state.get("format") if isinstance(state, dict) else type(state).__name__
        raise CheckpointError(f"checkpoint {str(path)!r} is not a commformer checkpoint "
                              f"(format {found!r}; expected {FORMAT!r})")
    return state
