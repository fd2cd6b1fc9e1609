"""Worker processes shared by the env adapters that run their env copies in other processes (envs.pettingzoo,
envs.smacv2).

B env copies are split into W contiguous chunks, chunks[w] = (first copy, number of copies), one per worker process.
Main process and worker w talk over one pipe with tuples:
- main -> worker: (cmd, arg), e.g. ("reset", seed) or ("step", actions); ("close", None) ends the worker (no reply).
- worker -> main: (status, payload), once after the worker built its copies and once per command. status "ok"
  carries the result; "unavailable" (one line: the env cannot start here, see unavailable_or_error) is raised as
  envs.core.EnvUnavailableError; any other status ("error" with a traceback text) is a failure that the main process
  raises once it has read every worker's reply.
serve() is the worker side of that protocol, WorkerPool the main side.

Shared-memory transport (SharedRowsPool, used by envs.pettingzoo): the outputs of every copy live in one array
[B,...] per field in shared memory, and the actions in a shared [B,N] array; a worker's group of copies writes its own
rows and reads its own actions, so the pipes carry only the commands and empty replies. A share of the copies may be
stepped by the main process itself while the workers step theirs.
"""
from __future__ import annotations

import multiprocessing as mp
import signal
import threading
import traceback
from multiprocessing.context import BaseContext
from typing import Any, Callable, Mapping, Protocol, Sequence

import numpy as np

from envs.core import EnvUnavailableError

# Seconds close() waits for a worker before terminating it (and receive() for a worker whose pipe broke).
CLOSE_TIMEOUT_S = 5.0

# name -> (shape, numpy dtype) of the arrays of a SharedRowsPool (first axis: the B copies).
ArraySpecs = Mapping[str, tuple[tuple[int, ...], type]]


# ---------------------------------------------------------------------------------------------------------------------
# Both sides
# ---------------------------------------------------------------------------------------------------------------------

def worker_chunks(num_envs: int, workers: int) -> list[tuple[int, int]]:
    """(first copy, number of copies) per worker: contiguous chunks whose sizes differ by at most one, the larger
    ones first; e.g. worker_chunks(5, 2) == [(0, 3), (3, 2)]."""
    base, extra = divmod(num_envs, workers)
    sizes = [base + (w < extra) for w in range(workers)]
    return [(sum(sizes[:w]), sizes[w]) for w in range(workers)]


def start_context(forkserver_preload: Sequence[str] | None = None) -> BaseContext:
    """The multiprocessing context for workers: with `forkserver_preload` (module names), "forkserver" preloading
    those modules (fast starts after the first, the parent's torch state is never forked) where the platform has it;
    otherwise "spawn". Either way a script that starts workers needs an ``if __name__ == "__main__":`` guard, and the
    main program cannot be read from stdin."""
    if forkserver_preload is None or "forkserver" not in mp.get_all_start_methods():
        return mp.get_context("spawn")
    ctx = mp.get_context("forkserver")
    ctx.set_forkserver_preload(list(forkserver_preload))
    return ctx


# ---------------------------------------------------------------------------------------------------------------------
# Worker side
# ---------------------------------------------------------------------------------------------------------------------

def error_text(cmd: str, e: BaseException) -> str:
    """One line naming the command and the exception, then the worker's traceback."""
    return f"{cmd}(): {type(e).__name__}: {e}\n" + "".join(traceback.format_exception(e))


def error_reply(cmd: str, e: Exception) -> tuple[str, str]:
    """The reply to a command (or "start") that raised `e`: ("error", error_text)."""
    return "error", error_text(cmd, e)


def unavailable_or_error(cmd: str, e: Exception) -> tuple[str, str]:
    """A worker's reply to a command (or "start") that raised `e`: ("unavailable", one line) when the env cannot
    start (EnvUnavailableError), else ("error", the command, the exception and the traceback)."""
    if isinstance(e, EnvUnavailableError):
        return "unavailable", str(e)
    return error_reply(cmd, e)


def _exit_on_sigterm(signum: int, frame: Any) -> None:
    raise SystemExit(0)


def exit_on_sigterm() -> None:
    """Make SIGTERM (what multiprocessing sends daemonic workers at exit) raise SystemExit in this worker, so serve()
    still closes its object; only from the main thread (a worker run in a thread, as in tests, keeps the default)."""
    if threading.current_thread() is threading.main_thread():
        signal.signal(signal.SIGTERM, _exit_on_sigterm)


def serve(conn: Any, build: Callable[[], Any], hello: Callable[[Any], Any] | None = None,
          reply_to_error: Callable[[str, Exception], tuple[str, Any]] = error_reply) -> None:
    """The worker loop on pipe end `conn`.

    build() makes the worker's object (its env copies): it answers handle(cmd, arg) -> payload and close(). The
    worker replies ("ok", hello(obj)) once built (("ok", None) without `hello`), then ("ok", obj.handle(cmd, arg))
    per command until ("close", None) or a broken pipe. A command or build() that raises is answered with
    reply_to_error(cmd, e) (cmd "start" for build()), and the loop goes on after a failed command. The object is
    closed and the pipe end too whatever ends the loop (SystemExit included).
    """
    obj = None
    if threading.current_thread() is threading.main_thread():
        # Ctrl-C reaches the whole process group: the main process stops the run with a checkpoint and then closes
        # its workers, so a worker must not die of the same SIGINT first
        signal.signal(signal.SIGINT, signal.SIG_IGN)
    try:
        obj = build()
        conn.send(("ok", None if hello is None else hello(obj)))
        while True:
            cmd, arg = conn.recv()
            if cmd == "close":
                break
            try:
                conn.send(("ok", obj.handle(cmd, arg)))
            except Exception as e:  # sent to the main process, which raises it
                conn.send(reply_to_error(cmd, e))
    except (EOFError, KeyboardInterrupt, BrokenPipeError):
        pass
    except Exception as e:  # construction failed
        conn.send(reply_to_error("start", e))
    finally:
        if obj is not None:
            obj.close()
        conn.close()


# ---------------------------------------------------------------------------------------------------------------------
# Main side
# ---------------------------------------------------------------------------------------------------------------------

class WorkerPool:
    """W worker processes, worker w owning copies chunks[w] = (first, n); one pipe end per worker in `conns`, the
    processes in `procs` (both empty once closed).

    label: the adapter's name in error messages | unit: what a copy is called there ("envs", "games") |
    close_timeout_s: how long close() waits for a worker before terminating it.
    """

    def __init__(self, chunks: list[tuple[int, int]], label: str = "worker", unit: str = "envs",
                 close_timeout_s: float = CLOSE_TIMEOUT_S) -> None:
        self.chunks = chunks
        self.label, self.unit, self.close_timeout_s = label, unit, close_timeout_s
        self.conns: list[Any] = []
        self.procs: list[Any] = []

    def start(self, ctx: BaseContext, target: Callable[..., None], worker_args: Sequence[tuple],
              name: str | None = None) -> list[Any]:
        """Start one daemon process per chunk running target(conn, *worker_args[w]) (named f"{name}-{w}" when `name`
        is given), and return the payloads of their first replies in worker order. When a worker fails to start,
        every worker is closed and its failure raised (see gather())."""
        try:
            for w, args in enumerate(worker_args):
                parent, child = ctx.Pipe()
                proc = ctx.Process(target=target, args=(child, *args), daemon=True,
                                   name=None if name is None else f"{name}-{w}")
                proc.start()
                child.close()
                self.conns.append(parent)
                self.procs.append(proc)
            return self.gather()
        except BaseException:
            self.close()
            raise

    def call(self, cmd: str, args: Sequence[Any]) -> list[Any]:
        """Send (cmd, args[w]) to every worker w, then return their payloads in worker order (see gather())."""
        for conn, arg in zip(self.conns, args):
            conn.send((cmd, arg))
        return self.gather()

    def gather(self) -> list[Any]:
        """One reply per worker -> their payloads in worker order; after reading all of them, raise failure() for
        the first worker whose status is not "ok"."""
        replies = [self.receive(w) for w in range(len(self.conns))]
        for w, (status, payload) in enumerate(replies):
            if status != "ok":
                raise self.failure(w, status, payload)
        return [payload for _, payload in replies]

    def failure(self, w: int, status: str, payload: Any) -> Exception:
        """The exception for worker w's failed reply: EnvUnavailableError (the worker's one line) for status
        "unavailable", else RuntimeError naming the worker, its copies and the payload."""
        if status == "unavailable":
            return EnvUnavailableError(payload)
        first, n = self.chunks[w]
        return RuntimeError(f"{self.label} worker {w} ({self.unit} {first}..{first + n - 1}) failed: {payload}")

    def receive(self, w: int) -> tuple[str, Any]:
        """Worker w's next reply; ("error", exit code) when its process is gone."""
        try:
            return self.conns[w].recv()
        except (EOFError, ConnectionError):
            self.procs[w].join(self.close_timeout_s)
            return "error", f"the process exited (exit code {self.procs[w].exitcode})"

    def close(self) -> None:
        """Ask every worker to stop; terminate the ones still running after close_timeout_s. Safe to call twice."""
        for conn in self.conns:
            try:
                conn.send(("close", None))
            except (BrokenPipeError, OSError):
                pass
        for conn, proc in zip(self.conns, self.procs):
            proc.join(self.close_timeout_s)
            if proc.is_alive():
                proc.terminate()
                proc.join()
            conn.close()
        self.conns, self.procs = [], []


# ---------------------------------------------------------------------------------------------------------------------
# Shared-memory transport: each worker writes its rows of shared output arrays
# ---------------------------------------------------------------------------------------------------------------------

class RowGroup(Protocol):
    """Copies first..first+n-1 of an env, writing their outputs into rows of arrays (FIELD -> [n,...])."""

    def reset(self, seed: int | None, out: dict[str, np.ndarray]) -> None: ...

    def step(self, actions: np.ndarray, out: dict[str, np.ndarray]) -> None: ...

    def close(self) -> None: ...


def shared_arrays(ctx: Any, specs: ArraySpecs) -> dict[str, Any]:
    """One zeroed shared-memory block (multiprocessing RawArray) per entry of `specs`."""
    return {k: ctx.RawArray("B", max(int(np.prod(shape)) * np.dtype(dtype).itemsize, 1))
            for k, (shape, dtype) in specs.items()}


def numpy_views(raw: Mapping[str, Any], specs: ArraySpecs) -> dict[str, np.ndarray]:
    """Numpy arrays of the given shapes and dtypes over the shared blocks (no copy)."""
    return {k: np.frombuffer(raw[k], dtype=np.uint8)[:int(np.prod(shape)) * np.dtype(dtype).itemsize]
            .view(dtype).reshape(shape) for k, (shape, dtype) in specs.items()}


class SharedRows:
    """A worker's group build(first, n) over copies first..first+n-1, writing its rows of the shared output arrays
    and reading its actions from its rows of the shared "actions" array (`raw`, laid out by `specs`)."""

    def __init__(self, build: Callable[[int, int], RowGroup], first: int, n: int, raw: dict[str, Any],
                 specs: ArraySpecs) -> None:
        views = {k: v[first:first + n] for k, v in numpy_views(raw, specs).items()}
        self.actions = views.pop("actions")
        self.views = views
        self.group = build(first, n)

    def handle(self, cmd: str, arg: Any) -> None:
        """("reset", seed) or ("step", None): the outputs go to the shared rows (the reply carries nothing)."""
        if cmd == "reset":
            self.group.reset(arg, self.views)
        else:
            self.group.step(self.actions.copy(), self.views)

    def close(self) -> None:
        self.group.close()


def shared_rows_main(conn: Any, build: Callable[[int, int], RowGroup], first: int, n: int, raw: dict[str, Any],
                     specs: ArraySpecs) -> None:
    """Worker loop (serve): build SharedRows over copies first..first+n-1, then answer ("reset", seed) /
    ("step", None) (actions read from the shared "actions" rows) / ("close", None) with ("ok", None) once the shared
    output rows are written, or ("error", message with traceback), until closed or the pipe breaks."""
    serve(conn, lambda: SharedRows(build, first, n, raw, specs))


class SharedRowsPool(WorkerPool):
    """W processes, worker w holding the group build(*chunks[w]), and optionally a share of copies `local` =
    (first, n) after theirs that this process steps itself (build(*local)) while the workers step theirs.

    specs: the shared arrays [B,...]: every output field, plus "actions" [B,N] int64 (`arrays`). reset() / step()
    send a command to all workers, step the local share, then wait for all workers (a worker's failure is raised
    before one of the local share) and return a copy of the outputs. `build` must pickle (it travels to the
    workers); `preload`: modules the "forkserver" imports once (see start_context).
    """

    def __init__(self, build: Callable[[int, int], RowGroup], specs: ArraySpecs, chunks: list[tuple[int, int]],
                 local: tuple[int, int] | None = None, label: str = "worker", unit: str = "envs",
                 preload: Sequence[str] | None = None) -> None:
        super().__init__(chunks, label=label, unit=unit)
        ctx = start_context(preload)
        raw = shared_arrays(ctx, specs)
        self.arrays = numpy_views(raw, specs)
        self.outs = {k: v for k, v in self.arrays.items() if k != "actions"}
        self.n_pooled = sum(n for _, n in chunks)
        self.local: RowGroup | None = None
        self.local_views: dict[str, np.ndarray] = {}
        if local is not None and local[1] > 0:
            first, n = local
            self.local = build(first, n)
            self.local_views = {k: v[first:first + n] for k, v in self.outs.items()}
        # every worker built its copies (or raise its error)
        try:
            self.start(ctx, shared_rows_main, [(build, first, n, raw, specs) for first, n in chunks])
        except BaseException:
            self.close_local()
            raise

    def outputs(self) -> dict[str, np.ndarray]:
        """A copy of the shared outputs (every field but "actions" -> [B,...])."""
        return {k: v.copy() for k, v in self.outs.items()}

    def run(self, cmd: str, arg: Any, local: Callable[[], None]) -> dict[str, np.ndarray]:
        """Send (cmd, arg) to every worker, run local() meanwhile, then gather the workers (raising the first worker
        failure, else local()'s exception) and return the outputs."""
        for conn in self.conns:
            conn.send((cmd, arg))
        error: Exception | None = None
        if self.local is not None:
            try:
                local()
            except Exception as e:  # raised after the workers' replies are read (theirs first)
                error = e
        self.gather()
        if error is not None:
            raise error
        return self.outputs()

    def reset(self, seed: int | None) -> dict[str, np.ndarray]:
        return self.run("reset", seed, lambda: self.local.reset(seed, self.local_views))

    def step(self, actions: np.ndarray) -> dict[str, np.ndarray]:
        """actions [B,N] int64 -> the outputs of all B copies."""
        n = self.n_pooled
        self.arrays["actions"][:n] = actions[:n]
        return self.run("step", None, lambda: self.local.step(actions[n:], self.local_views))

    def close_local(self) -> None:
        if self.local is not None:
            self.local.close()
            self.local = None

    def close(self) -> None:
        """Stop the workers and close the local share; safe to call twice."""
        try:
            super().close()
        finally:
            self.close_local()
