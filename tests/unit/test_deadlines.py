"""Deadlines: a runtime's time limit and the caller's timeout bound every model call of a request."""

from __future__ import annotations

import asyncio
import json
import time
from collections.abc import AsyncIterator, Mapping
from dataclasses import replace
from typing import Any

import pytest

from core import deadlines
from core.domain import Limits
from core.errors import InvalidRequest
from core.http import Request, Response
from core.inference import GenerationParams, Prompt, StreamEvent, TextDelta
from core.settings import GatewaySettings
from core.token_counts import prompt_upper_bound
from tests.fakes import GEN, FakeBackend, Harness, error_of, json_of, make_harness

SLOW = replace(GEN, id="slow", backend={"type": "local", "name": "slow"}, timeout_s=60.0, max_retries=2)


class Hanging(FakeBackend):
    """Answers nothing for ``delay_s`` (a backend that hangs); streams one word, then stalls as long."""

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        self.calls += 1
        yield TextDelta("first")
        await asyncio.sleep(self.delay_s)
        yield TextDelta(" never")


def hanging_harness(limits: Limits | None = None, margin_s: float = 1.0) -> tuple[Harness, Hanging]:
    h = make_harness(limits=limits, settings=GatewaySettings(deadline_margin_s=margin_s))
    backend = Hanging(delay_s=30.0)
    h.add_model(SLOW, backend)
    return h, backend


def call(h: Harness, path: str, body: Any, *, left_s: float | None = None, **headers: str) -> Response:
    """``Gateway.handle`` as a runtime with ``left_s`` seconds before it is stopped calls it."""
    request = Request("POST", path, {"authorization": f"Bearer {h.key}", **headers}, {}, json.dumps(body).encode())
    if left_s is not None:
        request.deadline = time.monotonic() + left_s
    return asyncio.run(h.gateway.handle(request))


def completion(max_tokens: int = 4, **fields: Any) -> dict[str, Any]:
    return {"model": "slow", "prompt": "a b c", "max_tokens": max_tokens, **fields}


# -- the context variable -----------------------------------------------------------------------------------


def test_no_deadline_unless_one_is_set() -> None:
    assert deadlines.current() is None
    assert deadlines.time_left(None) is None
    assert deadlines.bounded(7.0, None) == 7.0
    assert deadlines.can_start(None, after_s=1e9)


def test_narrowing_takes_the_earlier_deadline_and_is_undone_after_the_block() -> None:
    now = time.monotonic()
    with deadlines.narrowed(now + 10) as outer:
        assert outer == deadlines.current() == now + 10
        with deadlines.narrowed(now + 20) as later:  # a later deadline never widens the current one
            assert later == deadlines.current() == now + 10
        with deadlines.narrowed(now + 5):
            assert deadlines.current() == now + 5
        with deadlines.narrowed(None):
            assert deadlines.current() == now + 10
        with deadlines.cleared():
            assert deadlines.current() is None
        assert deadlines.current() == now + 10
    assert deadlines.current() is None


def test_bounded_is_the_smaller_of_the_timeout_and_the_time_left() -> None:
    now = time.monotonic()
    assert deadlines.bounded(60.0, now + 2) == pytest.approx(2.0, abs=0.05)
    assert deadlines.bounded(1.0, now + 2) == 1.0
    assert deadlines.bounded(1.0, now - 1) < 0
    assert deadlines.can_start(now + 1)
    assert not deadlines.can_start(now + deadlines.MIN_ATTEMPT_S / 2)
    assert not deadlines.can_start(now + 1, after_s=1 - deadlines.MIN_ATTEMPT_S / 2)


def test_tasks_of_a_task_group_see_the_deadline() -> None:
    async def seen() -> float | None:
        await asyncio.sleep(0)
        return deadlines.current()

    async def go() -> list[float | None]:
        with deadlines.narrowed(123.0):
            async with asyncio.TaskGroup() as group:
                tasks = [group.create_task(seen()) for _ in range(3)]
        return [t.result() for t in tasks]

    assert asyncio.run(go()) == [123.0] * 3


# -- the caller's header ------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("value", "seconds"), [(None, None), ("2.5", 2.5), (" 3 ", 3.0), ("1e-1", 0.1), ("1e9", 900.0)]
)
def test_the_callers_timeout_header(value: str | None, seconds: float | None) -> None:
    assert deadlines.caller_timeout(value) == seconds


@pytest.mark.parametrize("value", ["0", "-1", "", "abc", "nan", "inf", "-inf", "1s", "0x10"])
def test_an_unusable_callers_timeout_is_refused(value: str) -> None:
    with pytest.raises(InvalidRequest) as refused:
        deadlines.caller_timeout(value)
    assert (refused.value.status, refused.value.code, refused.value.param) == (
        400,
        "invalid_timeout",
        "x-textnlp-timeout",
    )


def test_a_bad_timeout_header_is_400_in_the_error_shape_after_authentication() -> None:
    h, backend = hanging_harness()
    resp = call(h, "/v1/completions", completion(), **{"x-textnlp-timeout": "soon"})
    error = error_of(resp)
    assert resp.status == 400
    assert (error["code"], error["param"], error["type"]) == (
        "invalid_timeout",
        "x-textnlp-timeout",
        "invalid_request_error",
    )
    assert backend.calls == 0
    assert h.usage() == []
    no_key = Request("POST", "/v1/completions", {"x-textnlp-timeout": "soon"}, {}, b"{}")
    assert asyncio.run(h.gateway.handle(no_key)).status == 401  # who is asking comes first


def test_the_gateway_deadline_is_the_runtimes_less_the_margin_or_the_callers_if_sooner() -> None:
    gateway = make_harness(settings=GatewaySettings(deadline_margin_s=1.5, max_request_s=900)).gateway
    at = 1000.0
    # No runtime limit and no caller's: max_request_s, the longest any request may hold a reservation.
    assert gateway.deadline_of(Request("GET", "/"), at) == at + 900
    assert gateway.deadline_of(Request("GET", "/", deadline=at + 30), at) == at + 28.5
    timed = Request("GET", "/", {"x-textnlp-timeout": "4"}, deadline=at + 30)
    assert gateway.deadline_of(timed, at) == at + 4
    assert gateway.deadline_of(replace(timed, deadline=at + 3), at) == at + 1.5
    assert gateway.deadline_of(replace(timed, deadline=None), at) == at + 4
    assert gateway.deadline_of(Request("GET", "/", deadline=at + 2000), at) == at + 900
    with pytest.raises(ValueError, match="deadline_margin_s"):
        GatewaySettings(deadline_margin_s=-1)
    with pytest.raises(ValueError, match="max_request_s"):
        GatewaySettings(max_request_s=0)


# -- through the gateway ------------------------------------------------------------------------------------


def test_a_hanging_backend_is_cut_before_the_runtime_stops_504_recorded_and_the_quota_given_back() -> None:
    max_tokens = 4
    quota = prompt_upper_bound(Prompt(text="a b c"), SLOW.context_length) + max_tokens  # what one call reserves
    h, backend = hanging_harness(limits=Limits(token_quota=quota), margin_s=0.5)
    over = call(h, "/v1/completions", completion(max_tokens + 1), left_s=5)
    assert (over.status, error_of(over)["code"]) == (429, "insufficient_quota")  # the quota is exact
    started = time.monotonic()
    resp = call(h, "/v1/completions", completion(max_tokens), left_s=1.0)
    elapsed = time.monotonic() - started
    error = error_of(resp)
    assert resp.status == 504
    assert (error["code"], error["type"]) == ("backend_timeout", "api_error")
    assert "time this request had left" in error["message"]
    assert 0.4 <= elapsed < 0.9  # the deadline less the 0.5 s margin, not the model's 60 s
    assert backend.calls == 1  # no retry started without the time to finish
    [record] = h.usage()
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (504, 0, 0)
    backend.delay_s = 0.0
    served = call(h, "/v1/completions", completion(max_tokens), left_s=5)  # needs the whole quota
    assert served.status == 200, served.body
    assert json_of(served)["choices"][0]["text"] == "a b c"


def test_concurrent_calls_of_one_request_share_its_deadline() -> None:
    h, backend = hanging_harness(margin_s=0.0)
    started = time.monotonic()
    resp = call(h, "/v1/completions", completion(n=3), left_s=0.5)
    assert resp.status == 504
    assert time.monotonic() - started < 1.0
    assert backend.calls == 3
    assert [r.status for r in h.usage()] == [504]


def test_the_callers_timeout_bounds_the_call_without_a_runtime_deadline() -> None:
    h, _ = hanging_harness()
    started = time.monotonic()
    resp = call(h, "/v1/completions", completion(), **{"x-textnlp-timeout": "0.4"})
    assert resp.status == 504
    assert error_of(resp)["code"] == "backend_timeout"
    assert 0.35 <= time.monotonic() - started < 0.9


def test_a_stream_that_stalls_is_cut_at_the_deadline_even_when_read_after_handle_returned() -> None:
    """The local server reads a stream's body after ``handle`` returned: the bound was taken at its start."""
    h, _ = hanging_harness(margin_s=0.0)
    body = {"model": "slow", "messages": [{"role": "user", "content": "hi"}], "stream": True, "max_tokens": 4}

    async def go() -> tuple[Response, list[bytes], float]:
        response = await h.gateway.handle(
            Request("POST", "/v1/chat/completions", {"authorization": f"Bearer {h.key}"}, {}, json.dumps(body).encode(),
                    deadline=time.monotonic() + 0.6)
        )  # fmt: skip
        assert deadlines.current() is None  # nothing is left set once handle returned
        started = time.monotonic()
        assert response.stream is not None
        chunks = [chunk async for chunk in response.stream]
        return response, chunks, time.monotonic() - started

    response, chunks, elapsed = asyncio.run(go())
    assert response.status == 200
    events = [c.decode().removeprefix("data: ").strip() for c in chunks]
    assert json.loads(events[0])["choices"][0]["delta"]["content"] == "first"
    assert json.loads(events[-2])["error"]["code"] == "backend_timeout"
    assert events[-1] == "[DONE]"
    assert elapsed < 0.9  # cut at the deadline, not after the backend's 30 s stall
    [record] = h.usage()
    assert record.status == 504


def test_a_stream_that_stalls_is_cut_at_the_models_timeout() -> None:
    h, _ = hanging_harness()
    h.add_model(replace(SLOW, id="stally", timeout_s=0.3), None)
    body = {"model": "stally", "messages": [{"role": "user", "content": "hi"}], "stream": True}
    started = time.monotonic()
    response, chunks = h.stream("/v1/chat/completions", body)
    assert response.status == 200
    assert b"backend_timeout" in b"".join(chunks)
    assert time.monotonic() - started < 1.5


def test_a_job_started_by_a_request_does_not_inherit_its_deadline(monkeypatch: pytest.MonkeyPatch) -> None:
    h = make_harness()
    seen: list[float | None] = []

    class Runner:
        async def run(self, tenant_id: str, job_id: str) -> None:
            seen.append(deadlines.current())

    monkeypatch.setattr(h.gateway, "batch_runner", lambda *a, **k: Runner())

    async def go() -> None:
        with deadlines.narrowed(time.monotonic() + 1):
            await h.gateway.run_job("batch", "ten_a", "batch_x")

    asyncio.run(go())
    assert seen == [None]


def test_a_fast_backend_is_unaffected_by_a_deadline() -> None:
    h = make_harness()
    resp = call(h, "/v1/completions", {"model": "fake-gen", "prompt": "a b", "max_tokens": 2}, left_s=29.0)
    assert resp.status == 200
    assert isinstance(json_of(resp)["usage"]["total_tokens"], int)
