"""Number formatting and the fixed bootstrap settings shared by the evaluate, report and benchmark tables."""
from __future__ import annotations

from pathlib import Path
from typing import Sequence

# bootstrap resamples and the bootstrap's own seed (fixed, so a table is reproducible)
N_BOOT = 2000
BOOT_SEED = 0
CONFIDENCE = 0.95


def fmt(x: float) -> str:
    """A number with 4 significant digits."""
    return f"{x:.4g}"


def fmt_ci(ci: Sequence[float]) -> str:
    """[low, high] with 4 significant digits each."""
    return f"[{fmt(ci[0])}, {fmt(ci[1])}]"


def md_table(header: list[str], rows: list[list[str]]) -> str:
    """A markdown table (no trailing newline)."""
    out = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    out += ["| " + " | ".join(r) + " |" for r in rows]
    return "\n".join(out)


def write_text(path: Path, text: str) -> None:
    """Write text, creating the parent folders; UsageError naming the file when it cannot be written (a folder or a
    file in the way, no permission, a full disk)."""
    from commformer.errors import UsageError

    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        path.write_text(text)
    except OSError as e:
        raise UsageError(f"{str(path)!r} cannot be written: {e.strerror or e}") from None
