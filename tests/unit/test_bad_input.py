"""Bad input: always a 4xx in OpenAI's error shape with a useful param, never a 500, never charged."""

from __future__ import annotations

import json
from collections.abc import Mapping
from dataclasses import replace
from typing import Any

import pytest

from core.domain import Limits
from core.inference import Prompt
from core.settings import GatewaySettings
from tests.fakes import GEN, Harness, error_of, make_harness, words_of

RPM = 1000
LIMITS = Limits(requests_per_minute=RPM, tokens_per_minute=1_000_000, token_quota=1_000_000)
MSG = [{"role": "user", "content": "hi"}]


@pytest.fixture
def h() -> Harness:
    return make_harness(limits=LIMITS)


def assert_nothing_consumed(h: Harness, probe: bool = True) -> None:
    assert h.backend.calls == 0
    assert h.usage() == []
    assert h.store._s.counters == {}  # not even a reservation that was undone
    if not probe:
        return
    # The limits are untouched: the next good request sees the whole minute.
    ok = h.call_json("POST", "/v1/completions", {"model": "fake-gen", "prompt": "a", "max_tokens": 1})
    assert ok.headers["x-ratelimit-remaining-requests"] == str(RPM - 1)


def check(
    h: Harness, resp: Any, status: int, code: str | None, param: str | None, probe: bool = True
) -> dict[str, Any]:
    assert resp.status == status, resp.body
    err = error_of(resp)
    assert err["type"] == ("authentication_error" if status == 401 else "invalid_request_error")
    assert err["code"] == code
    assert err["param"] == param
    assert_nothing_consumed(h, probe)
    return err


# -- JSON and types ----------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "raw",
    [
        b'{"model": "fake-gen",',
        b"{'model': 'fake-gen'}",
        b"\xff\xfe{}",
        b"",
        b"   ",
        b'{"model": "fake-gen", "prompt": "a"} x',
    ],
    ids=["truncated", "single-quotes", "not-utf8", "empty", "blank", "trailing-garbage"],
)
def test_malformed_json(h: Harness, raw: bytes) -> None:
    err = check(h, h.call("POST", "/v1/completions", raw), 400, "invalid_json", None)
    assert "JSON" in err["message"]


@pytest.mark.parametrize("raw", ["[]", '"text"', "42", "null"])
def test_a_body_that_is_not_an_object(h: Harness, raw: str) -> None:
    check(h, h.call("POST", "/v1/completions", raw), 400, "invalid_value", None)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": "fake-gen", "prompt": 5}, "prompt"),
        ("/v1/completions", {"model": "fake-gen", "prompt": [1, 2]}, "prompt"),
        ("/v1/completions", {"model": "fake-gen", "prompt": "a", "max_tokens": "ten"}, "max_tokens"),
        ("/v1/completions", {"model": "fake-gen", "prompt": "a", "max_tokens": 1.5}, "max_tokens"),
        ("/v1/completions", {"model": "fake-gen", "prompt": "a", "temperature": "hot"}, "temperature"),
        ("/v1/completions", {"model": "fake-gen", "prompt": "a", "temperature": None}, "temperature"),
        ("/v1/completions", {"model": "fake-gen", "prompt": "a", "seed": "x"}, "seed"),
        ("/v1/completions", {"model": "fake-gen", "prompt": "a", "stop": [5]}, "stop"),
        ("/v1/completions", {"model": "fake-gen", "prompt": "a", "stream_options": 5}, "stream_options"),
        ("/v1/completions", {"model": 7, "prompt": "a"}, "model"),
        ("/v1/chat/completions", {"model": "fake-gen", "messages": "hi"}, "messages"),
        (
            "/v1/chat/completions",
            {"model": "fake-gen", "messages": [{"role": "wizard", "content": "x"}]},
            "messages[0].role",
        ),
        (
            "/v1/chat/completions",
            {"model": "fake-gen", "messages": [{"role": "user", "content": 5}]},
            "messages[0].content",
        ),
        ("/v1/embeddings", {"model": "fake-emb", "input": [1, 2]}, "input"),
        ("/v1/embeddings", {"model": "fake-emb", "input": "a", "encoding_format": "int8"}, "encoding_format"),
    ],
)
def test_wrong_types_name_the_field_the_caller_sent(h: Harness, path: str, body: dict[str, Any], param: str) -> None:
    err = check(h, h.call_json("POST", path, body), 400, "invalid_value", param)
    assert err["message"].startswith(param)


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"prompt": "a"}, "model"),
        ("/v1/completions", {"model": "fake-gen"}, "prompt"),
        ("/v1/generate", {"model": "fake-gen"}, "prompt"),
        ("/v1/chat/completions", {"model": "fake-gen"}, "messages"),
        ("/v1/chat/completions", {"model": "fake-gen", "messages": [{"content": "hi"}]}, "messages[0].role"),
        ("/v1/embeddings", {"model": "fake-emb"}, "input"),
    ],
)
def test_missing_fields(h: Harness, path: str, body: dict[str, Any], param: str) -> None:
    err = check(h, h.call_json("POST", path, body), 400, "invalid_value", param)
    assert "required" in err["message"].lower()


# -- models ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "no-such-model", "prompt": "a"}),
        ("/v1/chat/completions", {"model": "no-such-model", "messages": MSG}),
        ("/v1/embeddings", {"model": "no-such-model", "input": "a"}),
    ],
)
def test_unknown_model(h: Harness, path: str, body: dict[str, Any]) -> None:
    err = check(h, h.call_json("POST", path, body), 404, "model_not_found", "model")
    assert "no-such-model" in err["message"]


def test_embedding_model_on_a_generation_endpoint_and_back(h: Harness) -> None:
    chat = {"model": "fake-emb", "messages": MSG}
    err = check(h, h.call_json("POST", "/v1/chat/completions", chat), 400, "model_not_supported", "model", probe=False)
    assert "embedding" in err["message"]
    check(
        h,
        h.call_json("POST", "/v1/completions", {"model": "fake-emb", "prompt": "a"}),
        400,
        "model_not_supported",
        "model",
        probe=False,
    )
    check(
        h,
        h.call_json("POST", "/v1/embeddings", {"model": "fake-gen", "input": "a"}),
        400,
        "model_not_supported",
        "model",
    )


def test_unknown_model_on_the_models_endpoint(h: Harness) -> None:
    resp = h.call("GET", "/v1/models/no-such-model")
    assert resp.status == 404
    assert error_of(resp)["code"] == "model_not_found"


# -- values ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("path", "body"),
    [
        ("/v1/completions", {"model": "fake-gen", "prompt": "a", "max_tokens": GEN.max_output_tokens + 1}),
        ("/v1/generate", {"model": "fake-gen", "prompt": "a", "max_tokens": 10**30}),
        (
            "/v1/chat/completions",
            {"model": "fake-gen", "messages": MSG, "max_completion_tokens": GEN.max_output_tokens + 1},
        ),
    ],
)
def test_max_tokens_above_the_models_limit(h: Harness, path: str, body: dict[str, Any]) -> None:
    err = check(h, h.call_json("POST", path, body), 400, "max_tokens_exceeded", "max_tokens")
    assert str(GEN.max_output_tokens) in err["message"]


@pytest.mark.parametrize(
    ("path", "body", "param"),
    [
        ("/v1/completions", {"model": "fake-gen", "prompt": ""}, "prompt"),
        ("/v1/completions", {"model": "fake-gen", "prompt": "   \n"}, "prompt"),
        ("/v1/completions", {"model": "fake-gen", "prompt": []}, "prompt"),
        ("/v1/completions", {"model": "fake-gen", "prompt": ["a", ""]}, "prompt"),
        ("/v1/completions", {"model": "fake-gen", "prompt": ["a"] * 65}, "prompt"),
        ("/v1/generate", {"model": "fake-gen", "prompt": ""}, "prompt"),
        ("/v1/chat/completions", {"model": "fake-gen", "messages": []}, "messages"),
        ("/v1/chat/completions", {"model": "fake-gen", "messages": [{"role": "user", "content": " "}]}, "messages"),
        ("/v1/chat/completions", {"model": "fake-gen", "messages": [{"role": "user"}]}, "messages"),
        ("/v1/chat/completions", {"model": "fake-gen", "messages": MSG * 513}, "messages"),
        ("/v1/embeddings", {"model": "fake-emb", "input": ""}, "input"),
        ("/v1/embeddings", {"model": "fake-emb", "input": []}, "input"),
        ("/v1/embeddings", {"model": "fake-emb", "input": ["a"] * 257}, "input"),
        ("/v1/completions", {"model": "", "prompt": "a"}, "model"),
    ],
)
def test_empty_or_too_many_inputs(h: Harness, path: str, body: dict[str, Any], param: str) -> None:
    check(h, h.call_json("POST", path, body), 400, "invalid_value", param)


@pytest.mark.parametrize(
    ("extra", "param"),
    [
        ({"stop": ["a", "b", "c", "d", "e"]}, "stop"),
        ({"stop": ""}, "stop"),
        ({"stop": ["a", ""]}, "stop"),
        ({"n": 0}, "n"),
        ({"n": 9}, "n"),
        ({"n": -1}, "n"),
        ({"max_tokens": 0}, "max_tokens"),
        ({"max_tokens": -5}, "max_tokens"),
        ({"temperature": 2.01}, "temperature"),
        ({"temperature": -0.1}, "temperature"),
        ({"top_p": 0}, "top_p"),
        ({"top_p": 1.5}, "top_p"),
    ],
)
def test_parameters_out_of_range(h: Harness, extra: dict[str, Any], param: str) -> None:
    check(
        h,
        h.call_json("POST", "/v1/completions", {"model": "fake-gen", "prompt": "a", **extra}),
        400,
        "invalid_value",
        param,
    )


def test_four_stop_sequences_are_fine(h: Harness) -> None:
    resp = h.call_json("POST", "/v1/completions", {"model": "fake-gen", "prompt": "a", "stop": ["w", "x", "y", "z"]})
    assert resp.status == 200


def test_non_finite_numbers_are_refused(h: Harness) -> None:
    for raw in (
        '{"model": "fake-gen", "prompt": "a", "temperature": NaN}',
        '{"model": "fake-gen", "prompt": "a", "max_tokens": 1e400}',
    ):
        resp = h.call("POST", "/v1/completions", raw)
        assert resp.status == 400
        assert error_of(resp)["param"] in ("temperature", "max_tokens")
    assert_nothing_consumed(h)


class WordCounter:
    def count(self, route: Mapping[str, Any], prompt: Prompt) -> int | None:
        return len(words_of(prompt))


def test_prompt_longer_than_the_context_with_a_token_counter() -> None:
    h = make_harness(limits=LIMITS, token_counter=WordCounter())
    h.add_model(replace(GEN, id="small", context_length=50, max_output_tokens=10))
    prompt = " ".join(["w"] * 60)
    body = {"model": "small", "prompt": prompt, "max_tokens": 1}
    err = check(h, h.call_json("POST", "/v1/completions", body), 400, "context_length_exceeded", "prompt", probe=False)
    assert "50" in err["message"]
    chat = {"model": "small", "messages": [{"role": "user", "content": prompt}], "max_tokens": 1}
    check(h, h.call_json("POST", "/v1/chat/completions", chat), 400, "context_length_exceeded", "prompt", probe=False)
    stream = {"model": "small", "prompt": prompt, "max_tokens": 1, "stream": True}
    check(h, h.call_json("POST", "/v1/completions", stream), 400, "context_length_exceeded", "prompt")


# -- HTTP level --------------------------------------------------------------------------------------------


def test_oversized_body_is_413() -> None:
    h = make_harness(limits=LIMITS, settings=GatewaySettings(max_body_bytes=1000))
    body = json.dumps({"model": "fake-gen", "prompt": "x" * 2000})
    err = check(h, h.call("POST", "/v1/completions", body), 413, "request_too_large", None)
    assert "1000" in err["message"]
    at_limit = json.dumps({"model": "fake-gen", "prompt": "a", "max_tokens": 1}).ljust(1000)
    assert h.call("POST", "/v1/completions", at_limit).status == 200


def test_oversized_body_is_refused_before_authentication() -> None:
    h = make_harness(settings=GatewaySettings(max_body_bytes=10))
    resp = h.call("POST", "/v1/completions", "x" * 100, headers={"authorization": ""})
    assert resp.status == 413


def test_unknown_route(h: Harness) -> None:
    check(h, h.call_json("POST", "/v1/complete", {"model": "fake-gen", "prompt": "a"}), 404, "unknown_route", None)


def test_wrong_method(h: Harness) -> None:
    resp = h.call("GET", "/v1/chat/completions")
    assert resp.headers["allow"] == "POST"
    check(h, resp, 405, "method_not_allowed", None)


@pytest.mark.parametrize("headers", [{"authorization": ""}, {"authorization": "Token abc"}])
def test_missing_credentials(h: Harness, headers: dict[str, str]) -> None:
    resp = h.call_json("POST", "/v1/completions", {"model": "fake-gen", "prompt": "a"}, headers=headers)
    check(h, resp, 401, "missing_credentials", None)


def test_bad_credentials_are_checked_before_the_body(h: Harness) -> None:
    resp = h.call("POST", "/v1/completions", "{not json", key="tnlp_key_0000000000000000_nope")
    check(h, resp, 401, "invalid_api_key", None)


@pytest.mark.parametrize(
    ("query", "param"),
    [({"start": "2026-13-01"}, "start"), ({"start": "yesterday"}, "start"), ({"end": "2026-02-30"}, "end"),
     ({"start": "2026-09-10", "end": "2026-09-01"}, "end"), ({"group_by": "tenant"}, "group_by")],
)  # fmt: skip
def test_bad_usage_queries(h: Harness, query: dict[str, str], param: str) -> None:
    resp = h.call("GET", "/v1/usage", query=query)
    assert resp.status == 400
    assert error_of(resp)["param"] == param
