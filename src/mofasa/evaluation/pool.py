"""Run jobs in worker processes with a time limit, so a crash, hang or segfault costs one job.

`IsolatedPool` keeps ``workers`` long-lived processes. Each job is sent to an idle worker over a
pipe; when a job exceeds its time limit the worker is killed (SIGKILL) and replaced, and when a
worker dies (segfault, ``os._exit``, out of memory) the job is reported as crashed with the exit
signal. Either way the job's outcome is a `JobResult` with ``status`` "timeout" or "crash" and
the next job goes on. Workers start from a forkserver that has the evaluation modules imported
already, so a replacement is ready in a fraction of a second.

A job is ``(key, function, args)`` or ``(key, function, args, timeout)``; ``function`` must be
importable by name (a module-level function). An exception it raises is reported as status
"error" with the traceback's last line, except `EvaluationSetupError`, which is re-raised in
the parent: a broken install must stop the run loudly, never count as an invalid structure.
"""

from __future__ import annotations

import contextlib
import multiprocessing as mp
import os
import signal
import time
import traceback
from collections import deque
from collections.abc import Callable, Iterable, Iterator
from dataclasses import dataclass
from multiprocessing.connection import wait
from typing import Any

__all__ = ["IsolatedPool", "JobResult"]

_PRELOAD = ["mofasa.evaluation._preload"]
_THREAD_VARS = ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")


@dataclass
class JobResult:
    """Outcome of one job: status is "ok", "error", "timeout" or "crash"."""

    key: Any
    status: str
    value: Any = None
    error: str | None = None
    seconds: float = 0.0


def _worker_main(conn: Any, threads: int) -> None:
    """Loop: receive (function, args), send ("ok", value) or ("error", message, fatal)."""
    signal.signal(signal.SIGINT, signal.SIG_IGN)  # the parent handles Ctrl-C
    try:
        import torch

        torch.set_num_threads(threads)
    except ImportError:  # pragma: no cover
        pass
    from mofasa.evaluation.compat import EvaluationSetupError

    while True:
        try:
            job = conn.recv()
        except (EOFError, OSError):
            return
        if job is None:
            return
        function, args = job
        try:
            conn.send(("ok", function(*args)))
        except EvaluationSetupError as exc:
            conn.send(("error", f"{type(exc).__name__}: {exc}", True))
        except Exception as exc:
            tb = traceback.format_exception_only(type(exc), exc)[-1].strip()
            conn.send(("error", tb[:500], False))


def _context() -> mp.context.BaseContext:
    methods = mp.get_all_start_methods()
    if "forkserver" in methods:
        ctx = mp.get_context("forkserver")
        ctx.set_forkserver_preload(_PRELOAD)
        return ctx
    return mp.get_context("spawn")  # pragma: no cover (not on Linux)


class _Worker:
    def __init__(self, ctx: mp.context.BaseContext, threads: int) -> None:
        self.conn, child = ctx.Pipe()
        self.proc = ctx.Process(target=_worker_main, args=(child, threads), daemon=True)
        self.proc.start()
        child.close()
        self.job: tuple[Any, float, float, float] | None = None  # key, start, deadline, limit

    def send(self, key: Any, function: Callable, args: tuple, timeout: float) -> None:
        start = time.monotonic()
        self.job = (key, start, start + timeout, timeout)
        self.conn.send((function, args))

    def kill(self) -> None:
        if self.proc.is_alive():
            self.proc.kill()
        self.proc.join(5)
        self.conn.close()

    def stop(self) -> None:
        with contextlib.suppress(OSError):
            self.conn.send(None)
        self.proc.join(2)
        self.kill()


def _describe_exit(code: int | None) -> str:
    if code is None:
        return "worker died"
    if code < 0:
        try:
            return f"worker killed by signal {signal.Signals(-code).name}"
        except ValueError:
            return f"worker killed by signal {-code}"
    return f"worker exited with code {code}"


def _abort(message: str) -> Exception:
    from mofasa.evaluation.compat import EvaluationSetupError

    return EvaluationSetupError(f"in a worker: {message}")


class IsolatedPool:
    """A pool of worker processes; each job runs with a time limit and crash isolation.

    Args:
        workers: number of processes (>= 1).
        timeout: seconds one job may take before its worker is killed.
        threads: torch / OpenMP threads per worker.
    """

    def __init__(self, workers: int = 1, timeout: float = 300.0, threads: int = 1) -> None:
        if workers < 1:
            raise ValueError("workers must be >= 1")
        self.workers = workers
        self.timeout = float(timeout)
        self.threads = threads
        self._ctx = _context()
        self._pool: list[_Worker] = []
        self.restarts = 0

    def __enter__(self) -> IsolatedPool:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        for w in self._pool:
            if w.job is None:
                w.stop()
            else:
                w.kill()
        self._pool = []

    def _start(self) -> _Worker:
        # BLAS / OpenMP thread counts are read when numpy and torch load, i.e. in the forkserver
        # the first worker start launches: set them for that moment only. (Unset, OpenBLAS
        # spin-waits on 3x3 solves and costs ~20% of a relaxation step on a busy machine.)
        saved = {k: os.environ.get(k) for k in _THREAD_VARS}
        os.environ.update(dict.fromkeys(_THREAD_VARS, str(self.threads)))
        try:
            return _Worker(self._ctx, self.threads)
        finally:
            for k, v in saved.items():
                if v is None:
                    os.environ.pop(k, None)
                else:
                    os.environ[k] = v

    def _replace(self, w: _Worker) -> None:
        w.kill()
        self._pool[self._pool.index(w)] = self._start()
        self.restarts += 1

    def imap(self, jobs: Iterable[tuple] | deque) -> Iterator[JobResult]:
        """Run ``(key, function, args[, timeout])`` jobs; yield results in completion order.

        ``jobs`` may be a ``collections.deque`` that the caller appends to while it consumes
        results (follow-up jobs, such as checks of a relaxed structure); the iteration ends when
        the deque is empty and no job is running.

        Raises:
            EvaluationSetupError: a job reported a broken installation.
        """
        if isinstance(jobs, deque):
            queue, backlog, exhausted = iter(()), jobs, True
        else:
            queue, backlog, exhausted = iter(jobs), deque(), False
        while len(self._pool) < self.workers:
            self._pool.append(self._start())
        while True:
            for w in list(self._pool):
                if w.job is not None:
                    continue
                if not backlog and not exhausted:
                    nxt = next(queue, None)
                    if nxt is None:
                        exhausted = True
                    else:
                        backlog.append(nxt)
                if backlog:
                    job = backlog.popleft()
                    key, function, args = job[:3]
                    limit = job[3] if len(job) > 3 and job[3] is not None else self.timeout
                    try:
                        w.send(key, function, args, limit)
                    except OSError:  # the worker died while idle
                        self._replace(w)
                        backlog.appendleft(job)
            busy = [w for w in self._pool if w.job is not None]
            if not busy:
                return
            now = time.monotonic()
            soonest = min(w.job[2] for w in busy)
            ready = wait(
                [w.conn for w in busy] + [w.proc.sentinel for w in busy],
                timeout=max(0.0, soonest - now),
            )
            now = time.monotonic()
            for w in busy:
                key, start, deadline, limit = w.job
                result = None
                if w.conn in ready or w.proc.sentinel in ready:
                    try:
                        if w.conn.poll():
                            message = w.conn.recv()
                            if message[0] == "ok":
                                result = JobResult(key, "ok", message[1], seconds=now - start)
                            elif message[2]:
                                w.job = None
                                raise _abort(message[1])
                            else:
                                result = JobResult(key, "error", None, message[1], now - start)
                            w.job = None
                    except (EOFError, OSError):
                        pass
                    if result is None and not w.proc.is_alive():
                        w.proc.join(1)
                        result = JobResult(
                            key, "crash", None, _describe_exit(w.proc.exitcode), now - start
                        )
                        self._replace(w)
                elif now >= deadline:
                    result = JobResult(
                        key, "timeout", None, f"timed out after {limit:g} s", now - start
                    )
                    self._replace(w)
                if result is not None:
                    yield result
