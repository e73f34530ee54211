"""The batch runner's own store calls never block the event loop: they go through ``Offload`` (core.offload).

The store sleeps 50 ms in every call (``bench.slow_store.SlowStore``: a real store blocks its thread). A ticker
coroutine sleeps 2 ms again and again meanwhile and records how late the loop wakes it: with the runner's calls
offloaded it keeps ticking on time; with the same calls made on the loop (``Offload(0)``, the runner's
default) each of them holds the loop for 50 ms, and the ticker sees it.
"""

from __future__ import annotations

import asyncio
import json
import threading
import time
from collections.abc import Awaitable
from typing import TypeVar

from adapters.local.memory_blobs import MemoryBlobStore
from adapters.local.memory_store import MemoryStore
from bench.slow_store import SlowStore
from core.batch.objects import object_batch
from core.batch.records import BatchJob, update_batch
from core.batch.runner import BatchRunner, RunnerSettings
from core.clock import FixedClock
from core.domain import Principal
from core.http import Request, Response
from core.offload import Offload

DELAY_S = 0.05
LINES = 12
T = TypeVar("T")


class Ticks:
    """A coroutine ticking every 2 ms while the batch runs: how many ticks, and the loop's worst lateness."""

    def __init__(self) -> None:
        self.count = 0
        self.worst = 0.0

    async def during(self, work: Awaitable[T]) -> T:
        done = asyncio.Event()

        async def tick() -> None:
            while not done.is_set():
                t0 = time.perf_counter()
                await asyncio.sleep(0.002)
                self.count += 1
                self.worst = max(self.worst, time.perf_counter() - t0 - 0.002)

        ticker = asyncio.create_task(tick())
        try:
            return await work
        finally:
            done.set()
            await ticker


async def answer(principal: Principal, request: Request) -> Response:
    """A line's dispatch answered at once, without any store call: only the runner's own calls are measured."""
    return Response.json({"id": request.request_id, "results": [{"text": "ok"}]})


def run_batch(offload: Offload) -> tuple[BatchJob | None, SlowStore, Ticks, MemoryBlobStore]:
    clock = FixedClock()
    inner = MemoryStore(clock=clock.now)
    blobs = MemoryBlobStore()
    lines = (json.dumps({"model": "m", "prompt": f"line {i}", "max_tokens": 2}) for i in range(LINES))
    blobs.write_object("in.jsonl", "\n".join(lines).encode() + b"\n")
    job = object_batch(inner, blobs, tenant_id="t", input_key="in.jsonl", output_key="o", error_key="e", now=0.0)
    assert job is not None

    def resumed_and_published(j: BatchJob) -> None:
        j.attempts = 1  # a resumed batch: each line first asks the store what an earlier run charged
        j.publish_files = True  # the output and error files are registered in the store at the end

    update_batch(inner, job, resumed_and_published)
    store = SlowStore(inner, DELAY_S)  # from here on, every store call takes 50 ms
    runner = BatchRunner(
        store,
        blobs,
        answer,
        clock=clock,
        settings=RunnerSettings(concurrency=4),
        offload=offload,
    )
    ticks = Ticks()
    try:
        done = asyncio.run(ticks.during(runner.run(job.tenant_id, job.id)))
    finally:
        offload.close()
    return done, store, ticks, blobs


def test_a_batch_over_a_blocking_store_leaves_the_event_loop_free() -> None:
    # As the gateway's Offload: steps of a kind that recently took under the threshold stay on the loop.
    done, store, ticks, blobs = run_batch(Offload(16, inline_below_s=DELAY_S / 4))
    assert done is not None
    assert done.status == "completed"
    assert (done.total, done.completed, done.failed) == (LINES, LINES, 0)
    assert done.output_file_id is not None
    assert blobs.read_object("o").count(b"\n") == LINES
    calls = store.calls
    assert calls["get_usage"] == LINES
    assert calls["put_document"] >= LINES + 4
    assert calls["list_documents"] >= 2
    assert threading.get_ident() not in store.threads  # no store call ran on the loop's thread
    # One store call on the loop would hold it DELAY_S (50 ms); a loaded CI machine adds some jitter of its own.
    assert ticks.worst < 0.8 * DELAY_S, ticks.worst
    assert ticks.count >= 20  # ticking on all along (each line's calls alone take 100 ms, four lines at a time)


def test_the_same_batch_with_its_store_calls_on_the_loop_blocks_it() -> None:
    # What the test above guards against: the runner calling the store in place (its default without an Offload).
    done, store, ticks, _ = run_batch(Offload(0))
    assert done is not None
    assert done.status == "completed"
    assert done.completed == LINES
    assert threading.get_ident() in store.threads
    assert ticks.worst >= 0.8 * DELAY_S, ticks.worst
