"""Store calls never block the event loop: concurrent requests overlap their store calls (core.offload)."""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections import Counter
from typing import Any

import pytest

from adapters.local.memory_store import MemoryStore
from bench.slow_store import SlowStore
from core import deadlines
from core.app import Gateway
from core.auth import api_keys
from core.clock import FixedClock
from core.domain import Limits, Tenant
from core.http import Request, Response
from core.offload import Offload
from core.settings import GatewaySettings
from tests.fakes import EMB, GEN, FakeBackend, Resolver

DELAY_S = 0.05
CONCURRENCY = 16


class World:
    def __init__(
        self, limits: Limits | None = None, store_threads: int = 64, delay_s: float = DELAY_S, backend_s: float = 0.0
    ) -> None:
        self.clock = FixedClock()
        self.inner = MemoryStore(clock=self.clock.now)
        self.inner.put_model(GEN)
        self.inner.put_model(EMB)
        self.tenant = Tenant(id="ten_a", name="a", created_at=self.clock.now(), limits=limits or Limits())
        self.inner.put_tenant(self.tenant)
        self.key, record = api_keys.mint(self.tenant.id, "k", frozenset({"generate", "embed"}), self.clock.now())
        self.inner.put_key(record)
        self.store = SlowStore(self.inner, delay_s)
        backend = FakeBackend(delay_s=backend_s)
        self.gateway = Gateway(
            self.store,  # type: ignore[arg-type]
            Resolver({"gen": backend, "emb": backend}),
            # Below the slow store's delay, whatever the default: every step here is a "network" step.
            settings=GatewaySettings(store_threads=store_threads, store_inline_below_s=delay_s / 4),
            clock=self.clock,
        )

    def request(self, path: str, payload: dict[str, Any]) -> Request:
        headers = {"authorization": f"Bearer {self.key}"}
        return Request("POST", path, headers, {}, json.dumps(payload).encode())

    def chat(self, i: int = 0, **extra: Any) -> Request:
        payload = {"model": "fake-gen", "messages": [{"role": "user", "content": f"hello number {i}"}], **extra}
        return self.request("/v1/chat/completions", payload)


async def _with_ticker(work: Any) -> tuple[Any, float]:
    """Run ``work`` while a ticker measures how late the event loop wakes it (its worst delay, seconds)."""
    worst = 0.0
    done = asyncio.Event()

    async def tick() -> None:
        nonlocal worst
        while not done.is_set():
            t0 = time.perf_counter()
            await asyncio.sleep(0.002)
            worst = max(worst, time.perf_counter() - t0 - 0.002)

    ticker = asyncio.create_task(tick())
    try:
        return await work, worst
    finally:
        done.set()
        await ticker


def test_concurrent_requests_overlap_their_store_calls_and_the_loop_stays_responsive() -> None:
    world = World(limits=Limits(requests_per_minute=1000, tokens_per_minute=10**6, token_quota=10**6))

    async def go() -> tuple[list[Response], float, float]:
        started = time.perf_counter()
        gathered = asyncio.gather(*(world.gateway.handle(world.chat(i)) for i in range(CONCURRENCY)))
        responses, worst = await _with_ticker(gathered)
        return responses, time.perf_counter() - started, worst

    responses, elapsed, worst = asyncio.run(go())
    assert [r.status for r in responses] == [200] * CONCURRENCY
    calls = sum(world.store.calls.values())
    assert calls >= 2 * CONCURRENCY  # a reservation and a usage record each, at least
    serial = calls * DELAY_S  # what the requests took when each store call held the loop
    assert elapsed < serial / 4, (elapsed, serial, world.store.calls)
    # One store call on the loop would hold it DELAY_S (50 ms); a loaded CI machine adds some jitter of its own.
    assert worst < 0.8 * DELAY_S, worst
    assert threading.get_ident() not in world.store.threads  # no store call ran on the loop's thread
    # Exactly as before: one record per request, the quota counter equal to what the records charged.
    usage = world.inner.list_usage(None, 0.0, float("inf"))
    assert len(usage) == CONCURRENCY
    quota = next(world.inner.read(item) for item in world.inner._s.counters if item.startswith("q|"))
    assert quota["used"] == sum(u.prompt_tokens + u.completion_tokens for u in usage)


def test_concurrent_reservations_still_refuse_exactly_past_the_limit() -> None:
    world = World(limits=Limits(requests_per_minute=5), delay_s=0.01)

    async def go() -> list[Response]:
        return list(await asyncio.gather(*(world.gateway.handle(world.chat(i)) for i in range(CONCURRENCY))))

    statuses = Counter(r.status for r in asyncio.run(go()))
    assert statuses == Counter({200: 5, 429: CONCURRENCY - 5})


def test_no_store_call_on_the_loop_for_streams_cache_hits_and_embeddings() -> None:
    world = World(delay_s=0.001)

    async def go() -> list[int]:
        statuses = []
        for request in (
            world.chat(1, temperature=0),  # a miss, then put in the cache (L1 and the store's L2)
            world.chat(1, temperature=0),  # an L1 hit: the request is still reserved and recorded
            world.request("/v1/embeddings", {"model": "fake-emb", "input": ["a b", "c"]}),
        ):
            statuses.append((await world.gateway.handle(request)).status)
        world.gateway.cache._l1 = type(world.gateway.cache._l1)(16, 3600, world.clock)  # forget L1: an L2 hit next
        statuses.append((await world.gateway.handle(world.chat(1, temperature=0))).status)
        streamed = await world.gateway.handle(world.chat(2, stream=True))
        assert streamed.stream is not None
        chunks = [chunk async for chunk in streamed.stream]
        assert chunks[-1] == b"data: [DONE]\n\n"
        statuses.append(streamed.status)
        return statuses

    assert asyncio.run(go()) == [200] * 5
    assert threading.get_ident() not in world.store.threads
    assert world.store.calls["cache_get"] >= 2
    assert world.store.calls["cache_put"] >= 1
    usage = world.inner.list_usage(None, 0.0, float("inf"))
    assert sorted(u.cached for u in usage) == [False, False, False, True, True]
    assert all(u.ended == "completed" for u in usage)


def test_a_request_cancelled_while_reserving_is_recorded_as_cancelled_and_charged_nothing() -> None:
    world = World(limits=Limits(token_quota=10**6), backend_s=0.01)

    async def go() -> None:
        assert (await world.gateway.handle(world.chat(0))).status == 200  # caches warm: the next store call reserves
        before = world.store.calls["try_add_all"]
        task = asyncio.create_task(world.gateway.handle(world.chat(1)))
        await asyncio.sleep(DELAY_S / 2)  # inside the reservation's store call
        assert world.store.calls["try_add_all"] == before + 1
        task.cancel()  # the reservation is finished, then the model call is cancelled: recorded, charged nothing
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(go())
    usage = world.inner.list_usage(None, 0.0, float("inf"))
    assert sorted((u.status, u.ended) for u in usage) == [(200, "completed"), (499, "cancelled")]
    quota = next(world.inner.read(item) for item in world.inner._s.counters if item.startswith("q|"))
    assert quota["used"] == sum(u.prompt_tokens + u.completion_tokens for u in usage)  # the cancelled one: 0


def test_with_no_threads_the_store_is_called_in_place() -> None:
    world = World(store_threads=0, delay_s=0.0)

    async def go() -> int:
        return (await world.gateway.handle(world.chat())).status

    assert asyncio.run(go()) == 200
    assert world.store.threads == {threading.get_ident()}


def test_a_step_runs_with_the_callers_context() -> None:
    offload = Offload(2)

    async def go() -> float | None:
        with deadlines.narrowed(123.0):
            return await offload.call(deadlines.current)

    assert asyncio.run(go()) == 123.0
    offload.close()


def test_offload_outside_a_loop_runs_in_place() -> None:
    offload = Offload(2)
    coro = offload.call(threading.get_ident)
    with pytest.raises(StopIteration) as stop:
        coro.send(None)  # no running loop (a stream finalised outside it): no await, the step runs here
    assert stop.value.value == threading.get_ident()
    offload.close()


def test_a_kind_of_step_faster_than_a_hop_runs_on_the_loop_until_it_turns_slow() -> None:
    # Wide margins (a 10 ms threshold, 100 ms slow runs): a loaded machine's jitter cannot flip the outcome.
    offload = Offload(4, inline_below_s=0.01)
    delay = [0.0]

    def step() -> int:
        time.sleep(delay[0])
        return threading.get_ident()

    async def go() -> list[bool]:
        here = threading.get_ident()
        seen = [await offload.call(step) == here for _ in range(3)]  # unknown: off the loop once, then here
        delay[0] = 0.1
        # Turned slow: this run still ran here, and the moving average (1/8 a run: 12.5 ms) crosses the
        # threshold, so the next ones go to a thread.
        seen += [await offload.call(step) == here for _ in range(2)]
        return seen

    assert asyncio.run(go()) == [False, True, True, True, False]
    offload.close()


def test_once_the_pool_takes_no_more_work_a_step_runs_in_place() -> None:
    """At interpreter exit concurrent.futures refuses new work before atexit handlers run, and a runtime gives
    its budget slices back in one: the give-back's store steps must still run (here: a pool shut down)."""
    offload = Offload(2)
    ran_on: list[str] = []

    def step() -> str:
        ran_on.append(threading.current_thread().name)
        return "done"

    async def go() -> list[str]:
        first = await offload.call(step)
        offload._executor().shutdown(wait=True)  # what interpreter exit does to every pool
        return [first, await offload.call(step)]

    assert asyncio.run(go()) == ["done", "done"]
    assert ran_on[0].startswith("textnlp-store")
    assert ran_on[1] == "MainThread"
