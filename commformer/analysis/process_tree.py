"""Memory of a process tree (Linux /proc): the pids below a process and their summed PSS (or RSS where
smaps_rollup cannot be read), sampled in a thread while a benchmark's subprocess runs."""
from __future__ import annotations

import threading
from pathlib import Path

# seconds between two memory samples of a running process tree
MEMORY_SAMPLE_S = 0.25


def _children(pid: int) -> list[int]:
    """Direct children of pid (from /proc/<pid>/task/*/children, else by scanning PPid)."""
    kids: list[int] = []
    task = Path(f"/proc/{pid}/task")
    try:
        for t in task.iterdir():
            text = (t / "children").read_text()
            kids += [int(x) for x in text.split()]
        return kids
    except OSError:
        pass
    for p in Path("/proc").iterdir():
        if p.name.isdigit():
            try:
                for line in (p / "status").read_text().splitlines():
                    if line.startswith("PPid:") and int(line.split()[1]) == pid:
                        kids.append(int(p.name))
                        break
            except OSError:
                continue
    return kids


def tree_pids(pid: int) -> list[int]:
    """pid and all its descendants alive now."""
    out, todo = [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += _children(p)
    return out


def process_memory_kb(pid: int) -> tuple[int, str] | None:
    """(PSS kB, "PSS") from /proc/<pid>/smaps_rollup, else (RSS kB, "RSS") from /proc/<pid>/status; None if gone."""
    try:
        for line in Path(f"/proc/{pid}/smaps_rollup").read_text().splitlines():
            if line.startswith("Pss:"):
                return int(line.split()[1]), "PSS"
    except OSError:
        pass
    try:
        for line in Path(f"/proc/{pid}/status").read_text().splitlines():
            if line.startswith("VmRSS:"):
                return int(line.split()[1]), "RSS"
    except OSError:
        return None
    return None


class TreeMemorySampler:
    """Samples the summed memory of a process tree in a thread; peak_mb and kind after stop()."""

    def __init__(self, pid: int, interval_s: float = MEMORY_SAMPLE_S) -> None:
        self.pid, self.interval_s = pid, interval_s
        self.peak_kb, self.kinds = 0, set()
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, daemon=True)

    def _run(self) -> None:
        while not self._stop.is_set():
            total = 0
            for p in tree_pids(self.pid):
                m = process_memory_kb(p)
                if m is not None:
                    total += m[0]
                    self.kinds.add(m[1])
            self.peak_kb = max(self.peak_kb, total)
            self._stop.wait(self.interval_s)

    def start(self) -> "TreeMemorySampler":
        self._thread.start()
        return self

    def stop(self) -> None:
        self._stop.set()
        self._thread.join()

    @property
    def peak_mb(self) -> float:
        return self.peak_kb / 1024

    @property
    def kind(self) -> str:
        return "RSS" if "RSS" in self.kinds or not self.kinds else "PSS"
