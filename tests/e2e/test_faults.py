"""Fault injection through the whole local server (issue 10): what a caller gets and what a tenant is charged.

The session's fake OpenAI server fails on purpose when the upstream model is ``fault:<mode>`` (see
bench/fake_openai_server.py); each fault gets a registry model of its own. Every test runs one tenant with a
token quota and checks three things: the answer (status, OpenAI error shape, SSE events), the charge as the
usage API reports it, and that the quota counter holds exactly that charge: the rest of the quota can be
reserved by one request, and one token more is refused with 429 ``insufficient_quota``.

- A non-streamed call that fails (or a stream that fails before any text) is a plain HTTP error and is
  charged nothing.
- A stream that fails after text: the text chunks, then ``data: {"error": ...}`` (never a ``finish_reason``),
  then ``data: [DONE]``; charged one completion token per delivered chunk and a prompt of more than 0 tokens,
  never above what the request reserved.
- A slow stream completes; a caller that leaves mid-stream is charged what was delivered.

The models, requests, case tables and answer checks are shared with the Lambda's suite (tests/fault_cases.py);
this file has how the local server is called and how its usage API reports the charge.
"""

from __future__ import annotations

import json
import re
import time
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest

from tests.e2e._support import Server, error_code
from tests.fault_cases import (
    BROKEN_STREAMS,
    CONTEXT_LENGTH,
    FAILED_CALLS,
    KINDS,
    MAX_OUTPUT_TOKENS,
    MODELS,
    PATHS,
    QUOTA,
    WORDS,
    assert_a_broken_stream,
    assert_a_whole_stream,
    assert_cut_at_the_timeout,
    assert_error_shape,
    chunk_text,
    request_body,
    reservation,
    spend_body,
)

pytestmark = pytest.mark.e2e


@pytest.fixture(scope="module")
def models(server: Server) -> Server:
    assert server.fake_base_url is not None
    for model_id, (upstream, timeout_s, retries) in MODELS.items():
        body = {
            "id": model_id,
            "kind": "generation",
            "backend": {"type": "openai", "base_url": server.fake_base_url, "model": upstream},
            "context_length": CONTEXT_LENGTH,
            "max_output_tokens": MAX_OUTPUT_TOKENS,
            "timeout_s": timeout_s,
            "max_retries": retries,
        }
        response = server.admin.post("/admin/models", json=body)
        assert response.status_code in (201, 409), response.text
    return server


@dataclass
class Caller:
    """One tenant with a quota of ``QUOTA`` tokens and a client with its key."""

    server: Server
    tenant_id: str
    http: httpx.Client

    def call(self, kind: str, model: str, *, stream: bool = False) -> httpx.Response:
        return self.http.post(PATHS[kind], json=request_body(kind, model, stream=stream))

    def usage(self) -> dict[str, Any]:
        """The tenant's usage totals, as the tenant and the admin see them (they must agree)."""
        own = self.http.get("/v1/usage", params={"group_by": "none"})
        assert own.status_code == 200, own.text
        admin = self.server.admin.get("/admin/usage", params={"tenant": self.tenant_id, "group_by": "none"})
        assert admin.status_code == 200, admin.text
        totals: dict[str, Any] = own.json()["totals"]
        assert admin.json()["totals"] == totals
        return totals

    def spend(self, tokens: int) -> httpx.Response:
        """A request that reserves exactly ``tokens``."""
        return self.http.post("/v1/completions", json=spend_body(tokens))

    def assert_the_rest_of_the_quota_is_exact(self) -> None:
        """The quota counter holds exactly what the usage records charged: the rest can be reserved, not more."""
        left = QUOTA - self.usage()["total_tokens"]
        assert left > 2
        over = self.spend(left + 1)
        assert over.status_code == 429, over.text
        assert error_code(over) == "insufficient_quota"
        exact = self.spend(left)
        assert exact.status_code == 200, exact.text


@pytest.fixture
def caller(models: Server, request: pytest.FixtureRequest) -> Iterator[Caller]:
    tenant = models.create_tenant(request.node.name[:100], limits={"token_quota": QUOTA})
    with models.client(tenant.key) as http:
        yield Caller(models, tenant.id, http)


# -- calls that fail before any text: plain HTTP errors, charged nothing ---------------------------------------


@pytest.mark.parametrize(("kind", "model", "stream", "status", "code"), FAILED_CALLS)
def test_a_call_that_fails_before_any_text_is_an_error_and_charged_nothing(
    caller: Caller, kind: str, model: str, stream: bool, status: int, code: str
) -> None:
    started = time.monotonic()
    response = caller.call(kind, model, stream=stream)
    took = time.monotonic() - started
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    assert error_code(response) == code
    assert_error_shape(response.json()["error"], code)
    if status == 504:
        assert_cut_at_the_timeout(took)
    usage = caller.usage()
    assert usage["requests"] == 1, usage  # the failure is recorded...
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (0, 0)  # ...with no tokens
    caller.assert_the_rest_of_the_quota_is_exact()


def backend_errors(server: Server, model: str) -> float:
    """``backend_errors_total`` of one model on the (single-worker) server."""
    metrics = httpx.get(server.base_url + "/metrics").text
    pattern = re.compile(rf'^textnlp_backend_errors_total\{{model="{re.escape(model)}",status="502"\}} (\S+)$', re.M)
    return sum(float(m) for m in pattern.findall(metrics))


def test_a_500_is_retried_then_answered_502_and_charged_nothing(caller: Caller) -> None:
    before = backend_errors(caller.server, "fault-500-retried")
    response = caller.call("chat", "fault-500-retried")
    assert response.status_code == 502, response.text
    assert error_code(response) == "backend_error"
    assert backend_errors(caller.server, "fault-500-retried") - before == 3  # the call and its 2 retries
    usage = caller.usage()
    assert (usage["requests"], usage["total_tokens"]) == (1, 0)
    caller.assert_the_rest_of_the_quota_is_exact()


# -- streams that fail after text: the text, an error event, [DONE]; charged what was delivered ---------------


@pytest.mark.parametrize(("kind", "model", "delivered", "code"), BROKEN_STREAMS)
def test_a_stream_that_fails_after_text_ends_in_an_error_event_and_is_charged_what_was_delivered(
    caller: Caller, kind: str, model: str, delivered: int, code: str
) -> None:
    started = time.monotonic()
    response = caller.call(kind, model, stream=True)
    took = time.monotonic() - started
    assert response.status_code == 200, response.text
    assert_a_broken_stream(kind, response.headers["content-type"], response.text, delivered=delivered, code=code)
    if code == "backend_timeout":
        assert_cut_at_the_timeout(took)

    usage = caller.usage()
    assert usage["requests"] == 1, usage
    assert usage["completion_tokens"] == delivered  # the gateway's count: one token per delta
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] <= reservation(kind)
    caller.assert_the_rest_of_the_quota_is_exact()


# -- streams that succeed slowly, and callers that leave -------------------------------------------------------


@pytest.mark.parametrize("kind", KINDS)
def test_a_slow_stream_completes_with_its_finish_reason_and_usage(caller: Caller, kind: str) -> None:
    response = caller.call(kind, "fault-slow-100", stream=True)
    assert response.status_code == 200, response.text
    reported = assert_a_whole_stream(kind, response.text)
    usage = caller.usage()
    assert (usage["requests"], usage["prompt_tokens"], usage["completion_tokens"]) == (
        1,
        reported["prompt_tokens"],
        reported["completion_tokens"],
    )
    caller.assert_the_rest_of_the_quota_is_exact()


def wait_for_a_record(caller: Caller, timeout_s: float = 10) -> dict[str, Any]:
    """The usage totals once the request's record is written (the gateway settles after the caller left)."""
    deadline = time.monotonic() + timeout_s
    while caller.http.get("/v1/usage", params={"group_by": "none"}).json()["totals"]["requests"] == 0:
        assert time.monotonic() < deadline, "no usage record"
        time.sleep(0.05)
    return caller.usage()


@pytest.mark.parametrize("kind", KINDS)
def test_a_caller_that_leaves_mid_stream_is_charged_what_was_delivered(caller: Caller, kind: str) -> None:
    """A chunk every 300 ms: the caller reads two, then closes the connection; the gateway stops at once."""
    texts: list[str] = []
    with caller.http.stream("POST", PATHS[kind], json=request_body(kind, "fault-slow-300", stream=True)) as response:
        assert response.status_code == 200
        for line in response.iter_lines():
            if line.startswith("data: "):
                text = chunk_text(kind, json.loads(line[len("data: ") :]))
                if text:
                    texts.append(text)
            if len(texts) == 2:
                break
    assert "".join(texts) == " ".join(WORDS[:2])
    usage = wait_for_a_record(caller)
    assert usage["requests"] == 1, usage
    # What the gateway sent before it saw the connection close: the two read, or one more on a slow machine
    # (a chunk every 300 ms); never nothing, never the whole answer.
    assert 2 <= usage["completion_tokens"] <= 3
    assert usage["prompt_tokens"] > 0
    assert usage["total_tokens"] <= reservation(kind)
    caller.assert_the_rest_of_the_quota_is_exact()
