"""Reading what wandb recorded, with wandb's own reader: the records of a run's .wandb transaction log as
`wandb leet inspect --json` decodes them (one JSON object per record: {"num", "type", <type>: {...}}), and an
isolated wandb home for tests (no user settings, no API key, no network calls)."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Any

WANDB_HOME_VARS = ("WANDB_CONFIG_DIR", "WANDB_CACHE_DIR", "WANDB_DATA_DIR", "WANDB_ARTIFACT_DIR")


def wandb_env(home: Path, **extra: str) -> dict[str, str]:
    """os.environ for a subprocess with wandb's folders under `home`, no API key or netrc, no WANDB_MODE/DIR."""
    env = {k: v for k, v in os.environ.items()
           if k not in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_BASE_URL")}
    env.update({var: str(home) for var in WANDB_HOME_VARS})
    env["NETRC"] = str(home / "netrc")  # no stored key
    env.update(extra)
    return env


def isolate_wandb(monkeypatch, home: Path) -> None:
    """The same isolation for wandb used inside the test process."""
    for var in WANDB_HOME_VARS:
        monkeypatch.setenv(var, str(home))
    monkeypatch.setenv("NETRC", str(home / "netrc"))
    for var in ("WANDB_API_KEY", "WANDB_MODE", "WANDB_DIR", "WANDB_BASE_URL"):
        monkeypatch.delenv(var, raising=False)


def offline_runs(run_dir: Path) -> list[Path]:
    """The offline wandb run folders under a run folder, oldest first."""
    return sorted((run_dir / "wandb").glob("offline-run-*"))


def wandb_records(run_folder: Path, timeout: float = 60.0) -> list[dict[str, Any]]:
    """The records of the .wandb file in a wandb run folder, read by wandb's reader once the log holds its exit
    record (wandb's service finishes the file shortly after finish() returns)."""
    files = list(run_folder.glob("run-*.wandb"))
    assert len(files) == 1, f"expected one .wandb file in {run_folder}, found {files}"
    deadline = time.monotonic() + timeout
    while True:
        out = subprocess.run([sys.executable, "-m", "wandb", "leet", "inspect", "--json", str(files[0])],
                             capture_output=True, text=True, stdin=subprocess.DEVNULL, timeout=timeout)
        records = [json.loads(line) for line in out.stdout.splitlines() if line.startswith("{")]
        if any(r["type"] == "exit" for r in records) or time.monotonic() > deadline:
            assert records, f"wandb leet inspect read no record: {out.stderr[-2000:]}"
            return records
        time.sleep(0.5)


def of_type(records: list[dict[str, Any]], kind: str) -> list[dict[str, Any]]:
    """The payloads of the records of one type ("run", "metric", "history", "summary", "exit", ...)."""
    return [r[kind] for r in records if r["type"] == kind]
