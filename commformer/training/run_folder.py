"""A run folder's first files: the resolved config and the code's git revision (the rest of the folder is written
by the logger, the graph history and the checkpoints)."""
from __future__ import annotations

import subprocess
from pathlib import Path

from commformer.errors import UserError


class RunFolderError(UserError):
    """The run folder cannot be written."""


def git_revision() -> str:
    """The commit of this checkout (HEAD), or "unknown" outside a git checkout."""
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], capture_output=True, text=True, timeout=5,
                             cwd=Path(__file__).resolve().parent)
        return out.stdout.strip() or "unknown"
    except (OSError, subprocess.SubprocessError):
        return "unknown"


def check_run_folder(run_dir: Path) -> None:
    """RunFolderError (one line) when `run_dir` cannot be made or written: it, or the nearest folder above it that
    exists, is a file, or that folder is not writable. Nothing is created."""
    import os

    existing = Path(run_dir)
    while not existing.exists() and existing != existing.parent:
        existing = existing.parent
    if not existing.is_dir():
        why = f"{str(existing)!r} is a file"
    elif not os.access(existing, os.W_OK | os.X_OK):
        why = f"no permission to write in {str(existing)!r}"
    else:
        return
    raise RunFolderError(f"run folder {str(run_dir)!r} cannot be written: {why} (give a writable run_dir or "
                         "hydra.run.dir)")


def start_run_folder(run_dir: Path, config_yaml: str) -> None:
    """Create `run_dir` with config.yaml and git_revision.txt; RunFolderError (one line) when it cannot be written."""
    try:
        run_dir.mkdir(parents=True, exist_ok=True)
        (run_dir / "config.yaml").write_text(config_yaml)
        (run_dir / "git_revision.txt").write_text(git_revision() + "\n")
    except OSError as e:
        raise RunFolderError(f"run folder {str(run_dir)!r} cannot be written: {e.strerror or e} "
                             "(give a writable run_dir or hydra.run.dir)") from None
