"""Simulated Lambda containers: each runs one invocation at a time on a runtime of its own.

A pool of ``size`` containers stands in for the function's concurrency. An invocation takes the warmest
free container (the one freed last, as Lambda reuses warm ones), or waits for one. A container builds its
runtime on its first invocation (a cold start) and keeps it, as a Lambda container keeps ``runtime()``.
"""

from __future__ import annotations

import logging
import queue
import threading
import time
import uuid
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from typing import Any

from functions.aws.apigw import INTEGRATION_TIMEOUT_S

log = logging.getLogger("textnlp.local.aws")

Handle = Callable[[Any, Any, Any], Any]  # (runtime, event, context) -> result


class LambdaContext:
    """What the handlers read of Lambda's context: the time left, and names for the logs."""

    function_version = "$LATEST"
    memory_limit_in_mb = 1024

    def __init__(self, function_name: str, timeout_s: float, stream: str) -> None:
        self.function_name = function_name
        self.invoked_function_arn = f"arn:aws:lambda:us-east-1:123456789012:function:{function_name}"
        self.log_group_name = f"/aws/lambda/{function_name}"
        self.log_stream_name = stream
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + timeout_s

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


class Container:
    """One execution environment: a thread of its own (one invocation at a time) and its runtime."""

    def __init__(self, number: int, function_name: str, build: Callable[[], Any], handle: Handle) -> None:
        self.number = number
        self.function_name = function_name
        self._build = build
        self._handle = handle
        self._runtime: Any = None
        self._thread = ThreadPoolExecutor(max_workers=1, thread_name_prefix=f"{function_name}-{number}")

    def submit(self, event: Any, timeout_s: float) -> Future[Any]:
        return self._thread.submit(self._invoke, event, timeout_s)

    def _invoke(self, event: Any, timeout_s: float) -> Any:
        # Lambda's clock starts before the init phase of a cold start (for HTTP APIs, the event's timeEpoch
        # counts it too): the context is made first.
        context = LambdaContext(self.function_name, timeout_s, f"container-{self.number}")
        if self._runtime is None:
            started = time.monotonic()
            self._runtime = self._build()
            took = time.monotonic() - started
            log.info("%s container %d: cold start in %.2f s", self.function_name, self.number, took)
        return self._handle(self._runtime, event, context)

    def close(self) -> None:
        self._thread.shutdown(wait=True, cancel_futures=True)
        close = getattr(self._runtime, "close", None)
        if close is not None:
            close()


class Busy(Exception):
    """No container became free in time, or the invocation ran past the integration timeout."""


class Containers:
    """``size`` containers of one function; ``invoke`` runs an event on a free one."""

    def __init__(self, function_name: str, size: int, build: Callable[[], Any], handle: Handle, timeout_s: float):
        if size < 1:
            raise ValueError("at least one container")
        self.timeout_s = timeout_s
        self._all = [Container(n, function_name, build, handle) for n in range(1, size + 1)]
        self._free: queue.LifoQueue[Container] = queue.LifoQueue()
        for container in reversed(self._all):
            self._free.put(container)
        self._lock = threading.Lock()

    def __len__(self) -> int:
        return len(self._all)

    def invoke(self, event: Any, wait_s: float = INTEGRATION_TIMEOUT_S) -> tuple[Any, int]:
        """The function's result and the number of the container that ran it.

        Waits at most ``wait_s`` in all (API Gateway's integration timeout): for a free container, then for
        the result. Past it, raises Busy; the container stays busy until its invocation ends, as on Lambda.
        An exception of the handler is raised here (Lambda's "function error").
        """
        deadline = time.monotonic() + wait_s
        try:
            container = self._free.get(timeout=wait_s)
        except queue.Empty as exc:
            raise Busy("no container became free") from exc
        future = container.submit(event, self.timeout_s)
        future.add_done_callback(lambda _: self._free.put(container))
        try:
            return future.result(timeout=max(0.0, deadline - time.monotonic())), container.number
        except TimeoutError as exc:
            raise Busy("the function did not answer in time") from exc

    def close(self) -> None:
        for container in self._all:
            container.close()
