"""Worker processes shared by the env adapters that run their env copies in other processes (envs.pettingzoo,
envs.smacv2).

B env copies are split into W contiguous chunks, chunks[w] = (first copy, number of copies), one per worker process.
Main process and worker w talk over one pipe with tuples:
- main -> worker: (cmd, arg), e.g. ("reset", seed) or ("step", actions); ("close", None) ends the worker (no reply).
- worker -> main: (status, payload), once after the worker built its copies and once per command. status "ok"
  carries the result; any other status ("error" with a traceback text, or an adapter's own kind) is a failure that
  the main process raises once it has read every worker's reply.
serve() is the worker side of that protocol, WorkerPool the main side.
"""
from __future__ import annotations

import multiprocessing as mp
import traceback
from multiprocessing.context import BaseContext
from typing import Any, Callable, Sequence

# Seconds close() waits for a worker before terminating it (and receive() for a worker whose pipe broke).
CLOSE_TIMEOUT_S = 5.0


# ---------------------------------------------------------------------------------------------------------------------
# Both sides
# ---------------------------------------------------------------------------------------------------------------------

def chunk_sizes(num_envs: int, workers: int) -> list[tuple[int, int]]:
    """(first copy, number of copies) per worker: contiguous chunks whose sizes differ by at most one, the larger
    ones first; e.g. chunk_sizes(5, 2) == [(0, 3), (3, 2)]."""
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

    Subclasses set `label` (the adapter's name in error messages), `unit` (what a copy is called there: "envs",
    "games") and `close_timeout_s`, and may override failure() to raise their own exception for a status.
    """

    label = "worker"
    unit = "envs"
    close_timeout_s = CLOSE_TIMEOUT_S

    def __init__(self, chunks: list[tuple[int, int]]) -> None:
        self.chunks = chunks
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
        """The exception for worker w's failed reply: RuntimeError naming the worker, its copies and the payload."""
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
