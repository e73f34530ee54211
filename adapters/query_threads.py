"""Several store queries of one read at once: a per-process thread pool and ``each``.

A read spread over shards (the usage of a tenant on DynamoDB's index partitions, Firestore's index shards) is
many small queries whose latencies would otherwise add up. The SDK clients (botocore, Firestore's gRPC client)
are thread-safe, so the queries run on a few threads of the process, each with the caller's context (its
request id in log lines).
"""

from __future__ import annotations

import contextvars
import os
import threading
from collections.abc import Callable, Sequence
from concurrent.futures import ThreadPoolExecutor
from typing import TypeVar

QUERY_THREADS = 8  # the queries of one read run on this many threads
T = TypeVar("T")
R = TypeVar("R")

_pool: tuple[int, ThreadPoolExecutor] | None = None
_pool_lock = threading.Lock()


def _query_pool() -> ThreadPoolExecutor:
    """The process's query threads (started on first use; made anew in a forked child, whose threads are gone)."""
    global _pool
    with _pool_lock:
        if _pool is None or _pool[0] != os.getpid():
            _pool = (os.getpid(), ThreadPoolExecutor(QUERY_THREADS, thread_name_prefix="textnlp-query"))
        return _pool[1]


def each(fn: Callable[[T], R], args: Sequence[T]) -> list[R]:
    """``fn`` of each of ``args``, in order; several at once on the query pool, with the caller's context."""
    if len(args) <= 1:
        return [fn(arg) for arg in args]
    pool = _query_pool()
    futures = [pool.submit(contextvars.copy_context().run, fn, arg) for arg in args]
    return [future.result() for future in futures]
