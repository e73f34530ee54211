"""LoopThread: one long-lived event loop per process, in a thread of its own, for the functions' async work.

functions-framework serves an HTTP function from gunicorn's worker threads (``THREADS``, 4 per CPU), each
request on one of them, many at once. ``Gateway.handle`` is async, and what it shares across requests (the
store's offload pool, the backends' connection pools and token caches, the budget slices) belongs to ONE
loop. So every request thread hands its coroutine to this loop and waits for the result: the loop overlaps
the requests' awaits, the blocking store calls run on core's offload threads (``core.offload``), and the
request threads only block themselves. The thread's contextvars go with the coroutine (functions-framework's
execution id in the log lines).
"""

from __future__ import annotations

import asyncio
import contextvars
import threading
from collections.abc import Coroutine
from typing import Any, TypeVar

T = TypeVar("T")


class LoopThread:
    """``run(coro)`` from any other thread: the coroutine runs on the loop, the caller waits for its result."""

    def __init__(self, name: str = "textnlp-loop") -> None:
        self.loop = asyncio.new_event_loop()
        self._thread = threading.Thread(target=self._serve, name=name, daemon=True)
        self._thread.start()

    def _serve(self) -> None:
        asyncio.set_event_loop(self.loop)
        self.loop.run_forever()

    def run(self, coro: Coroutine[Any, Any, T], timeout: float | None = None) -> T:
        """The coroutine's result (or its exception). Past ``timeout`` seconds it is cancelled and TimeoutError
        raised. Never from the loop's own thread: it would wait for itself."""
        if threading.current_thread() is self._thread:
            coro.close()
            raise RuntimeError("LoopThread.run called from its own loop")
        future = contextvars.copy_context().run(asyncio.run_coroutine_threadsafe, coro, self.loop)
        try:
            return future.result(timeout)
        except TimeoutError:
            future.cancel()
            raise

    def close(self, timeout: float = 5.0) -> None:
        """Stop the loop and its thread (tests, the local server; a function instance never needs it)."""
        if self.loop.is_closed():
            return
        self.loop.call_soon_threadsafe(self.loop.stop)
        self._thread.join(timeout)
        if not self._thread.is_alive():
            self.loop.close()
