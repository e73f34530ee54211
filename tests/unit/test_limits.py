"""Rate limits and quotas: reserve an upper bound, refuse with 429, settle what was used."""

from __future__ import annotations

import asyncio
import calendar
import json
import math
from dataclasses import replace
from typing import Any

import pytest

from core.auth import api_keys
from core.domain import Limits
from core.errors import BackendError, BackendTimeout
from core.http import Request, Response
from core.limits import period_bounds
from tests.fakes import FakeBackend, Harness, error_of, json_of, make_harness

PROMPT = "a b c"  # 3 tokens for the fake backend; 5 bytes, so a completion reserves 6 + max_tokens
RESERVE_BASE = len(PROMPT.encode()) + 1


def completion(h: Harness, max_tokens: int = 10, key: str | None = None, **extra: Any) -> Response:
    body = {"model": "fake-gen", "prompt": PROMPT, "max_tokens": max_tokens, **extra}
    return h.call_json("POST", "/v1/completions", body, key=key)


def seconds_to_next_minute(h: Harness) -> int:
    now = h.clock.now()
    return math.ceil((now // 60 + 1) * 60 - now)


def counters(h: Harness) -> dict[str, dict[str, int]]:
    """Every live counter item of the in-memory store, without the lease bookkeeping (``core.leases``)."""
    return {
        item: {name: v for name, v in h.store.read(item).items() if not name.startswith(("lease", "epoch"))}
        for item in list(h.store._s.counters)
    }


def leases_held(h: Harness) -> int:
    """Tokens that reservations still hold in lease slots: 0 once every request has settled."""
    return sum(
        v for item in list(h.store._s.counters) for name, v in h.store.read(item).items() if name.startswith("lease")
    )


def normalised_counters(h: Harness) -> dict[str, dict[str, int]]:
    """Counters with the harness's own key id replaced by ``K``, to compare two harnesses."""
    kid = api_keys.parse_key(h.key)
    return {
        item.split("|")[0]: {name.replace(kid, "K"): v for name, v in values.items()}
        for item, values in counters(h).items()
    }


def set_key_limits(h: Harness, key: str, limits: Limits) -> None:
    record = h.store.get_key(api_keys.parse_key(key))
    assert record is not None
    h.store.put_key(replace(record, limits=limits))
    h.gateway.auth.forget(record.id)


def second_key(h: Harness) -> str:
    plain, record = api_keys.mint(h.tenant.id, "second", frozenset({"generate", "embed"}), h.clock.now())
    h.store.put_key(record)
    return plain


def assert_rate_limited(resp: Response) -> dict[str, Any]:
    assert resp.status == 429, resp.body
    err = error_of(resp)
    assert err["type"] == "rate_limit_error"
    assert err["code"] == "rate_limit_exceeded"
    return err


def assert_quota_exceeded(resp: Response) -> dict[str, Any]:
    assert resp.status == 429, resp.body
    err = error_of(resp)
    assert err["type"] == "insufficient_quota"
    assert err["code"] == "insufficient_quota"
    return err


# -- requests per minute -------------------------------------------------------------------------------


def test_tenant_rpm_refuses_the_request_after_the_limit_with_headers() -> None:
    h = make_harness(limits=Limits(requests_per_minute=2))
    reset = seconds_to_next_minute(h)
    assert reset == 40  # the fixed clock sits 20 s into a minute
    first, second = completion(h), completion(h)
    assert (first.status, second.status) == (200, 200)
    assert first.headers["x-ratelimit-limit-requests"] == "2"
    assert first.headers["x-ratelimit-remaining-requests"] == "1"
    assert second.headers["x-ratelimit-remaining-requests"] == "0"
    assert first.headers["x-ratelimit-reset-requests"] == f"{reset}s"

    refused = completion(h)
    assert_rate_limited(refused)
    assert refused.headers["retry-after"] == str(reset)
    assert refused.headers["x-ratelimit-limit-requests"] == "2"
    assert refused.headers["x-ratelimit-remaining-requests"] == "0"
    assert refused.headers["x-ratelimit-reset-requests"] == f"{reset}s"
    assert "x-request-id" in refused.headers
    assert h.backend.calls == 2
    assert len(h.usage()) == 2  # a refused request is not metered


def test_retry_after_counts_down_to_the_next_minute() -> None:
    h = make_harness(limits=Limits(requests_per_minute=1))
    assert completion(h).status == 200
    h.clock.advance(15)
    refused = completion(h)
    assert_rate_limited(refused)
    assert refused.headers["retry-after"] == "25"
    h.clock.advance(24.5)
    assert completion(h).headers["retry-after"] == "1"  # never 0: the caller must wait


def test_the_next_minute_resets_rpm() -> None:
    h = make_harness(limits=Limits(requests_per_minute=1))
    assert completion(h).status == 200
    assert completion(h).status == 429
    h.clock.advance(seconds_to_next_minute(h))
    again = completion(h)
    assert again.status == 200
    assert again.headers["x-ratelimit-remaining-requests"] == "0"


def test_key_rpm_limits_only_that_key() -> None:
    h = make_harness()
    other = second_key(h)
    set_key_limits(h, h.key, Limits(requests_per_minute=1))
    assert completion(h).status == 200
    err = assert_rate_limited(completion(h))
    assert "key" in err["message"]
    for _ in range(3):
        assert completion(h, key=other).status == 200


def test_tenant_rpm_is_shared_by_its_keys() -> None:
    h = make_harness(limits=Limits(requests_per_minute=2))
    other = second_key(h)
    assert completion(h).status == 200
    assert completion(h, key=other).status == 200
    assert_rate_limited(completion(h, key=other))
    # Another tenant is not affected.
    _, b_key = h.new_tenant("b")
    assert completion(h, key=b_key).status == 200


def test_headers_report_the_tightest_of_tenant_and_key_limits() -> None:
    h = make_harness(limits=Limits(requests_per_minute=10))
    set_key_limits(h, h.key, Limits(requests_per_minute=3))
    resp = completion(h)
    assert resp.headers["x-ratelimit-limit-requests"] == "3"
    assert resp.headers["x-ratelimit-remaining-requests"] == "2"


def test_no_limits_no_ratelimit_headers(harness: Harness) -> None:
    resp = completion(harness)
    assert resp.status == 200
    assert not [h for h in resp.headers if h.startswith("x-ratelimit")]


def test_concurrent_requests_never_pass_the_limit() -> None:
    h = make_harness(limits=Limits(requests_per_minute=3), backend=FakeBackend(delay_s=0.01))
    body = json.dumps({"model": "fake-gen", "prompt": PROMPT, "max_tokens": 4}).encode()

    async def burst() -> list[Response]:
        reqs = [Request("POST", "/v1/completions", {"authorization": f"Bearer {h.key}"}, {}, body) for _ in range(10)]
        return list(await asyncio.gather(*(h.gateway.handle(r) for r in reqs)))

    statuses = sorted(r.status for r in asyncio.run(burst()))
    assert statuses == [200] * 3 + [429] * 7


# -- tokens per minute ---------------------------------------------------------------------------------


def test_tpm_reserves_the_upper_bound_and_settle_returns_the_unused_part() -> None:
    h = make_harness(limits=Limits(tokens_per_minute=100))
    reserve = RESERVE_BASE + 50
    first = completion(h, max_tokens=50)
    assert first.status == 200
    assert first.headers["x-ratelimit-limit-tokens"] == "100"
    assert first.headers["x-ratelimit-remaining-tokens"] == str(100 - reserve)
    used = json_of(first)["usage"]["total_tokens"]
    assert used == 6
    # Without the settle, 56 + 56 would not fit in 100.
    second = completion(h, max_tokens=50)
    assert second.status == 200
    assert second.headers["x-ratelimit-remaining-tokens"] == str(100 - used - reserve)
    (minute,) = counters(h).values()
    assert minute["tok"] == 2 * used
    assert minute["req"] == 2


def test_tpm_refuses_when_the_reservation_does_not_fit() -> None:
    h = make_harness(limits=Limits(tokens_per_minute=60))
    assert completion(h, max_tokens=50).status == 200  # 56 reserved, 6 kept
    refused = completion(h, max_tokens=54)  # 6 + 60 > 60
    assert_rate_limited(refused)
    assert refused.headers["x-ratelimit-remaining-tokens"] == "54"
    assert refused.headers["retry-after"] == str(seconds_to_next_minute(h))
    assert completion(h, max_tokens=48).status == 200  # 6 + 54 fits exactly


def test_a_request_larger_than_tpm_says_so() -> None:
    h = make_harness(limits=Limits(tokens_per_minute=20))
    err = assert_rate_limited(completion(h, max_tokens=100))
    assert "max_tokens" in err["message"]
    assert h.backend.calls == 0


def test_key_tpm() -> None:
    h = make_harness()
    set_key_limits(h, h.key, Limits(tokens_per_minute=30))
    assert completion(h, max_tokens=20).status == 200  # 26 reserved, 6 kept
    assert_rate_limited(completion(h, max_tokens=20))  # 6 + 26 > 30
    assert completion(h, max_tokens=20, key=second_key(h)).status == 200


def test_omitted_max_tokens_reserves_the_models_maximum() -> None:
    h = make_harness(limits=Limits(tokens_per_minute=1000))
    resp = h.call_json("POST", "/v1/completions", {"model": "fake-gen", "prompt": PROMPT})
    assert resp.status == 200
    assert resp.headers["x-ratelimit-remaining-tokens"] == str(1000 - RESERVE_BASE - 256)


# -- quota ---------------------------------------------------------------------------------------------


def test_tenant_quota_refuses_with_insufficient_quota() -> None:
    h = make_harness(limits=Limits(token_quota=20))
    assert completion(h, max_tokens=10).status == 200  # reserves 16, uses 6
    refused = completion(h, max_tokens=10)  # 6 + 16 > 20
    err = assert_quota_exceeded(refused)
    assert "quota" in err["message"]
    _, period_end = period_bounds(h.clock.now(), "month")
    assert refused.headers["retry-after"] == str(math.ceil(period_end - h.clock.now()))
    assert h.backend.calls == 1
    assert completion(h, max_tokens=8).status == 200  # 6 + 14 fits exactly


def test_key_quota_limits_only_that_key() -> None:
    h = make_harness()
    set_key_limits(h, h.key, Limits(token_quota=20))
    assert completion(h, max_tokens=10).status == 200
    assert_quota_exceeded(completion(h, max_tokens=10))
    assert completion(h, max_tokens=10, key=second_key(h)).status == 200


def test_tenant_quota_is_shared_by_its_keys() -> None:
    h = make_harness(limits=Limits(token_quota=20))
    other = second_key(h)
    assert completion(h, max_tokens=10).status == 200
    assert_quota_exceeded(completion(h, max_tokens=10, key=other))


def test_a_request_refused_on_quota_leaves_the_minute_counters_unchanged() -> None:
    h = make_harness(limits=Limits(requests_per_minute=5, tokens_per_minute=1000, token_quota=20))
    ok = completion(h, max_tokens=10)
    assert ok.status == 200
    before = counters(h)
    refused = completion(h, max_tokens=10)
    assert_quota_exceeded(refused)
    assert counters(h) == before
    # Its headers describe the minute as the refusal left it: only the first request counts.
    assert refused.headers["x-ratelimit-remaining-requests"] == "4"
    assert refused.headers["x-ratelimit-remaining-tokens"] == str(1000 - 6)
    after = completion(h, max_tokens=8)
    assert after.status == 200
    assert after.headers["x-ratelimit-remaining-requests"] == "3"  # the refused one was undone
    assert after.headers["x-ratelimit-remaining-tokens"] == str(1000 - 6 - (RESERVE_BASE + 8))


def test_monthly_quota_resets_next_month() -> None:
    h = make_harness(limits=Limits(token_quota=20, quota_period="month"))
    assert completion(h).status == 200
    assert completion(h).status == 429
    h.clock.advance(6 * 86_400)  # still September
    assert completion(h).status == 429
    _, end = period_bounds(h.clock.now(), "month")
    h.clock.t = end
    assert completion(h).status == 200


def test_daily_quota_resets_next_day() -> None:
    h = make_harness(limits=Limits(token_quota=20, quota_period="day"))
    assert completion(h).status == 200
    refused = completion(h)
    assert_quota_exceeded(refused)
    _, end = period_bounds(h.clock.now(), "day")
    assert refused.headers["retry-after"] == str(math.ceil(end - h.clock.now()))
    h.clock.t = end
    assert completion(h).status == 200


def test_a_keys_daily_quota_resets_daily_under_a_monthly_tenant_quota() -> None:
    h = make_harness(limits=Limits(token_quota=1_000_000, quota_period="month"))
    set_key_limits(h, h.key, Limits(token_quota=20, quota_period="day"))
    for _day in range(3):
        assert completion(h).status == 200
        assert_quota_exceeded(completion(h))
        h.clock.advance(86_400)
    # The tenant's monthly counter kept counting across the days.
    other = second_key(h)
    set_key_limits(h, other, Limits())
    h.store.put_tenant(replace(h.tenant, limits=Limits(token_quota=18, quota_period="month")))
    h.gateway.tenants.forget(h.tenant.id)
    assert_quota_exceeded(completion(h, key=other, max_tokens=1))  # 18 used already


def test_a_keys_monthly_quota_outlives_a_daily_tenant_quota() -> None:
    h = make_harness(limits=Limits(token_quota=1000, quota_period="day"))
    set_key_limits(h, h.key, Limits(token_quota=30, quota_period="month"))
    assert completion(h).status == 200  # key: 6 of 30
    h.clock.advance(86_400)
    assert completion(h).status == 200  # key: 12 of 30
    h.clock.advance(86_400)
    assert completion(h).status == 200  # key: 18 of 30
    assert_quota_exceeded(completion(h))  # 18 + 16 > 30, whatever day it is


def test_quota_period_helper() -> None:
    t = calendar.timegm((2024, 2, 10, 12, 0, 0))
    assert period_bounds(t, "month") == ("2024-02", calendar.timegm((2024, 3, 1, 0, 0, 0)))
    assert period_bounds(t, "day") == ("2024-02-10", calendar.timegm((2024, 2, 11, 0, 0, 0)))
    assert period_bounds(calendar.timegm((2024, 12, 31, 23, 59, 59)), "month")[1] == calendar.timegm(
        (2025, 1, 1, 0, 0, 0)
    )


# -- settling ------------------------------------------------------------------------------------------


def test_a_failed_backend_call_settles_to_zero_and_records_the_error() -> None:
    backend = FakeBackend(failures=[BackendError("model crashed", status=502)])
    h = make_harness(limits=Limits(requests_per_minute=10, tokens_per_minute=100, token_quota=20), backend=backend)
    failed = completion(h, max_tokens=10)
    assert failed.status == 502
    assert error_of(failed)["code"] == "backend_error"
    (record,) = h.usage()
    assert (record.prompt_tokens, record.completion_tokens, record.cost) == (0, 0, 0.0)
    assert record.status == 502
    assert not record.cached
    for values in counters(h).values():
        assert all(v == 0 for name, v in values.items() if not name.startswith("req"))
    assert leases_held(h) == 0
    # Nothing was charged: the full quota is still there (6 + 14 = 20).
    ok = completion(h, max_tokens=14)
    assert ok.status == 200
    assert ok.headers["x-ratelimit-remaining-tokens"] == str(100 - (RESERVE_BASE + 14))


def test_a_timed_out_backend_call_settles_to_zero() -> None:
    h = make_harness(limits=Limits(token_quota=20), backend=FakeBackend(failures=[TimeoutError()] * 3))
    resp = completion(h, max_tokens=10)
    assert resp.status == 504
    (record,) = h.usage()
    assert (record.prompt_tokens, record.completion_tokens, record.status) == (0, 0, 504)
    assert completion(h, max_tokens=14).status == 200


def test_settle_charges_the_reported_usage_to_the_quota() -> None:
    h = make_harness(limits=Limits(token_quota=100))
    body = {"model": "fake-gen", "prompt": "one two three four five six seven eight", "max_tokens": 4}
    resp = h.call_json("POST", "/v1/completions", body)
    usage = json_of(resp)["usage"]
    assert usage == {"prompt_tokens": 8, "completion_tokens": 4, "total_tokens": 12}
    quota = [v for item, v in counters(h).items() if item.startswith("q|")]
    assert quota
    assert all(sum(v.values()) == 2 * 12 for v in quota)  # the tenant's and the key's counters
    (record,) = h.usage()
    assert record.total_tokens == 12
    assert record.cost == pytest.approx(8 * 1.0 / 1000 + 4 * 2.0 / 1000)


# -- streaming -----------------------------------------------------------------------------------------


def stream_body(max_tokens: int = 10, prompt: str = PROMPT) -> dict[str, Any]:
    return {"model": "fake-gen", "prompt": prompt, "max_tokens": max_tokens, "stream": True}


def chat_stream_body(max_tokens: int = 10, content: str = PROMPT) -> dict[str, Any]:
    messages = [{"role": "user", "content": content}]
    return {"model": "fake-gen", "messages": messages, "max_tokens": max_tokens, "stream": True}


def test_streamed_calls_are_metered_like_non_streamed_ones() -> None:
    prompt = "one two three four five six"
    plain = make_harness(limits=Limits(tokens_per_minute=1000, token_quota=1000))
    streamed = make_harness(limits=Limits(tokens_per_minute=1000, token_quota=1000))
    body = {"model": "fake-gen", "prompt": prompt, "max_tokens": 4}
    assert plain.call_json("POST", "/v1/completions", body).status == 200
    resp, chunks = streamed.stream("/v1/completions", {**body, "stream": True})
    assert resp.status == 200
    assert chunks[-1] == b"data: [DONE]\n\n"
    assert resp.headers["x-ratelimit-remaining-tokens"] == str(1000 - (len(prompt) + 1 + 4))
    (a,), (b,) = plain.usage(), streamed.usage()
    assert (a.prompt_tokens, a.completion_tokens, a.status) == (6, 4, 200)
    assert a.cost == pytest.approx(6 * 1.0 / 1000 + 4 * 2.0 / 1000)
    assert (b.prompt_tokens, b.completion_tokens, b.cost, b.status) == (
        a.prompt_tokens,
        a.completion_tokens,
        a.cost,
        200,
    )
    assert counters(plain) != {}
    assert normalised_counters(plain) == normalised_counters(streamed)


def test_a_client_that_stops_reading_mid_stream_is_charged_only_what_was_produced() -> None:
    h = make_harness(limits=Limits(token_quota=1000))
    prompt = " ".join(f"w{i}" for i in range(20))
    body = json.dumps(stream_body(max_tokens=20, prompt=prompt)).encode()

    async def read_three_then_hang_up() -> list[Any]:
        resp = await h.gateway.handle(
            Request("POST", "/v1/completions", {"authorization": f"Bearer {h.key}"}, {}, body)
        )
        assert resp.status == 200
        assert resp.stream is not None
        stream: Any = resp.stream
        for _ in range(3):
            await anext(stream)
        assert h.usage() == []  # still streaming
        await stream.aclose()  # what the server does when the client disconnects
        return h.usage()  # settled at once, not when the garbage collector gets to it

    (record,) = asyncio.run(read_three_then_hang_up())
    assert record.completion_tokens == 3
    assert (record.status, record.ended) == (499, "client_gone")
    assert h.backend.calls == 1
    quota = [v for item, v in counters(h).items() if item.startswith("q|")]
    assert all(sum(v.values()) == 2 * record.total_tokens for v in quota)


def quota_used(h: Harness) -> int:
    """The tenant's quota counter (``used``) of this month."""
    [values] = [v for item, v in counters(h).items() if item.startswith("q|")]
    return values["used"]


def test_a_stream_that_breaks_after_content_is_charged_what_was_delivered() -> None:
    """Two words reached the caller before the backend failed: they are charged, not 0 (LiteLLM's zero spend)."""
    h = make_harness(limits=Limits(token_quota=1000), backend=FakeBackend(stream_error_after=2))
    resp, chunks = h.stream("/v1/completions", stream_body(max_tokens=5, prompt="a b c d e"))
    assert resp.status == 200  # the headers were already sent
    assert b'"error"' in chunks[-2]
    assert chunks[-1] == b"data: [DONE]\n\n"
    (record,) = h.usage()
    # No usage came: the prompt is estimated (9 bytes, ~4 a token: 3) and the two deltas are two tokens.
    assert (record.prompt_tokens, record.completion_tokens, record.status, record.ended) == (3, 2, 502, "backend_error")
    assert quota_used(h) == record.total_tokens


def test_a_stream_that_fails_before_any_content_is_charged_nothing() -> None:
    h = make_harness(limits=Limits(token_quota=1000), backend=FakeBackend(stream_error_after=0))
    resp, _chunks = h.stream("/v1/completions", stream_body(max_tokens=5, prompt="a b c d e"))
    assert resp.status == 502  # the first event was the error: a plain HTTP error
    (record,) = h.usage()
    assert (record.total_tokens, record.status, record.ended) == (0, 502, "failed")
    assert quota_used(h) == 0


def test_a_stream_cut_without_its_end_says_so_and_charges_what_was_delivered() -> None:
    """No finish reason is invented: the caller gets an error event, never finish_reason "stop"."""
    h = make_harness(limits=Limits(token_quota=1000), backend=FakeBackend(stream_ends=False))
    resp, chunks = h.stream("/v1/chat/completions", chat_stream_body(max_tokens=5, content="a b c"))
    assert resp.status == 200
    events = [json.loads(c.removeprefix(b"data: ")) for c in chunks[:-1]]
    assert not any(c.get("choices") and c["choices"][0].get("finish_reason") for c in events)
    assert events[-1]["error"]["code"] == "stream_truncated"
    (record,) = h.usage()
    assert (record.completion_tokens, record.status, record.ended) == (3, 502, "truncated")
    assert record.prompt_tokens > 0
    assert quota_used(h) == record.total_tokens


def test_a_stream_that_ends_without_usage_is_counted_by_the_gateway() -> None:
    h = make_harness(limits=Limits(token_quota=1000), backend=FakeBackend(stream_usage=False))
    _resp, chunks = h.stream("/v1/completions", stream_body(max_tokens=5, prompt="a b c d e"))
    assert b'"finish_reason":"stop"' in b"".join(chunks)
    (record,) = h.usage()
    assert (record.completion_tokens, record.status, record.ended) == (5, 200, "completed")
    assert record.prompt_tokens == 3
    assert quota_used(h) == record.total_tokens


def test_a_stream_that_times_out_after_content_is_recorded_as_such() -> None:
    error = BackendTimeout()
    h = make_harness(limits=Limits(token_quota=1000), backend=FakeBackend(stream_error_after=1, stream_error=error))
    h.stream("/v1/completions", stream_body(max_tokens=5, prompt="a b c d e"))
    (record,) = h.usage()
    assert (record.completion_tokens, record.status, record.ended) == (1, 504, "timeout")


def test_a_stream_refused_on_limits_is_a_plain_429() -> None:
    h = make_harness(limits=Limits(requests_per_minute=1))
    assert h.stream("/v1/completions", stream_body())[0].status == 200
    resp, chunks = h.stream("/v1/completions", stream_body())
    assert_rate_limited(resp)
    assert chunks == []
    assert h.backend.calls == 1
