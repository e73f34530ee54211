"""Batch input lines: OpenAI batch lines and native lines parsed into calls; every kind of bad line named."""

from __future__ import annotations

import json
import typing

import pytest

from core.batch.lines import ENDPOINTS, MAX_LINE_BYTES, LineCall, LineError, fine_tune_line_error, parse_line
from core.batch.output import line_error_result, output_line
from core.schemas.files import BatchEndpoint


def _openai(url: str = "/v1/chat/completions", **body: object) -> bytes:
    payload = body or {"model": "m", "messages": [{"role": "user", "content": "hi"}]}
    return json.dumps({"custom_id": "req-1", "method": "POST", "url": url, "body": payload}).encode()


def _error(raw: bytes, line_no: int = 7, endpoint: str | None = None) -> LineError:
    result = parse_line(raw, line_no, endpoint)
    assert isinstance(result, LineError), result
    assert result.line_no == line_no
    return result


def test_openai_batch_lines_for_every_endpoint() -> None:
    bodies: dict[str, dict[str, object]] = {
        "/v1/chat/completions": {"model": "m", "messages": [{"role": "user", "content": "hi"}], "max_tokens": 3},
        "/v1/completions": {"model": "m", "prompt": "hi"},
        "/v1/embeddings": {"model": "e", "input": ["a", "b"]},
        "/v1/generate": {"model": "m", "prompt": ["a", "b"], "n": 2},
    }
    for url, body in bodies.items():
        call = parse_line(_openai(url, **body), 3)
        assert isinstance(call, LineCall), call
        assert (call.line_no, call.url, call.custom_id) == (3, url, "req-1")
        assert json.loads(call.body) == body


def test_native_line_is_a_generate_body_with_an_optional_custom_id() -> None:
    call = parse_line(b'{"model": "m", "prompt": "hello", "max_tokens": 4}', 1)
    assert isinstance(call, LineCall)
    assert (call.url, call.custom_id) == ("/v1/generate", None)
    assert json.loads(call.body) == {"model": "m", "prompt": "hello", "max_tokens": 4}
    tagged = parse_line(b'{"custom_id": "x9", "model": "m", "prompt": "hello"}', 2)
    assert isinstance(tagged, LineCall)
    assert tagged.custom_id == "x9"
    assert b"custom_id" not in tagged.body


def test_a_utf8_bom_on_the_first_line_is_ignored() -> None:
    assert isinstance(parse_line('\ufeff{"model": "m", "prompt": "hi"}'.encode(), 1), LineCall)
    assert _error('\ufeff{"model": "m", "prompt": "hi"}'.encode(), 2).code == "invalid_json"


@pytest.mark.parametrize(
    ("raw", "code", "fragment"),
    [
        (b"{not json", "invalid_json", "not JSON"),
        (b"[1, 2]", "invalid_line", "JSON object"),
        (b'"text"', "invalid_line", "JSON object"),
        (b'{"model": "m", "prompt": "caf\xe9"}', "invalid_encoding", "not UTF-8"),
        (b'{"model": "m"}', "invalid_request", "prompt"),
        (b'{"model": "m", "prompt": ""}', "invalid_request", "prompt"),
        (b'{"model": "m", "prompt": "x", "temperature": 9}', "invalid_request", "temperature"),
        (b'{"model": "m", "prompt": "x", "stream": true}', "invalid_request", "does not stream"),
        (b'{"custom_id": 5, "model": "m", "prompt": "x"}', "invalid_custom_id", "custom_id"),
    ],
)
def test_bad_native_lines(raw: bytes, code: str, fragment: str) -> None:
    error = _error(raw)
    assert error.code == code
    assert fragment in error.message


@pytest.mark.parametrize(
    ("line", "code", "fragment"),
    [
        ({"method": "POST", "url": "/v1/completions", "body": {}}, "invalid_custom_id", "custom_id"),
        ({"custom_id": "", "method": "POST", "url": "/v1/completions", "body": {}}, "invalid_custom_id", "custom_id"),
        ({"custom_id": "c", "method": "GET", "url": "/v1/completions", "body": {}}, "invalid_method", "POST"),
        ({"custom_id": "c", "method": "POST", "url": "/v1/images", "body": {}}, "invalid_url", "url must be"),
        ({"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": "x"}, "invalid_body", "body"),
        ({"custom_id": "c", "method": "POST", "url": "/v1/completions"}, "invalid_body", "body"),
        ({"custom_id": "c", "method": "POST", "url": "/v1/completions", "body": {}, "x": 1}, "invalid_line", "'x'"),
        (
            {"custom_id": "c", "method": "POST", "url": "/v1/chat/completions", "body": {"model": "m", "messages": []}},
            "invalid_request",
            "body.messages",
        ),
    ],
)
def test_bad_openai_lines(line: dict[str, object], code: str, fragment: str) -> None:
    error = _error(json.dumps(line).encode())
    assert error.code == code
    assert fragment in error.message


def test_the_custom_id_is_kept_on_errors_where_it_was_readable() -> None:
    raw = json.dumps({"custom_id": "keep-me", "method": "POST", "url": "/v1/completions", "body": {"model": "m"}})
    assert _error(raw.encode()).custom_id == "keep-me"


def test_endpoint_restriction() -> None:
    assert isinstance(parse_line(_openai(), 1, "/v1/chat/completions"), LineCall)
    assert _error(_openai(), 1, "/v1/completions").code == "mismatched_url"
    assert _error(b'{"model": "m", "prompt": "x"}', 1, "/v1/embeddings").code == "mismatched_url"


def test_oversized_line_fails_before_parsing() -> None:
    raw = b'{"model": "m", "prompt": "' + b"a" * MAX_LINE_BYTES + b'"}'
    error = _error(raw)
    assert error.code == "line_too_large"
    assert str(MAX_LINE_BYTES) in error.message


def test_fine_tune_lines() -> None:
    chat = {"messages": [{"role": "user", "content": "q"}, {"role": "assistant", "content": "a"}]}
    assert fine_tune_line_error(json.dumps(chat).encode(), 1) is None
    assert fine_tune_line_error(b'{"prompt": "q", "completion": "a"}', 1) is None
    assert "assistant" in (fine_tune_line_error(b'{"messages": [{"role": "user", "content": "q"}]}', 1) or "")
    assert "role" in (fine_tune_line_error(b'{"messages": [{"role": "bot", "content": "q"}]}', 1) or "")
    assert "content" in (fine_tune_line_error(b'{"messages": [{"role": "user"}]}', 1) or "")
    assert "non-empty" in (fine_tune_line_error(b'{"messages": []}', 1) or "")
    assert "completion cannot be empty" in (fine_tune_line_error(b'{"prompt": "q", "completion": " "}', 1) or "")
    assert "must be" in (fine_tune_line_error(b'{"text": "q"}', 1) or "")
    assert "not JSON" in (fine_tune_line_error(b"{", 1) or "")


def test_the_schema_lists_exactly_the_endpoints_a_line_can_call() -> None:
    assert set(typing.get_args(BatchEndpoint)) == set(ENDPOINTS)


def test_output_line_of_a_malformed_line_has_the_line_number_and_no_response() -> None:
    result = line_error_result(LineError(12, "invalid_json", "not JSON: oops"))
    line = json.loads(output_line("batch_abc", 12, result))
    assert line == {
        "id": "batch_req_abc_12",
        "custom_id": None,
        "line": 12,
        "response": None,
        "error": {"code": "invalid_json", "message": "not JSON: oops", "line": 12},
    }
