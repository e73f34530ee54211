"""One generation through the Gateway: plan, reserve, call, settle, meter, cache, stream."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from core.clock import FixedClock
from core.domain import Limits, Principal
from core.errors import BackendError
from core.inference import Prompt
from core.metering import Meter
from core.observability import NullMetrics
from core.token_counts import CHAT_BASE_ALLOWANCE, CHAT_PER_MESSAGE_ALLOWANCE
from tests.fakes import GEN, FakeBackend, Harness, error_of, json_of, make_harness, words_of

LIMITS = Limits(tokens_per_minute=100_000)


class WordCounter:
    """A TokenCounter that knows the fake model's tokenizer: one token per word."""

    def __init__(self) -> None:
        self.calls = 0

    def count(self, route: Mapping[str, Any], prompt: Prompt) -> int | None:
        self.calls += 1
        return len(words_of(prompt)) if route.get("name") == "gen" else None


def reserved(resp: Any, limit: int = 100_000) -> int:
    """Tokens held by the request, read from its rate-limit headers (no other request in flight)."""
    return limit - int(resp.headers["x-ratelimit-remaining-tokens"])


def sse_payloads(chunks: list[bytes]) -> list[Any]:
    out: list[Any] = []
    for chunk in chunks:
        assert chunk.startswith(b"data: ")
        assert chunk.endswith(b"\n\n")
        data = chunk[len(b"data: ") : -2]
        out.append(data.decode() if data == b"[DONE]" else json.loads(data))
    return out


# -- non-streamed ----------------------------------------------------------------------------------------


def test_completion_is_metered_once_with_tokens_cost_and_ids(harness: Harness) -> None:
    body = {"model": "fake-gen", "prompt": "one two three four", "max_tokens": 2}
    resp = harness.call_json("POST", "/v1/completions", body)
    assert resp.status == 200
    out = json_of(resp)
    assert out["choices"][0]["text"] == "one two"
    assert out["choices"][0]["finish_reason"] == "length"
    assert out["usage"] == {"prompt_tokens": 4, "completion_tokens": 2, "total_tokens": 6}
    assert out["cached"] is False
    assert resp.headers["x-textnlp-cache"] == "miss"
    (record,) = harness.usage()
    assert out["id"] == f"cmpl-{record.request_id}"
    assert record.tenant_id == harness.tenant.id
    assert record.model == "fake-gen"
    assert record.endpoint == "completions"
    assert (record.prompt_tokens, record.completion_tokens, record.status, record.cached) == (4, 2, 200, False)
    assert record.cost == pytest.approx(4 / 1000 * 1.0 + 2 / 1000 * 2.0)
    assert record.created_at == harness.clock.now()


@pytest.mark.parametrize(
    ("path", "body", "endpoint"),
    [
        ("/v1/generate", {"model": "fake-gen", "prompt": "a b"}, "generate"),
        (
            "/v1/chat/completions",
            {"model": "fake-gen", "messages": [{"role": "user", "content": "a b"}]},
            "chat.completions",
        ),
        ("/v1/embeddings", {"model": "fake-emb", "input": "a b"}, "embeddings"),
    ],
)
def test_every_endpoint_writes_one_usage_record(
    harness: Harness, path: str, body: dict[str, Any], endpoint: str
) -> None:
    resp = harness.call_json("POST", path, body)
    assert resp.status == 200, resp.body
    (record,) = harness.usage()
    assert record.endpoint == endpoint
    assert record.prompt_tokens == 2
    assert record.status == 200


def test_native_generate_runs_every_prompt_n_times_and_reserves_for_all() -> None:
    h = make_harness(limits=LIMITS)
    body = {"model": "fake-gen", "prompt": ["a b c", "d e"], "n": 2, "max_tokens": 5}
    resp = h.call_json("POST", "/v1/generate", body)
    assert resp.status == 200
    out = json_of(resp)
    assert [(r["index"], r["prompt_index"], r["text"]) for r in out["results"]] == [
        (0, 0, "a b c"),
        (1, 0, "a b c"),
        (2, 1, "d e"),
        (3, 1, "d e"),
    ]
    assert out["usage"] == {"prompt_tokens": 10, "completion_tokens": 10, "total_tokens": 20}
    assert "text" not in out  # several prompts: no single answer at the top
    assert h.backend.calls == 4
    # n * (each prompt's byte bound + max_tokens per prompt)
    assert reserved(resp) == 2 * ((5 + 1) + (3 + 1) + 2 * 5)
    (record,) = h.usage()
    assert record.total_tokens == 20


def test_native_generate_with_one_prompt_answers_its_text_at_the_top(harness: Harness) -> None:
    """A prompt given as a string: ``text`` is the first result's, beside ``results`` and ``usage``."""
    out = json_of(harness.call_json("POST", "/v1/generate", {"model": "fake-gen", "prompt": "a b c", "max_tokens": 2}))
    assert list(out) == ["id", "object", "created", "model", "text", "results", "usage", "cached"]
    assert out["text"] == out["results"][0]["text"] == "a b"
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 2, "total_tokens": 5}
    several = json_of(harness.call_json("POST", "/v1/generate", {"model": "fake-gen", "prompt": "x y", "n": 2}))
    assert several["text"] == several["results"][0]["text"] == "x y"
    assert len(several["results"]) == 2
    listed = json_of(harness.call_json("POST", "/v1/generate", {"model": "fake-gen", "prompt": ["x y"]}))
    assert "text" not in listed  # a list, even of one: the answer's shape follows the request's
    assert listed["results"][0]["text"] == "x y"


def test_chat_reserves_bytes_plus_the_template_allowance() -> None:
    h = make_harness(limits=LIMITS)
    messages = [{"role": "system", "content": "be brief"}, {"role": "user", "content": "héllo there"}]
    resp = h.call_json("POST", "/v1/chat/completions", {"model": "fake-gen", "messages": messages, "max_tokens": 7})
    assert resp.status == 200
    content_bytes = sum(len(m["role"].encode()) + len(m["content"].encode()) for m in messages)
    assert reserved(resp) == content_bytes + CHAT_BASE_ALLOWANCE + 2 * CHAT_PER_MESSAGE_ALLOWANCE + 7
    out = json_of(resp)
    assert out["object"] == "chat.completion"
    assert out["choices"][0]["message"] == {"role": "assistant", "content": "be brief héllo there"}


def test_max_completion_tokens_wins_over_max_tokens() -> None:
    h = make_harness(limits=LIMITS)
    body = {"model": "fake-gen", "messages": [{"role": "user", "content": "a b c d"}], "max_tokens": 3,
            "max_completion_tokens": 1}  # fmt: skip
    out = json_of(h.call_json("POST", "/v1/chat/completions", body))
    assert out["usage"]["completion_tokens"] == 1


def test_a_reservation_is_an_upper_bound_of_what_is_charged() -> None:
    h = make_harness(limits=LIMITS)
    text = "ünïcödé wörds " * 20
    resp = h.call_json("POST", "/v1/completions", {"model": "fake-gen", "prompt": text, "max_tokens": 50})
    assert resp.status == 200
    assert json_of(resp)["usage"]["total_tokens"] <= reserved(resp)
    assert reserved(resp) == len(text.encode()) + 1 + 50


def test_the_byte_bound_is_capped_at_the_models_context() -> None:
    h = make_harness(limits=LIMITS)
    h.add_model(replace(GEN, id="tiny", context_length=64, max_output_tokens=8))
    resp = h.call_json("POST", "/v1/completions", {"model": "tiny", "prompt": "x" * 1000, "max_tokens": 8})
    assert resp.status == 200
    assert reserved(resp) == 64 + 8


def test_echo_prepends_the_prompt(harness: Harness) -> None:
    out = json_of(harness.call_json("POST", "/v1/completions", {"model": "fake-gen", "prompt": "a b", "echo": True}))
    assert out["choices"][0]["text"] == "a ba b"


def test_embeddings_are_metered_from_the_backends_count() -> None:
    h = make_harness(limits=LIMITS)
    resp = h.call_json("POST", "/v1/embeddings", {"model": "fake-emb", "input": ["one two", "three"]})
    assert resp.status == 200
    out = json_of(resp)
    assert [d["index"] for d in out["data"]] == [0, 1]
    assert out["data"][0]["embedding"] == [7.0, 2.0, 1.0]
    assert out["usage"] == {"prompt_tokens": 3, "completion_tokens": 0, "total_tokens": 3}
    assert reserved(resp) == (7 + 1) + (5 + 1)
    (record,) = h.usage()
    assert (record.prompt_tokens, record.completion_tokens) == (3, 0)


def test_base64_embeddings_decode_to_the_same_floats(harness: Harness) -> None:
    import base64
    import struct

    out = json_of(
        harness.call_json(
            "POST", "/v1/embeddings", {"model": "fake-emb", "input": "a b c", "encoding_format": "base64"}
        )
    )
    raw = base64.b64decode(out["data"][0]["embedding"])
    assert list(struct.unpack("<3f", raw)) == [5.0, 3.0, 1.0]


def test_a_fallback_that_served_the_call_is_what_gets_metered(harness: Harness) -> None:
    primary = FakeBackend(failures=[BackendError("down", status=503, retryable=True)] * 3)
    harness.add_model(
        replace(GEN, id="primary", backend={"type": "local", "name": "p"}, fallbacks=("fake-gen",)), primary
    )
    resp = harness.call_json("POST", "/v1/completions", {"model": "primary", "prompt": "a b", "max_tokens": 2})
    assert resp.status == 200
    assert json_of(resp)["model"] == "fake-gen"
    (record,) = harness.usage()
    assert record.model == "fake-gen"
    assert primary.calls == 3
    assert harness.backend.calls == 1


def test_an_unexpected_backend_exception_is_a_500_without_details_and_charges_nothing() -> None:
    h = make_harness(
        limits=Limits(token_quota=1000), backend=FakeBackend(failures=[RuntimeError("secret stack detail")])
    )
    resp = h.call_json("POST", "/v1/completions", {"model": "fake-gen", "prompt": "a b", "max_tokens": 2})
    assert resp.status == 500
    err = error_of(resp)
    assert err["type"] == "api_error"
    assert "secret" not in resp.body.decode()
    (record,) = h.usage()
    assert (record.total_tokens, record.status) == (0, 500)


def test_usage_records_are_idempotent_by_request_id(harness: Harness) -> None:
    meter = Meter(harness.store, FixedClock(), NullMetrics())
    who = Principal(harness.tenant.id, "key_x", frozenset({"generate"}))
    for tokens in (5, 99):
        meter.record(request_id="req_same", principal=who, model=GEN, endpoint="completions", prompt_tokens=tokens,
                     completion_tokens=1, cached=False, latency_ms=1.0, status=200)  # fmt: skip
    (record,) = harness.usage()
    assert record.prompt_tokens == 5
    day = json_of(harness.call("GET", "/v1/usage", query={"group_by": "none"}))
    assert day["totals"]["requests"] == 1


# -- exact token counts ------------------------------------------------------------------------------------


def test_a_token_counter_tightens_the_reservation() -> None:
    counter = WordCounter()
    h = make_harness(limits=LIMITS, token_counter=counter)
    resp = h.call_json("POST", "/v1/completions", {"model": "fake-gen", "prompt": "alpha beta gamma", "max_tokens": 10})
    assert resp.status == 200
    assert reserved(resp) == 3 + 10
    assert counter.calls >= 1


def test_a_prompt_longer_than_the_context_is_refused_before_anything_is_reserved() -> None:
    h = make_harness(limits=Limits(requests_per_minute=10, token_quota=10_000), token_counter=WordCounter())
    h.add_model(replace(GEN, id="small", context_length=32, max_output_tokens=16))
    body = {"model": "small", "prompt": "w " * 40, "max_tokens": 4}
    resp = h.call_json("POST", "/v1/completions", body)
    assert resp.status == 400
    err = error_of(resp)
    assert err["code"] == "context_length_exceeded"
    assert err["param"] == "prompt"
    # Prompt fits but prompt + max_tokens does not: the caller should lower max_tokens.
    resp = h.call_json("POST", "/v1/completions", {**body, "prompt": "w " * 20, "max_tokens": 16})
    assert error_of(resp)["param"] == "max_tokens"
    assert h.backend.calls == 0
    assert h.usage() == []
    assert all(not any(v.values()) for v in (h.store.read(i) for i in h.store._s.counters))


def test_a_stream_cut_short_is_charged_the_exact_prompt_when_it_is_known() -> None:
    import asyncio

    from core.http import Request

    h = make_harness(token_counter=WordCounter())
    body = json.dumps({"model": "fake-gen", "prompt": "a b c d e f", "max_tokens": 6, "stream": True}).encode()

    async def go() -> None:
        resp = await h.gateway.handle(
            Request("POST", "/v1/completions", {"authorization": f"Bearer {h.key}"}, {}, body)
        )
        stream: Any = resp.stream
        await anext(stream)
        await stream.aclose()

    asyncio.run(go())
    (record,) = h.usage()
    assert (record.prompt_tokens, record.completion_tokens, record.status) == (6, 1, 499)


# -- streamed ------------------------------------------------------------------------------------------------


def test_chat_stream_sends_openai_chunks_then_usage_then_done(harness: Harness) -> None:
    body = {"model": "fake-gen", "messages": [{"role": "user", "content": "a b c"}], "stream": True,
            "stream_options": {"include_usage": True}}  # fmt: skip
    resp, chunks = harness.stream("/v1/chat/completions", body)
    assert resp.status == 200
    assert resp.headers["content-type"] == "text/event-stream"
    events = sse_payloads(chunks)
    assert events[-1] == "[DONE]"
    deltas = events[:-3]
    assert deltas[0]["choices"][0]["delta"] == {"role": "assistant", "content": "a"}
    assert "".join(e["choices"][0]["delta"]["content"] for e in deltas) == "a b c"
    assert all(e["object"] == "chat.completion.chunk" for e in events[:-1])
    assert len({e["id"] for e in events[:-1]}) == 1
    finish = events[-3]
    assert finish["choices"][0]["finish_reason"] == "stop"
    assert finish["choices"][0]["delta"] == {}
    usage = events[-2]
    assert usage["choices"] == []
    assert usage["usage"] == {"prompt_tokens": 3, "completion_tokens": 3, "total_tokens": 6}
    (record,) = harness.usage()
    assert events[0]["id"] == f"chatcmpl-{record.request_id}"
    assert (record.prompt_tokens, record.completion_tokens, record.endpoint) == (3, 3, "chat.completions")


def test_completion_stream_without_usage_option_has_no_usage_chunk(harness: Harness) -> None:
    _, chunks = harness.stream("/v1/completions", {"model": "fake-gen", "prompt": "a b", "stream": True})
    events = sse_payloads(chunks)
    assert all("usage" not in e for e in events[:-1])
    assert "".join(e["choices"][0]["text"] for e in events[:-1]) == "a b"
    assert events[-2]["choices"][0]["finish_reason"] == "stop"


def test_a_stream_failing_before_the_first_token_is_a_plain_http_error() -> None:
    h = make_harness(
        limits=Limits(token_quota=1000), backend=FakeBackend(failures=[BackendError("bad input", status=422)])
    )
    resp, chunks = h.stream("/v1/completions", {"model": "fake-gen", "prompt": "a b", "stream": True})
    assert resp.status == 422
    assert resp.stream is None
    assert chunks == []
    (record,) = h.usage()
    assert (record.total_tokens, record.status) == (0, 422)


def test_a_stream_retries_and_falls_back_before_the_first_token(harness: Harness) -> None:
    primary = FakeBackend(failures=[BackendError("busy", status=429, retryable=True)] * 3)
    harness.add_model(
        replace(GEN, id="primary", backend={"type": "local", "name": "p"}, fallbacks=("fake-gen",)), primary
    )
    resp, chunks = harness.stream("/v1/completions", {"model": "primary", "prompt": "a b", "stream": True})
    assert resp.status == 200
    assert sse_payloads(chunks)[-1] == "[DONE]"
    assert primary.calls == 3
    assert harness.backend.calls == 1


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "fake-gen", "prompt": ["a", "b"], "stream": True}),
        ("/v1/completions", {"model": "fake-gen", "prompt": "a", "n": 2, "stream": True}),
        (
            "/v1/chat/completions",
            {"model": "fake-gen", "messages": [{"role": "user", "content": "a"}], "n": 2, "stream": True},
        ),
        ("/v1/generate", {"model": "fake-gen", "prompt": "a", "stream": True}),
    ],
)
def test_unsupported_stream_shapes_are_400_and_cost_nothing(harness: Harness, path: str, body: dict[str, Any]) -> None:
    resp = harness.call_json("POST", path, body)
    assert resp.status == 400
    assert error_of(resp)["type"] == "invalid_request_error"
    assert harness.backend.calls == 0
    assert harness.usage() == []
