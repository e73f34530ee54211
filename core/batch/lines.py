"""One input line of a batch (or of an uploaded file): parsed and checked into the call it stands for."""

from __future__ import annotations

import json
import re
from dataclasses import dataclass
from typing import Any

from pydantic import BaseModel, ValidationError

from core.schemas.native import GenerateRequest
from core.schemas.openai import ChatCompletionRequest, CompletionRequest, EmbeddingRequest

MAX_LINE_BYTES = 1_048_576
MAX_CUSTOM_ID = 512
ENDPOINTS: dict[str, type[BaseModel]] = {
    "/v1/chat/completions": ChatCompletionRequest,
    "/v1/completions": CompletionRequest,
    "/v1/embeddings": EmbeddingRequest,
    "/v1/generate": GenerateRequest,
}
# Pydantic names the union member it tried (``prompt.str``); the caller wrote ``prompt``.
_UNION = re.compile(r"^(str|int|float|bool|bytes|none)$|\[")
_ENVELOPE = frozenset({"custom_id", "method", "url", "body"})


@dataclass(frozen=True, slots=True)
class LineCall:
    """A valid line: the request to make (``body`` is JSON) and how the caller names it."""

    line_no: int
    url: str
    body: bytes
    custom_id: str | None


@dataclass(frozen=True, slots=True)
class LineError:
    """A line that cannot be run; this is its result."""

    line_no: int
    code: str
    message: str
    custom_id: str | None = None


def is_blank(raw: bytes) -> bool:
    return not raw.strip()


def _decode(raw: bytes, line_no: int) -> dict[str, Any] | LineError:
    if len(raw) > MAX_LINE_BYTES:
        return LineError(line_no, "line_too_large", f"the line is longer than {MAX_LINE_BYTES} bytes")
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as exc:
        return LineError(line_no, "invalid_encoding", f"the line is not UTF-8 (byte {exc.start + 1})")
    if line_no == 1:
        text = text.removeprefix("\ufeff")
    try:
        value = json.loads(text)
    except json.JSONDecodeError as exc:
        return LineError(line_no, "invalid_json", f"not JSON: {exc.msg} (column {exc.colno})")
    if not isinstance(value, dict):
        return LineError(line_no, "invalid_line", "a line must be a JSON object")
    return value


def _validation_message(exc: ValidationError, prefix: str) -> str:
    err = exc.errors(include_url=False)[0]
    loc = "".join(f"[{p}]" if isinstance(p, int) else f".{p}" for p in err["loc"] if not _UNION.search(str(p)))
    loc = loc.lstrip(".")
    path = f"{prefix}{'' if loc.startswith('[') else '.'}{loc}" if prefix and loc else prefix or loc
    message = str(err["msg"]).removeprefix("Value error, ")
    return f"{path}: {message}" if path else message


def _envelope(value: dict[str, Any], line_no: int, endpoint: str | None) -> tuple[str, Any, str] | LineError:
    """(url, body, custom_id) of an OpenAI batch line."""
    custom_id = value.get("custom_id")
    if not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID:
        message = f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters"
        return LineError(line_no, "invalid_custom_id", message, custom_id if isinstance(custom_id, str) else None)
    if str(value.get("method", "")).upper() != "POST":
        return LineError(line_no, "invalid_method", "method must be POST", custom_id)
    url = value.get("url")
    if url not in ENDPOINTS:
        message = f"url must be one of {', '.join(ENDPOINTS)}"
        return LineError(line_no, "invalid_url", message, custom_id)
    if endpoint is not None and url != endpoint:
        return LineError(line_no, "mismatched_url", f"url is {url} but this batch's endpoint is {endpoint}", custom_id)
    unknown = set(value) - _ENVELOPE
    if unknown:
        return LineError(line_no, "invalid_line", f"unknown field {sorted(unknown)[0]!r}", custom_id)
    return str(url), value.get("body"), custom_id


def parse_line(raw: bytes, line_no: int, endpoint: str | None = None) -> LineCall | LineError:
    """A line as an OpenAI batch line (``custom_id``, ``method``, ``url``, ``body``) or a native
    ``/v1/generate`` body (with an optional ``custom_id``). ``endpoint`` restricts the url."""
    value = _decode(raw, line_no)
    if isinstance(value, LineError):
        return value
    if _ENVELOPE & set(value) - {"custom_id"}:
        envelope = _envelope(value, line_no, endpoint)
        if isinstance(envelope, LineError):
            return envelope
        url, body, custom_id = envelope
        prefix = "body"
    else:
        custom_id = value.pop("custom_id", None)
        if custom_id is not None and (not isinstance(custom_id, str) or not 0 < len(custom_id) <= MAX_CUSTOM_ID):
            return LineError(
                line_no, "invalid_custom_id", f"custom_id must be a string of 1 to {MAX_CUSTOM_ID} characters"
            )
        url, body, prefix = "/v1/generate", value, ""
        if endpoint is not None and url != endpoint:
            return LineError(line_no, "mismatched_url", f"a native line calls /v1/generate, not {endpoint}", custom_id)
    if not isinstance(body, dict):
        return LineError(line_no, "invalid_body", "body must be a JSON object", custom_id)
    try:
        request = ENDPOINTS[url].model_validate(body)
    except ValidationError as exc:
        return LineError(line_no, "invalid_request", _validation_message(exc, prefix), custom_id)
    if getattr(request, "stream", False):
        return LineError(
            line_no, "invalid_request", f"{prefix + '.' if prefix else ''}stream: a batch does not stream", custom_id
        )
    return LineCall(line_no, url, json.dumps(body, ensure_ascii=False).encode(), custom_id)


def fine_tune_line_error(raw: bytes, line_no: int) -> str | None:
    """Why a fine-tune training line is unusable, or None: chat ``{"messages": [...]}`` with an
    assistant turn, or ``{"prompt", "completion"}`` strings."""
    value = _decode(raw, line_no)
    if isinstance(value, LineError):
        return value.message
    if "messages" in value:
        messages = value["messages"]
        if not isinstance(messages, list) or not messages:
            return "messages must be a non-empty list"
        for i, m in enumerate(messages):
            if not isinstance(m, dict) or m.get("role") not in ("system", "user", "assistant", "tool", "developer"):
                return f"messages[{i}].role must be system, developer, user, assistant or tool"
            if not isinstance(m.get("content"), str):
                return f"messages[{i}].content must be a string"
        if not any(m["role"] == "assistant" for m in messages):
            return "messages need at least one assistant message to learn from"
        return None
    if isinstance(value.get("prompt"), str) and isinstance(value.get("completion"), str):
        return None if value["completion"].strip() else "completion cannot be empty"
    return 'a line must be {"messages": [...]} or {"prompt": ..., "completion": ...}'
