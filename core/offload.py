"""Blocking calls (the store's) run off the event loop, on a thread pool sized for concurrent requests.

The store ports are synchronous: SQLite, DynamoDB (botocore), a Firestore or Cosmos client all block the
calling thread. One instance of the local server, Cloud Run or Azure Functions serves many requests in one
event loop, so a store call made on the loop stalls every other request for its duration. ``Offload.call``
runs a synchronous step (a reservation, a settlement and its usage record, a lookup that missed the
per-process caches) on a dedicated pool instead: asyncio's default executor has ``min(32, cpus + 4)``
threads, which would cap a 20 ms store at a few hundred calls a second on a small instance.

Steps answered from the per-process caches stay on the loop (a thread hop costs more than they do); the
call sites check the caches first. Likewise a kind of step whose recent runs took less than ``inline_below_s``
(an in-memory store: microseconds) runs on the loop: handing it to a thread would hold the loop longer than
running it (a hop costs tens of microseconds of the loop's time, more in latency). Each kind's duration is
followed (fast runs count at once, slow ones by a moving average), so a store that turns slow is moved off the
loop within a call or two, and a local store's occasional slow run does not move it. A step, once started,
always runs to its end even if the request is cancelled meanwhile (a write must not be half-known): the
cancellation is delivered after it.
"""

from __future__ import annotations

import asyncio
import contextvars
import functools
import math
import time
from collections.abc import Callable
from concurrent.futures import ThreadPoolExecutor
from typing import Any, TypeVar

T = TypeVar("T")


class Offload:
    """Runs blocking steps on ``threads`` threads (0: on the caller's thread, for stores that never block)."""

    def __init__(self, threads: int, inline_below_s: float = 0.0) -> None:
        if threads < 0 or inline_below_s < 0:
            raise ValueError("threads and inline_below_s must be 0 or more")
        self.threads = threads
        self.inline_below_s = inline_below_s
        self._pool: ThreadPoolExecutor | None = None
        # Kind of step -> moving average of its duration (seconds); unknown kinds are assumed slow.
        self._took: dict[str, float] = {}

    @property
    def enabled(self) -> bool:
        return self.threads > 0

    def _executor(self) -> ThreadPoolExecutor:
        if self._pool is None:  # threads start on first use, one per concurrent step at most
            self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix="textnlp-store")
        return self._pool

    async def call(self, fn: Callable[..., T], /, *args: Any) -> T:
        """``fn(*args)`` off the loop, with the caller's context variables (its deadline); its result or error.

        A step once started is finished and its result returned as if it had run on the loop: a cancellation
        that arrives meanwhile is delivered at the caller's next await (so a charge and what follows it, say
        a batch line's stored result, stay together, as when the store was called on the loop). Without a
        running loop (a stream finalised outside it), with no threads, or once the interpreter is exiting (its
        pools take no more work), ``fn`` runs here.
        """
        if not self.threads:
            return fn(*args)
        try:
            loop = asyncio.get_running_loop()
        except RuntimeError:
            return fn(*args)
        kind = _kind(fn)
        if self._took.get(kind, math.inf) < self.inline_below_s:
            return self._timed(kind, fn, *args)
        work = functools.partial(contextvars.copy_context().run, self._timed, kind, fn, *args)
        try:
            future = loop.run_in_executor(self._executor(), work)
        except RuntimeError:
            # The pool takes no more work: the interpreter is exiting (concurrent.futures stops its pools before
            # atexit handlers run, and a runtime gives its budget slices back in one). The step runs here.
            return self._timed(kind, fn, *args)
        cancels = 0
        try:
            while True:
                try:
                    return await asyncio.shield(future)
                except asyncio.CancelledError:
                    if future.cancelled():  # the step itself was cancelled (the pool shut down before it ran)
                        raise
                    cancels += 1
                    if future.done():
                        return future.result()
        finally:
            if cancels:
                _cancel_later(cancels)

    def _timed(self, kind: str, fn: Callable[..., T], /, *args: Any) -> T:
        started = time.perf_counter()
        try:
            return fn(*args)
        finally:
            took = time.perf_counter() - started
            before = self._took.get(kind)
            # A fast run counts at once (a step first seen on a new thread may have paid for a connection); a slow
            # one raises the moving average by an eighth of the difference, so one slow run (a GC pause, a WAL
            # checkpoint) does not send a local store's steps to the threads, while a store that is slow call
            # after call (a network round trip) crosses the threshold within a call or two.
            self._took[kind] = took if before is None or took < before else before + (took - before) / 8

    def close(self) -> None:
        """Wait for running steps and stop the threads (at shutdown)."""
        if self._pool is not None:
            self._pool.shutdown(wait=True)
            self._pool = None


def _kind(fn: Callable[..., Any]) -> str:
    """Which kind of step ``fn`` is: its function's qualified name (through partials and bound methods)."""
    while isinstance(fn, functools.partial):
        fn = fn.func
    return getattr(fn, "__qualname__", None) or type(fn).__qualname__


def _cancel_later(cancels: int) -> None:
    """Deliver the cancellations swallowed while a step ran at the task's next await, with the task's count of
    pending cancellations unchanged (``asyncio.timeout`` reads it)."""
    task = asyncio.current_task()
    if task is None:
        return
    for _ in range(cancels):
        task.uncancel()
    task.cancel()


__all__ = ["Offload"]
