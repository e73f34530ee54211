"""BatchRunner: a 10k-line batch, bad lines, resume without double charging, rate limits, quota, cancel."""

from __future__ import annotations

import asyncio
import gc
import json
import tracemalloc
from collections import Counter
from collections.abc import Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import pytest

from adapters.local.blobs import FileBlobStore
from adapters.local.sqlite_store import SQLiteStore
from core.batch.objects import object_batch
from core.batch.records import BatchJob, load_batch, reopen, update_batch
from core.batch.runner import BatchRunner, RunnerSettings
from core.clock import FixedClock
from core.domain import Limits, Principal, UsageRecord
from core.http import Request, Response
from core.inference import Generation, GenerationParams, Prompt
from tests.fakes import FakeBackend, Harness, make_harness, words_of

IN, OUT, ERR = "batch-input/t/in.jsonl", "batch-output/t/in.jsonl", "batch-output/t/in.errors.jsonl"


def native(i: int, model: str = "fake-gen", max_tokens: int = 4) -> bytes:
    return json.dumps({"model": model, "prompt": f"line {i} says hello", "max_tokens": max_tokens}).encode()


def start(h: Harness, lines: list[bytes]) -> BatchJob:
    h.blobs.write_object(IN, b"\n".join(lines) + b"\n")
    job = object_batch(
        h.store, h.blobs, tenant_id=h.tenant.id, input_key=IN, output_key=OUT, error_key=ERR, now=h.clock.now()
    )
    assert job is not None
    return job


def run(h: Harness, job: BatchJob, **settings: Any) -> BatchJob:
    runner = h.gateway.batch_runner(settings=RunnerSettings(**settings))
    done = asyncio.run(runner.run(job.tenant_id, job.id))
    assert done is not None
    return done


def jsonl(h: Harness, key: str) -> list[dict[str, Any]]:
    return [json.loads(line) for line in h.blobs.read_object(key).splitlines()]


def charged(h: Harness) -> Counter[int]:
    """Served (status 200) usage records per line number, across every request id of the line."""
    return Counter(int(u.request_id.split(":")[1]) for u in usage(h) if u.status == 200)


def usage(h: Harness) -> list[UsageRecord]:
    return h.store.list_usage(h.tenant.id, 0.0, float("inf"), limit=10**6)


class CountingBackend(FakeBackend):
    """Counts finished generations per prompt (a cancelled call does not count)."""

    def __init__(self, delay_s: float = 0.0, notify_at: int = 0) -> None:
        super().__init__(delay_s=delay_s)
        self.answered: Counter[str] = Counter()
        self.notify_at = notify_at
        self.reached = asyncio.Event()  # set once ``notify_at`` generations have finished

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        answer = await super().generate(route, prompt, params)
        self.answered[" ".join(words_of(prompt))] += 1
        if self.answered.total() >= self.notify_at:
            self.reached.set()
        return answer


def test_ten_thousand_lines_with_one_percent_bad() -> None:
    h = make_harness()
    bad: dict[int, str] = {}
    lines: list[bytes] = []
    kinds = [
        (b"{this is not json", "invalid_json"),
        (b'{"model": "fake-gen", "prompt": "caf\xe9"}', "invalid_encoding"),
        (native(0, model="no-such-model"), "model_not_found"),
        (b'{"model": "fake-gen", "prompt": ""}', "invalid_request"),
        (b"[1, 2, 3]", "invalid_line"),
    ]
    for n in range(1, 10_001):
        if n % 100 == 0:
            raw, code = kinds[(n // 100) % len(kinds)]
            if n in (5_000, 10_000):
                raw, code = b'{"model": "fake-gen", "prompt": "' + b"x" * 1_100_000 + b'"}', "line_too_large"
            lines.append(raw)
            bad[n] = code
        else:
            lines.append(native(n))
    job = start(h, lines)
    done = run(h, job, concurrency=16, flush_every=1000)
    assert done.status == "completed"
    assert (done.total, done.completed, done.failed) == (10_000, 9_900, 100)
    assert h.backend.calls == 9_900  # every good line answered once, no bad line reached the backend
    errors = jsonl(h, ERR)
    assert {e["line"]: e["error"]["code"] for e in errors} == bad
    assert all(e["error"]["message"] and e["error"]["line"] == e["line"] for e in errors)
    output = jsonl(h, OUT)
    assert [o["line"] for o in output] == list(range(1, 10_001))
    sample = output[0]
    assert sample["error"] is None
    assert sample["response"]["status_code"] == 200
    assert sample["response"]["body"]["results"][0]["text"] == "line 1 says hello"
    assert charged(h) == Counter({n: 1 for n in range(1, 10_001) if n not in bad})


def test_running_a_finished_batch_again_changes_nothing() -> None:
    h = make_harness()
    job = start(h, [native(i) for i in range(1, 21)])
    assert run(h, job).status == "completed"
    again = object_batch(
        h.store, h.blobs, tenant_id=h.tenant.id, input_key=IN, output_key=OUT, error_key=ERR, now=h.clock.now()
    )
    assert again is not None
    assert again.id == job.id  # the same object version is the same batch
    assert run(h, again).status == "completed"
    assert h.backend.calls == 20
    assert len(usage(h)) == 20


def test_interrupted_half_way_then_resumed_charges_no_line_twice() -> None:
    backend = CountingBackend(delay_s=0.002, notify_at=200)
    h = make_harness(limits=Limits(token_quota=10**9), backend=backend)
    n_lines = 400
    job = start(h, [native(i) for i in range(1, n_lines + 1)])
    runner = h.gateway.batch_runner(settings=RunnerSettings(concurrency=16, flush_every=10))

    async def interrupted() -> None:
        task = asyncio.create_task(runner.run(job.tenant_id, job.id))
        await backend.reached.wait()
        task.cancel()  # a crash or a redeploy, mid-batch: lines in flight are cut off
        with pytest.raises(asyncio.CancelledError):
            await task

    asyncio.run(interrupted())
    half = load_batch(h.store, job.tenant_id, job.id)
    assert half is not None
    assert half.status == "in_progress"
    assert half.lease_owner is None  # released on the way out: a resume need not wait for the lease
    stored = {int(d.id) for d in h.store.list_documents(f"batch_lines:{job.id}", job.tenant_id, limit=10_000)}
    assert half.completed == len(stored)  # the status record was brought up to date on the way out
    assert 0 < len(stored) < n_lines
    answered_before = Counter(backend.answered)
    assert any(u.status == 499 for u in usage(h))  # lines were in flight: each was charged nothing
    done = run(h, half, concurrency=16)
    assert done.status == "completed"
    assert (done.total, done.completed, done.failed) == (n_lines, n_lines, 0)
    for n in stored:  # a line with a stored result is never generated again
        assert backend.answered[f"line {n} says hello"] == answered_before[f"line {n} says hello"] == 1
    assert len(backend.answered) == n_lines
    assert charged(h) == Counter(dict.fromkeys(range(1, n_lines + 1), 1))  # charged exactly once each
    tokens = sum(u.prompt_tokens + u.completion_tokens for u in usage(h))
    quota = h.store.read(next(k for k in _counter_items(h) if k.startswith("q|")))
    assert quota["used"] == tokens  # the quota counter agrees with the usage records
    assert [o["line"] for o in jsonl(h, OUT)] == list(range(1, n_lines + 1))


def _counter_items(h: Harness) -> list[str]:
    return list(h.store._s.counters)


def test_a_line_charged_by_a_run_that_died_before_storing_it_is_not_run_again() -> None:
    h = make_harness()
    job = start(h, [native(i) for i in range(1, 6)])
    # An earlier attempt served line 3, metered it, and died before writing the result.
    h.gateway.meter.record(
        request_id=f"{job.id}:3",
        principal=job.principal(),
        model=h.gateway.registry.get("fake-gen"),
        endpoint="generate",
        prompt_tokens=4,
        completion_tokens=4,
        cached=False,
        latency_ms=1.0,
        status=200,
    )
    job = update_batch(h.store, job, lambda j: setattr(j, "attempts", 1))
    done = run(h, job)
    assert (done.completed, done.failed) == (4, 1)
    assert h.backend.calls == 4
    (error,) = jsonl(h, ERR)
    assert (error["line"], error["error"]["code"]) == (3, "result_lost")
    assert charged(h) == Counter(dict.fromkeys(range(1, 6), 1))


def test_rate_limits_are_waited_out_not_failed() -> None:
    h = make_harness(limits=Limits(requests_per_minute=5))
    job = start(h, [native(i) for i in range(1, 21)])
    started_at = h.clock.now()
    done = run(h, job, concurrency=4)
    assert (done.completed, done.failed) == (20, 0)
    assert h.backend.calls == 20
    assert h.clock.now() - started_at >= 2 * 60  # 20 requests at 5 per minute: into the fourth minute


def test_a_line_that_can_never_fit_the_token_rate_fails_instead_of_waiting_forever() -> None:
    h = make_harness(limits=Limits(tokens_per_minute=50))
    job = start(h, [native(1, max_tokens=4), native(2, max_tokens=200)])
    done = run(h, job)
    assert (done.completed, done.failed) == (1, 1)
    (error,) = jsonl(h, ERR)
    assert (error["line"], error["error"]["code"], error["response"]["status_code"]) == (2, "rate_limit_exceeded", 429)


def test_quota_exhaustion_fails_that_line_and_the_rest_clearly_and_a_later_run_retries_them() -> None:
    # Each line reserves its prompt bytes + max_tokens, then is charged 8 tokens (4 words in, 4 out).
    h = make_harness(limits=Limits(token_quota=60))
    job = start(h, [native(i) for i in range(1, 11)])
    done = run(h, job, concurrency=1)
    assert done.status == "completed"
    assert done.completed + done.failed == 10
    assert 0 < done.completed < 10
    errors = jsonl(h, ERR)
    first = errors[0]
    assert first["line"] == done.completed + 1
    assert first["error"]["code"] == "insufficient_quota"
    assert f"at line {first['line']}" in first["error"]["message"]
    assert all(e["error"]["code"] == "insufficient_quota" for e in errors)
    assert all(f"ran out at line {first['line']}" in e["error"]["message"] for e in errors[1:])
    assert h.backend.calls == done.completed
    # The quota grows; the same batch, run again, runs exactly the lines that were refused.
    h.store.put_tenant(replace(h.tenant, limits=Limits(token_quota=10_000)))
    h.clock.advance(60)  # past the tenant cache
    assert done.deferred == done.failed
    assert run(h, done).status == "completed"  # a finished batch stays finished ...
    assert h.backend.calls == done.completed
    job = update_batch(h.store, done, reopen)  # ... until it is reopened (textnlp batch run does this)
    again = run(h, job, concurrency=1)
    assert (again.completed, again.failed, again.deferred) == (10, 0, 0)
    assert h.backend.calls == 10
    assert charged(h) == Counter(dict.fromkeys(range(1, 11), 1))
    assert jsonl(h, ERR) == []


def test_cancelling_stops_cleanly_with_partial_output() -> None:
    backend = CountingBackend(delay_s=0.001, notify_at=50)
    h = make_harness(backend=backend)
    job = start(h, [native(i) for i in range(1, 2001)])
    runner = h.gateway.batch_runner(settings=RunnerSettings(concurrency=8, flush_every=5))

    async def go() -> BatchJob | None:
        task = asyncio.create_task(runner.run(job.tenant_id, job.id))
        await backend.reached.wait()
        current = load_batch(h.store, job.tenant_id, job.id) or job
        update_batch(h.store, current, lambda j: setattr(j, "status", "cancelling"))
        return await task

    done = asyncio.run(go())
    assert done is not None
    assert done.status == "cancelled"
    assert done.cancelled_at is not None
    assert 50 <= done.completed < 2000
    assert h.backend.calls == done.completed  # every started line finished; none was started after
    output = jsonl(h, OUT)
    assert len(output) == done.completed
    assert all(o["response"]["status_code"] == 200 for o in output)
    assert jsonl(h, ERR) == []


def test_a_batch_cancelled_before_it_started_writes_empty_outputs() -> None:
    h = make_harness()
    job = start(h, [native(1)])
    job = update_batch(h.store, job, lambda j: setattr(j, "status", "cancelling"))
    done = run(h, job)
    assert (done.status, done.completed, h.backend.calls) == ("cancelled", 0, 0)
    assert h.blobs.read_object(OUT) == b""


def test_a_batch_leased_by_a_live_runner_is_left_alone() -> None:
    h = make_harness()
    job = start(h, [native(1)])

    def leased(j: BatchJob) -> None:
        j.lease_owner, j.lease_until = "other", h.clock.now() + 30

    update_batch(h.store, job, leased)
    assert asyncio.run(h.gateway.batch_runner().run(job.tenant_id, job.id)) is None
    assert h.backend.calls == 0
    h.clock.advance(31)  # the other runner stopped renewing its lease: it is presumed dead
    done = asyncio.run(h.gateway.batch_runner().run(job.tenant_id, job.id))
    assert done is not None
    assert (done.status, h.backend.calls) == ("completed", 1)


def test_changed_or_missing_input_fails_the_batch() -> None:
    h = make_harness()
    job = start(h, [native(1)])
    h.blobs.write_object(IN, native(2) + b"\n")
    done = run(h, job)
    assert done.status == "failed"
    assert done.errors[0]["code"] == "input_changed"
    h2 = make_harness()
    job2 = start(h2, [native(1)])
    h2.blobs.delete_object(IN)
    assert run(h2, job2).errors[0]["code"] == "input_missing"


def test_blank_lines_are_skipped_but_line_numbers_stay_physical() -> None:
    h = make_harness()
    job = start(h, [native(1), b"", b"   ", b"{bad", native(5)])
    done = run(h, job)
    assert (done.total, done.completed, done.failed) == (3, 2, 1)
    assert [o["line"] for o in jsonl(h, OUT)] == [1, 4, 5]


def test_lines_run_as_the_tenant_without_a_key_and_need_the_endpoint_scope() -> None:
    h = make_harness()
    line = json.dumps(
        {"custom_id": "e", "method": "POST", "url": "/v1/embeddings", "body": {"model": "fake-emb", "input": "hi"}}
    ).encode()
    job = start(h, [native(1), line])
    done = run(h, job)
    assert (done.completed, done.failed) == (2, 0)
    assert {u.key_id for u in usage(h)} == {"system:bucket"}
    assert {u.tenant_id for u in usage(h)} == {h.tenant.id}


def test_call_route_enforces_the_route_scope() -> None:
    h = make_harness()
    job = start(h, [native(1)])
    principal = replace(job.principal(), scopes=frozenset({"embed"}))
    request = Request("POST", "/v1/generate", {}, {}, native(1), request_id="r1")
    with pytest.raises(Exception, match="generate"):
        asyncio.run(h.gateway.call_route(principal, request))


def _peak_bytes(tmp_path: Path, n_lines: int) -> tuple[int, int]:
    """Peak Python heap of the runner over an n-line batch, and the input's size.

    The store and the files are on disk (SQLite, files) and each line is answered at once, so the heap
    holds only what the runner itself keeps: it must not grow with the batch.
    """
    tmp_path.mkdir(parents=True)
    store = SQLiteStore(tmp_path / "store.db")
    blobs = FileBlobStore(tmp_path / "blobs")
    padding = "p" * 2000  # the file is large next to what the runner may hold
    blobs.write_lines(
        "in.jsonl",
        (
            json.dumps({"model": "m", "prompt": f"line {i}", "max_tokens": 2, "pad": padding}).encode()
            for i in range(n_lines)
        ),
    )
    calls = [0]  # an int, not a record per line: the test must not grow with the batch either

    async def dispatch(principal: Principal, request: Request) -> Response:
        calls[0] += 1
        return Response.json({"id": request.request_id, "results": [{"text": "ok"}]})

    clock = FixedClock()
    job = object_batch(store, blobs, tenant_id="t", input_key="in.jsonl", output_key="o", error_key="e", now=0.0)
    assert job is not None
    runner = BatchRunner(store, blobs, dispatch, clock=clock, settings=RunnerSettings(concurrency=16, page=100))
    gc.collect()
    tracemalloc.start()
    try:
        done = asyncio.run(runner.run(job.tenant_id, job.id))
        _, peak = tracemalloc.get_traced_memory()
    finally:
        tracemalloc.stop()
        store.close()
    assert done is not None
    assert done.completed == n_lines == calls[0]
    ids = [json.loads(line)["response"]["request_id"] for line in (blobs.root / "o").read_bytes().splitlines()]
    assert len(set(ids)) == n_lines  # n calls, n distinct lines answered: each line exactly once
    return peak, (blobs.root / "in.jsonl").stat().st_size


def test_memory_stays_flat_as_the_batch_grows(tmp_path: Path) -> None:
    small_peak, _ = _peak_bytes(tmp_path / "small", 1_000)
    large_peak, large_size = _peak_bytes(tmp_path / "large", 5_000)
    assert large_peak < large_size / 8  # the input is streamed, never held
    assert large_peak < small_peak * 1.25 + 256 * 1024  # five times the lines, about the same peak
    print(f"peak {small_peak} B at 1k lines, {large_peak} B at 5k lines ({large_size} B of input)")
