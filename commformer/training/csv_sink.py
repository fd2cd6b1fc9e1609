"""metrics.csv: one row per iteration, with a header that grows when a new key appears."""
from __future__ import annotations

import csv
import os
from pathlib import Path
from typing import Any, Mapping


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
