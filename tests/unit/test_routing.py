"""Calling models: per-route timeouts, retries with backoff and full jitter, fallbacks, the request's deadline."""

from __future__ import annotations

import asyncio
import random
import time
from collections.abc import AsyncIterator, Awaitable, Callable, Mapping
from dataclasses import dataclass, field, replace
from typing import Any, TypeVar

import pytest

from adapters.local.memory_store import MemoryStore
from core import deadlines
from core.clock import FixedClock
from core.domain import ModelSpec
from core.errors import BackendError, BackendTimeout
from core.inference import Embeddings, Generation, GenerationParams, Prompt, StreamEvent, TextDelta
from core.model_router import ModelRouter
from core.registry import ModelRegistry
from tests.fakes import EMB, GEN, FakeBackend, Harness, Resolver, error_of, json_of, make_harness

PROMPT = Prompt(text="a b c")
PARAMS = GenerationParams(max_tokens=5)
BASE, CAP = 0.1, 2.0
T = TypeVar("T")


def retryable(status: int = 503) -> BackendError:
    return BackendError(f"upstream {status}", status=status, retryable=True)


def spec(
    model_id: str, retries: int = 2, timeout_s: float = 5.0, fallbacks: tuple[str, ...] = (), **kw: Any
) -> ModelSpec:
    return replace(
        GEN, id=model_id, backend={"type": "local", "name": model_id}, max_retries=retries, timeout_s=timeout_s,
        fallbacks=fallbacks, **kw,
    )  # fmt: skip


@dataclass
class Logged:
    """A FakeBackend that writes its name to a shared log on every call, to see the order of attempts."""

    name: str
    log: list[str]
    inner: FakeBackend = field(default_factory=FakeBackend)

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        self.log.append(self.name)
        return await self.inner.generate(route, prompt, params)

    def stream(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> AsyncIterator[StreamEvent]:
        self.log.append(self.name)
        return self.inner.stream(route, prompt, params)

    async def embed(self, route: Mapping[str, Any], inputs: list[str]) -> Embeddings:
        self.log.append(self.name)
        return await self.inner.embed(route, inputs)


class Metrics:
    def __init__(self) -> None:
        self.counts: dict[str, float] = {}

    def incr(self, name: str, value: float = 1.0, **dims: str) -> None:
        self.counts[name] = self.counts.get(name, 0) + value

    def observe(self, name: str, value: float, **dims: str) -> None:
        return None


@dataclass
class World:
    router: ModelRouter
    log: list[str]
    backends: dict[str, Logged]
    sleeps: list[float]
    metrics: Metrics

    def generate(self, model_id: str) -> tuple[Generation, ModelSpec]:
        found = self.router._registry.find(model_id)
        assert found is not None
        return asyncio.run(self.router.generate(found, PROMPT, PARAMS))


def world(specs: list[ModelSpec], rng: Any = random.random, failures: dict[str, list[BaseException]] | None = None,
          delays: dict[str, float] | None = None) -> World:  # fmt: skip
    store = MemoryStore()
    for s in specs:
        store.put_model(s)
    log: list[str] = []
    backends = {
        s.id: Logged(
            s.id, log, FakeBackend(failures=list((failures or {}).get(s.id, [])), delay_s=(delays or {}).get(s.id, 0.0))
        )
        for s in specs
    }
    sleeps: list[float] = []

    async def sleep(seconds: float) -> None:
        sleeps.append(seconds)

    metrics = Metrics()
    router = ModelRouter(
        ModelRegistry(store, FixedClock()), Resolver(dict(backends)), metrics,
        backoff_base_s=BASE, backoff_cap_s=CAP, sleep=sleep, rng=rng,
    )  # fmt: skip
    return World(router, log, backends, sleeps, metrics)


# -- backoff ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("attempt", "ceiling"), [(0, 0.1), (1, 0.2), (2, 0.4), (3, 0.8), (4, 1.6), (5, 2.0), (30, 2.0)]
)
def test_backoff_ceiling_doubles_up_to_the_cap(attempt: int, ceiling: float) -> None:
    w = world([spec("a")], rng=lambda: 1.0)
    assert w.router.backoff(attempt) == pytest.approx(ceiling)
    assert world([spec("a")], rng=lambda: 0.0).router.backoff(attempt) == 0.0


def test_backoff_is_full_jitter_within_bounds() -> None:
    w = world([spec("a")], rng=random.Random(7).random)
    for attempt in range(8):
        samples = [w.router.backoff(attempt) for _ in range(200)]
        ceiling = min(CAP, BASE * 2**attempt)
        assert all(0.0 <= s <= ceiling for s in samples)
        assert max(samples) > ceiling * 0.8  # spread over the whole range, not a fixed delay
        assert min(samples) < ceiling * 0.2


def test_retryable_errors_are_retried_with_backoff_then_succeed() -> None:
    w = world([spec("a", retries=3)], rng=lambda: 1.0, failures={"a": [retryable(503), retryable(429)]})
    generation, served_by = w.generate("a")
    assert served_by.id == "a"
    assert generation.text == "a b c"
    assert w.log == ["a", "a", "a"]
    assert w.sleeps == pytest.approx([BASE, 2 * BASE])
    assert w.metrics.counts["backend_retries_total"] == 2
    assert w.metrics.counts["backend_errors_total"] == 2


def test_sleeps_stay_within_the_jitter_bounds() -> None:
    w = world([spec("a", retries=5)], rng=random.Random(1).random, failures={"a": [retryable()] * 5})
    w.generate("a")
    assert len(w.sleeps) == 5
    for attempt, slept in enumerate(w.sleeps):
        assert 0.0 <= slept <= min(CAP, BASE * 2**attempt)


def test_no_sleep_after_the_last_attempt_of_a_route() -> None:
    w = world([spec("a", retries=1, fallbacks=("b",)), spec("b")], failures={"a": [retryable(), retryable()]})
    w.generate("a")
    assert w.log == ["a", "a", "b"]
    assert len(w.sleeps) == 1


# -- fallbacks --------------------------------------------------------------------------------------------


def test_fallbacks_are_tried_in_order_after_retries_are_exhausted() -> None:
    specs = [spec("a", retries=1, fallbacks=("b", "c")), spec("b", retries=0), spec("c", retries=2)]
    w = world(specs, failures={"a": [retryable()] * 2, "b": [BackendTimeout()], "c": [retryable()]})
    _, served_by = w.generate("a")
    assert served_by.id == "c"
    assert w.log == ["a", "a", "b", "c", "c"]


def test_first_healthy_fallback_wins() -> None:
    specs = [spec("a", retries=0, fallbacks=("b", "c")), spec("b"), spec("c")]
    w = world(specs, failures={"a": [retryable()]})
    _, served_by = w.generate("a")
    assert served_by.id == "b"
    assert w.log == ["a", "b"]


def test_fallbacks_of_another_kind_missing_or_repeated_are_skipped() -> None:
    emb = replace(EMB, id="emb", backend={"type": "local", "name": "emb"})
    specs = [spec("a", retries=0, fallbacks=("emb", "ghost", "a", "b", "b")), spec("b", retries=0), emb]
    w = world(specs, failures={"a": [retryable()], "b": [retryable()]})
    with pytest.raises(BackendError):
        w.generate("a")
    assert w.log == ["a", "b"]


def test_when_every_route_fails_the_last_error_is_raised() -> None:
    specs = [spec("a", retries=0, fallbacks=("b",)), spec("b", retries=1)]
    w = world(specs, failures={"a": [retryable(503)], "b": [retryable(502), retryable(429)]})
    with pytest.raises(BackendError) as info:
        w.generate("a")
    assert info.value.status == 429


# -- non-retryable errors ---------------------------------------------------------------------------------


@pytest.mark.parametrize("status", [400, 401, 404, 422])
def test_non_retryable_errors_are_not_retried_nor_sent_to_a_fallback(status: int) -> None:
    err = BackendError("bad request", status=status, retryable=False)
    w = world([spec("a", retries=3, fallbacks=("b",)), spec("b")], failures={"a": [err]})
    with pytest.raises(BackendError) as info:
        w.generate("a")
    assert info.value is err
    assert w.log == ["a"]
    assert w.sleeps == []
    assert "backend_retries_total" not in w.metrics.counts


def test_a_non_retryable_error_on_a_fallback_stops_there() -> None:
    specs = [spec("a", retries=0, fallbacks=("b", "c")), spec("b", retries=2), spec("c")]
    w = world(specs, failures={"a": [retryable()], "b": [BackendError("nope", status=400)]})
    with pytest.raises(BackendError) as info:
        w.generate("a")
    assert info.value.status == 400
    assert w.log == ["a", "b"]


# -- timeouts ---------------------------------------------------------------------------------------------


def test_a_slow_route_times_out_per_attempt_and_is_retried() -> None:
    w = world([spec("a", retries=1, timeout_s=0.02)], delays={"a": 1.0})
    started = time.perf_counter()
    with pytest.raises(BackendTimeout) as info:
        w.generate("a")
    assert info.value.status == 504
    assert info.value.code == "backend_timeout"
    assert info.value.retryable
    assert w.log == ["a", "a"]
    assert time.perf_counter() - started < 1.0  # the slow backend was not waited for


def test_a_timed_out_route_falls_back() -> None:
    w = world([spec("a", retries=0, timeout_s=0.02, fallbacks=("b",)), spec("b")], delays={"a": 1.0})
    _, served_by = w.generate("a")
    assert served_by.id == "b"


# -- streams and embeddings -------------------------------------------------------------------------------


async def collect(events: AsyncIterator[StreamEvent]) -> list[StreamEvent]:
    return [e async for e in events]


def test_stream_retries_and_falls_back_before_the_first_event() -> None:
    specs = [spec("a", retries=1, fallbacks=("b",)), spec("b")]
    w = world(specs, rng=lambda: 1.0, failures={"a": [retryable(), retryable()]})
    events = asyncio.run(collect(w.router.stream(specs[0], PROMPT, PARAMS)))
    assert [e.text for e in events if isinstance(e, TextDelta)] == ["a", " b", " c"]
    assert w.log == ["a", "a", "b"]
    assert w.sleeps == pytest.approx([BASE])


def test_stream_timeout_on_the_first_event_is_retried() -> None:
    w = world([spec("a", retries=1, timeout_s=0.02)], delays={"a": 1.0})
    with pytest.raises(BackendTimeout):
        asyncio.run(collect(w.router.stream(spec("a", retries=1, timeout_s=0.02), PROMPT, PARAMS)))
    assert w.log == ["a", "a"]


def test_stream_errors_after_the_first_event_are_not_retried() -> None:
    w = world([spec("a", retries=3, fallbacks=("b",)), spec("b")])
    w.backends["a"].inner.stream_error_after = 1
    seen: list[StreamEvent] = []

    async def consume() -> None:
        async for event in w.router.stream(spec("a", retries=3, fallbacks=("b",)), PROMPT, PARAMS):
            seen.append(event)

    with pytest.raises(BackendError):
        asyncio.run(consume())
    assert seen == [TextDelta("a")]
    assert w.log == ["a"]


def test_stream_non_retryable_error_is_raised_at_once() -> None:
    w = world([spec("a", retries=3)], failures={"a": [BackendError("bad", status=400)]})
    with pytest.raises(BackendError):
        asyncio.run(collect(w.router.stream(spec("a", retries=3), PROMPT, PARAMS)))
    assert w.log == ["a"]


def test_embeddings_are_routed_with_the_same_rules() -> None:
    e1 = replace(EMB, id="e1", backend={"type": "local", "name": "e1"}, max_retries=1, fallbacks=("e2",))
    e2 = replace(EMB, id="e2", backend={"type": "local", "name": "e2"})
    w = world([e1, e2], failures={"e1": [retryable(), retryable()]})
    result, served_by = asyncio.run(w.router.embed(e1, ["x y"]))
    assert served_by.id == "e2"
    assert result.prompt_tokens == 2
    assert w.log == ["e1", "e1", "e2"]


# -- through the gateway ----------------------------------------------------------------------------------


def test_gateway_maps_a_timeout_to_504() -> None:
    h = make_harness()
    h.add_model(spec("slow", retries=0, timeout_s=0.02), FakeBackend(delay_s=1.0))
    resp = h.call_json("POST", "/v1/completions", {"model": "slow", "prompt": "a", "max_tokens": 1})
    assert resp.status == 504
    err = error_of(resp)
    assert err["code"] == "backend_timeout"
    assert err["type"] == "api_error"


def test_gateway_passes_the_last_backend_status_through() -> None:
    h = make_harness(backend=FakeBackend(failures=[retryable(503)] * 3))
    resp = h.call_json("POST", "/v1/completions", {"model": "fake-gen", "prompt": "a", "max_tokens": 1})
    assert resp.status == 503
    assert error_of(resp)["code"] == "backend_error"
    assert h.backend.calls == GEN.max_retries + 1


def test_gateway_recovers_from_transient_errors(harness: Harness) -> None:
    harness.backend.failures.extend([retryable(), retryable()])
    resp = harness.call_json("POST", "/v1/completions", {"model": "fake-gen", "prompt": "a", "max_tokens": 1})
    assert resp.status == 200
    assert json_of(resp)["choices"][0]["text"] == "a"
    assert harness.backend.calls == 3


# -- the request's deadline (core.deadlines) --------------------------------------------------------------


def within(seconds: float, make: Callable[[], Awaitable[T]]) -> T:
    """Run ``make()`` as a request whose deadline is ``seconds`` away."""

    async def go() -> T:
        with deadlines.narrowed(time.monotonic() + seconds):
            return await make()

    return asyncio.run(go())


def test_an_attempt_is_cut_at_the_deadline_when_it_comes_before_the_models_timeout() -> None:
    w = world([spec("a", retries=2, timeout_s=60.0)], delays={"a": 5.0})
    started = time.monotonic()
    with pytest.raises(BackendTimeout) as info:
        within(0.4, lambda: w.router.generate(spec("a", retries=2, timeout_s=60.0), PROMPT, PARAMS))
    assert 0.35 <= time.monotonic() - started < 0.8
    assert info.value.status == 504
    assert "time this request had left" in info.value.message
    assert w.log == ["a"]  # no retry once the time is gone
    assert w.sleeps == []


def test_no_attempt_starts_without_the_time_to_finish() -> None:
    w = world([spec("a")])
    with pytest.raises(BackendTimeout):
        within(deadlines.MIN_ATTEMPT_S / 2, lambda: w.router.generate(spec("a"), PROMPT, PARAMS))
    assert w.log == []
    with pytest.raises(BackendTimeout):
        within(deadlines.MIN_ATTEMPT_S / 2, lambda: collect(w.router.stream(spec("a"), PROMPT, PARAMS)))
    assert w.log == []


def test_the_last_attempt_gets_only_what_is_left() -> None:
    a = spec("a", retries=3, timeout_s=0.4)
    w = world([a], rng=lambda: 0.0, delays={"a": 5.0})
    started = time.monotonic()
    with pytest.raises(BackendTimeout) as info:
        within(0.75, lambda: w.router.generate(a, PROMPT, PARAMS))
    elapsed = time.monotonic() - started
    assert w.log == ["a", "a"]  # 0.4 s (the model's timeout), then the 0.35 s left; a third never starts
    assert 0.7 <= elapsed < 1.0
    assert "time this request had left" in info.value.message


def test_no_backoff_sleeps_past_the_deadline_but_a_fallback_that_fits_is_tried() -> None:
    specs = [spec("a", retries=2, fallbacks=("b",)), spec("b")]
    w = world(specs, rng=lambda: 1.0, failures={"a": [retryable(503)]})
    w.router._base = 10.0  # a backoff (10 s) longer than the time left
    _, served_by = within(1.0, lambda: w.router.generate(specs[0], PROMPT, PARAMS))
    assert served_by.id == "b"
    assert w.log == ["a", "b"]
    assert w.sleeps == []
    assert "backend_retries_total" not in w.metrics.counts


def test_when_the_time_runs_out_after_a_failure_that_failure_is_the_answer() -> None:
    specs = [spec("a", retries=2, fallbacks=("b",)), spec("b")]
    w = world(specs, rng=lambda: 1.0, failures={"a": [retryable(503)]}, delays={"a": 0.3})
    w.router._base = 10.0
    with pytest.raises(BackendError) as info:
        within(0.3 + deadlines.MIN_ATTEMPT_S / 2, lambda: w.router.generate(specs[0], PROMPT, PARAMS))
    assert info.value.status == 503
    assert w.log == ["a"]


def test_without_a_deadline_attempts_keep_their_own_timeouts() -> None:
    w = world([spec("a", retries=1, timeout_s=0.05)], delays={"a": 1.0})
    with pytest.raises(BackendTimeout) as info:
        w.generate("a")
    assert w.log == ["a", "a"]
    assert info.value.message == BackendTimeout().message


class Stalling(FakeBackend):
    """Streams its first word, then stalls."""

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        yield TextDelta("a")
        await asyncio.sleep(5.0)
        yield TextDelta(" b")


def stalling_world(timeout_s: float) -> tuple[World, ModelSpec]:
    a = spec("a", retries=2, timeout_s=timeout_s, fallbacks=("b",))
    w = world([a, spec("b")])
    w.backends["a"].inner = Stalling()
    return w, a


def test_a_stream_that_stalls_after_its_first_event_is_cut_at_the_models_timeout() -> None:
    w, a = stalling_world(0.3)
    seen: list[StreamEvent] = []

    async def consume() -> None:
        async for event in w.router.stream(a, PROMPT, PARAMS):
            seen.append(event)

    started = time.monotonic()
    with pytest.raises(BackendTimeout) as info:
        asyncio.run(consume())
    assert 0.25 <= time.monotonic() - started < 0.8
    assert info.value.message == BackendTimeout().message
    assert seen == [TextDelta("a")]
    assert w.log == ["a"]  # text flowed: neither retried nor sent to the fallback
    assert w.metrics.counts["backend_errors_total"] == 1


def test_a_streams_deadline_is_the_one_it_started_with() -> None:
    """Events read after the request's block (a runtime sending the body) keep the deadline."""
    w, a = stalling_world(60.0)

    async def go() -> tuple[list[StreamEvent], float]:
        events = w.router.stream(a, PROMPT, PARAMS)
        with deadlines.narrowed(time.monotonic() + 0.4):
            seen = [await anext(events)]
        started = time.monotonic()
        with pytest.raises(BackendTimeout) as info:
            seen.append(await anext(events))
        assert "time this request had left" in info.value.message
        return seen, time.monotonic() - started

    seen, waited = asyncio.run(go())
    assert seen == [TextDelta("a")]
    assert waited < 0.6


def test_a_closed_stream_closes_the_backends_stream() -> None:
    closed: list[bool] = []

    class Watched(FakeBackend):
        async def stream(
            self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
        ) -> AsyncIterator[StreamEvent]:
            try:
                yield TextDelta("a")
                yield TextDelta(" b")
            finally:
                closed.append(True)

    w = world([spec("a")])
    w.backends["a"].inner = Watched()

    async def go() -> None:
        events = w.router.stream(spec("a"), PROMPT, PARAMS)
        assert await anext(events) == TextDelta("a")
        await events.aclose()  # type: ignore[attr-defined]

    asyncio.run(go())
    assert closed == [True]
