"""Calling a model: per-route timeout, retries with exponential backoff and full jitter, fallbacks.

Every attempt is also bounded by the request's deadline (``core.deadlines``): no attempt and no backoff
starts that could not finish before it, and the last attempt gets only what is left.
"""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable
from typing import TypeVar

from core import deadlines
from core.domain import ModelSpec
from core.errors import BackendError, BackendTimeout
from core.inference import Embeddings, Generation, GenerationParams, Prompt, StreamEvent
from core.ports import BackendResolver, InferenceBackend, Metrics
from core.registry import ModelRegistry

T = TypeVar("T")
Sleep = Callable[[float], Awaitable[None]]


class ModelRouter:
    def __init__(
        self,
        registry: ModelRegistry,
        backends: BackendResolver,
        metrics: Metrics,
        *,
        backoff_base_s: float = 0.1,
        backoff_cap_s: float = 2.0,
        sleep: Sleep = asyncio.sleep,
        rng: Callable[[], float] = random.random,
    ) -> None:
        self._registry = registry
        self._backends = backends
        self._metrics = metrics
        self._base = backoff_base_s
        self._cap = backoff_cap_s
        self._sleep = sleep
        self._rng = rng

    def _chain(self, spec: ModelSpec) -> list[ModelSpec]:
        chain = [spec]
        for name in spec.fallbacks:
            fallback = self._registry.find(name)
            if fallback is not None and fallback.kind == spec.kind and fallback not in chain:
                chain.append(fallback)
        return chain

    def backend(self, spec: ModelSpec) -> InferenceBackend:
        """The backend that serves this model's own route (for optional capabilities such as scoring)."""
        return self._backends.backend_for(spec.backend)

    def backoff(self, attempt: int) -> float:
        """Full jitter: uniform in [0, min(cap, base * 2**attempt)]."""
        return float(self._rng() * min(self._cap, self._base * (2**attempt)))

    async def _attempts(self, spec: ModelSpec, call: Callable[[ModelSpec], Awaitable[T]]) -> tuple[T, ModelSpec]:
        deadline = deadlines.current()
        last: BackendError | None = None
        for candidate in self._chain(spec):
            for attempt in range(candidate.max_retries + 1):
                if not deadlines.can_start(deadline):
                    raise last or _out_of_time()
                timeout = deadlines.bounded(candidate.timeout_s, deadline)
                started = time.perf_counter()
                try:
                    async with asyncio.timeout(timeout):
                        result = await call(candidate)
                    return result, candidate
                except TimeoutError:
                    last = _timed_out(candidate, timeout)
                except BackendError as exc:
                    last = exc
                finally:
                    self._metrics.observe("backend_latency_seconds", time.perf_counter() - started, model=candidate.id)
                if not await self._after_failure(candidate, last, attempt, deadline):
                    break
            # This route is exhausted on a retryable error: the next fallback takes over.
        raise last or BackendError("no route could serve this model", status=502)

    async def _after_failure(
        self, candidate: ModelSpec, error: BackendError, attempt: int, deadline: float | None
    ) -> bool:
        """Count the failure; re-raise what retrying cannot fix; back off before the next try.

        False: no retry of this route (its last attempt, or no time left to back off and try again).
        """
        self._metrics.incr("backend_errors_total", model=candidate.id, status=str(error.status))
        if not error.retryable:
            raise error
        if attempt >= candidate.max_retries:
            return False
        delay = self.backoff(attempt)
        if not deadlines.can_start(deadline, after_s=delay):
            return False  # never sleep past the deadline; a fallback may still fit without the backoff
        self._metrics.incr("backend_retries_total", model=candidate.id)
        await self._sleep(delay)
        return True

    async def generate(self, spec: ModelSpec, prompt: Prompt, params: GenerationParams) -> tuple[Generation, ModelSpec]:
        async def call(candidate: ModelSpec) -> Generation:
            backend = self._backends.backend_for(candidate.backend)
            return await backend.generate(candidate.backend, prompt, params)

        return await self._attempts(spec, call)

    async def embed(self, spec: ModelSpec, inputs: list[str]) -> tuple[Embeddings, ModelSpec]:
        async def call(candidate: ModelSpec) -> Embeddings:
            backend = self._backends.backend_for(candidate.backend)
            return await backend.embed(candidate.backend, inputs)

        return await self._attempts(spec, call)

    async def stream(self, spec: ModelSpec, prompt: Prompt, params: GenerationParams) -> AsyncIterator[StreamEvent]:
        """Stream from the first route that produces an event; once text flowed, errors end the stream.

        The deadline is read once, when the stream starts (within the request): the events that follow may
        be read after the request's handler returned (a runtime sending the body), and each waits at most
        the model's timeout or what is left before the deadline.
        """
        deadline = deadlines.current()
        last: BackendError | None = None
        for candidate in self._chain(spec):
            for attempt in range(candidate.max_retries + 1):
                if not deadlines.can_start(deadline):
                    raise last or _out_of_time()
                timeout = deadlines.bounded(candidate.timeout_s, deadline)
                events = self._backends.backend_for(candidate.backend).stream(candidate.backend, prompt, params)
                try:
                    async with asyncio.timeout(timeout):
                        first = await anext(events)
                except StopAsyncIteration:
                    return
                except (TimeoutError, BackendError) as exc:
                    last = exc if isinstance(exc, BackendError) else _timed_out(candidate, timeout)
                    await _aclose(events)
                    if not await self._after_failure(candidate, last, attempt, deadline):
                        break
                    continue
                try:
                    event: StreamEvent | None = first
                    while event is not None:
                        yield event
                        event = await self._next(candidate, events, deadline)
                finally:
                    await _aclose(events)
                return
        raise last or BackendError("no route could serve this model", status=502)

    async def _next(
        self, candidate: ModelSpec, events: AsyncIterator[StreamEvent], deadline: float | None
    ) -> StreamEvent | None:
        """The next event (None at the end), awaited at most the model's timeout or the time left."""
        timeout = deadlines.bounded(candidate.timeout_s, deadline)
        try:
            if timeout <= 0:
                raise TimeoutError
            async with asyncio.timeout(timeout):
                return await anext(events, None)
        except TimeoutError:
            error = _timed_out(candidate, timeout)
            self._metrics.incr("backend_errors_total", model=candidate.id, status=str(error.status))
            raise error from None


def _timed_out(candidate: ModelSpec, timeout: float) -> BackendTimeout:
    """A call cut at ``timeout``: the model's own timeout, or the request's deadline if that came first."""
    if timeout < candidate.timeout_s:
        return _out_of_time()
    return BackendTimeout()


def _out_of_time() -> BackendTimeout:
    return BackendTimeout("the model backend could not answer within the time this request had left")


async def _aclose(events: AsyncIterator[StreamEvent]) -> None:
    closer = getattr(events, "aclose", None)
    if closer is not None:
        await closer()
