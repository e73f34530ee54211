"""The OpenAI HTTP API on the wire: request bodies from a ``Prompt`` and ``GenerationParams``, responses and SSE
chunks back into text, finish reasons and usage, and the gateway's errors for an upstream error status, a
malformed body, or a body or stream that broke off (``backend.py``'s docstring says when an answer is whole).

Pure mapping: no I/O here (``backend.py`` sends and receives). The SageMaker adapter reads its TGI and LMI
containers' answers with it too, as they come in the same shapes.
"""

from __future__ import annotations

import json
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeGuard

from core.errors import BackendError, BackendTimeout
from core.inference import FinishReason, GenerationParams, Prompt

Usage = tuple[int, int]
UsageFallback = Callable[[Prompt, str], Usage]

# Bytes bound the text of a chat; these bound the markup a chat template adds around each message
# (ChatML adds 4 tokens, Llama 3 adds 5) and before the reply (a role header of up to ~13 tokens).
CHAT_TOKENS_PER_MESSAGE = 8
CHAT_TOKENS_PER_REPLY = 16
_MAX_MESSAGE_CHARS = 500


def conservative_usage(prompt: Prompt, text: str) -> Usage:
    """Counts a byte-level BPE tokenizer never exceeds: one token per UTF-8 byte (+ chat markup)."""
    prompt_tokens = prompt.utf8_bytes()
    if prompt.is_chat:
        prompt_tokens += CHAT_TOKENS_PER_MESSAGE * len(prompt.messages) + CHAT_TOKENS_PER_REPLY
    return prompt_tokens, len(text.encode())


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded response or stream chunk; ``usage`` is None where the server reported none."""

    text: str
    finish_reason: FinishReason | None
    usage: Usage | None


def to_chat_payload(model: str, prompt: Prompt, params: GenerationParams, *, stream: bool = False) -> dict[str, Any]:
    messages = [{"role": m.role, "content": m.content} for m in prompt.messages]
    return _with_params({"model": model, "messages": messages}, params, stream)


def to_completion_payload(
    model: str, prompt: Prompt, params: GenerationParams, *, stream: bool = False
) -> dict[str, Any]:
    return _with_params({"model": model, "prompt": prompt.text or ""}, params, stream)


def _with_params(payload: dict[str, Any], params: GenerationParams, stream: bool) -> dict[str, Any]:
    payload.update(max_tokens=params.max_tokens, temperature=params.temperature, top_p=params.top_p)
    if params.stop:
        payload["stop"] = list(params.stop)
    if params.seed is not None:
        payload["seed"] = params.seed
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    return payload


def json_bytes(payload: dict[str, Any]) -> bytes:
    # As httpx encodes ``json=``: compact, UTF-8, no NaN.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def to_request(model: str, prompt: Prompt, params: GenerationParams, *, stream: bool) -> tuple[str, dict[str, Any]]:
    if prompt.is_chat:
        return "/chat/completions", to_chat_payload(model, prompt, params, stream=stream)
    return "/completions", to_completion_payload(model, prompt, params, stream=stream)


def from_chat_response(body: Mapping[str, Any]) -> Reply:
    choice = _first_choice(body)
    message = choice.get("message")
    content = message.get("content") if isinstance(message, dict) else None
    return Reply(_text(content), finish_reason(choice.get("finish_reason")), parse_usage(body))


def from_completion_response(body: Mapping[str, Any]) -> Reply:
    choice = _first_choice(body)
    return Reply(_text(choice.get("text")), finish_reason(choice.get("finish_reason")), parse_usage(body))


def from_stream_chunk(chunk: Mapping[str, Any]) -> Reply:
    """One SSE chunk, chat (``delta.content``) or text (``text``); the usage chunk has no choices."""
    if "error" in chunk or chunk.get("object") == "error":
        raise BackendError(f"the model backend failed mid-stream: {upstream_message(chunk)}", retryable=False)
    choices = chunk.get("choices")
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
        return Reply("", None, parse_usage(chunk))
    choice = choices[0]
    delta = choice.get("delta")
    piece = delta.get("content") if isinstance(delta, dict) else choice.get("text")
    reason = choice.get("finish_reason")
    return Reply(_text(piece), None if reason is None else finish_reason(reason), parse_usage(chunk))


def sse_data(line: str) -> str | None:
    """The payload of an SSE ``data:`` line; None for blank lines, comments and other fields."""
    if not line.startswith("data:"):
        return None
    return line[5:].strip()


async def sse_lines(chunks: AsyncIterator[bytes]) -> AsyncIterator[str]:
    """The complete lines of an event stream, without their line ends; an unterminated last line is dropped."""
    pending = b""
    async for piece in chunks:
        if b"\n" not in piece:
            pending += piece
            continue
        *lines, pending = (pending + piece).split(b"\n")
        for line in lines:
            yield line.rstrip(b"\r").decode(errors="replace")


def to_embeddings_payload(model: str, inputs: list[str]) -> dict[str, Any]:
    return {"model": model, "input": inputs, "encoding_format": "float"}


def from_embeddings_response(body: Mapping[str, Any], expected: int) -> tuple[list[list[float]], int | None]:
    """The vectors in input order and the reported prompt tokens (None if not reported)."""
    data = body.get("data")
    if not isinstance(data, list) or len(data) != expected:
        raise bad_response(f"expected {expected} embeddings")
    try:
        ordered = sorted(data, key=lambda item: int(item.get("index", 0)))
        vectors = [[float(x) for x in item["embedding"]] for item in ordered]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise bad_response("malformed embeddings") from None
    usage = body.get("usage")
    tokens = usage.get("prompt_tokens") if isinstance(usage, dict) else None
    return vectors, tokens if is_count(tokens) else None


def finish_reason(value: object) -> FinishReason:
    if value == "length":
        return "length"
    if value == "content_filter":
        return "content_filter"
    return "stop"


def parse_usage(body: Mapping[str, Any]) -> Usage | None:
    usage = body.get("usage")
    if not isinstance(usage, dict):
        return None
    prompt, completion = usage.get("prompt_tokens"), usage.get("completion_tokens")
    if is_count(prompt) and is_count(completion):
        return prompt, completion
    return None


def upstream_message(body: bytes | str | Mapping[str, Any]) -> str:
    """The error message in an upstream body, truncated: OpenAI, vLLM, llama.cpp and Ollama shapes, and the
    SageMaker containers' (TGI ``{"error", "error_type"}``, LMI ``{"error", "code"}``, AWS ``{"Message"}``)."""
    data: Any = body
    if isinstance(body, bytes | str):
        try:
            data = json.loads(body)
        except ValueError:
            data = None
    message: object = None
    if isinstance(data, dict):
        error = data.get("error")
        message = error.get("message") if isinstance(error, dict) else error
        message = message or data.get("message") or data.get("detail") or data.get("Message")
    if not isinstance(message, str) or not message:
        message = body.decode(errors="replace") if isinstance(body, bytes) else body if isinstance(body, str) else ""
    return message.strip()[:_MAX_MESSAGE_CHARS] or "no message"


def error_for_status(status: int, body: bytes, headers: Mapping[str, str] | None = None) -> BackendError:
    """The gateway error for an upstream HTTP error status."""
    message = upstream_message(body)
    if status == 429:
        retry_after = (headers or {}).get("retry-after")
        return BackendError(
            f"the model backend is throttling requests: {message}",
            status=429,
            retryable=True,
            type="rate_limit_error",
            code="backend_throttled",
            headers={"Retry-After": retry_after} if retry_after else None,
        )
    if status >= 500:
        return BackendError(f"the model backend failed ({status}): {message}", status=502, retryable=True)
    if status == 408:
        return BackendTimeout()
    if status in (401, 403, 404) or status < 400:
        return misconfigured(f"the model backend refused the gateway ({status}): {message}")
    return BackendError(message, status=400, retryable=False, type="invalid_request_error", code="backend_rejected")


def _first_choice(body: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = body.get("choices")
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
        raise bad_response("no choices in the response")
    return choices[0]


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def is_count(value: object) -> TypeGuard[int]:
    """A token count as a JSON number can carry it: a non-negative int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def decode_json(content: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except ValueError:
        raise bad_response("the response is not JSON") from None
    if not isinstance(data, dict):
        raise bad_response("the response is not a JSON object")
    return data


def bad_response(detail: str, *, retryable: bool = False) -> BackendError:
    message = f"the model backend sent a malformed response: {detail}"
    return BackendError(message, retryable=retryable, code="backend_bad_response")


def cut_body(kind: str) -> BackendError:
    """A non-streamed body that broke off: nothing reached the caller, so another attempt may do better."""
    return bad_response(f"the body was cut off ({kind})", retryable=True)


def misconfigured(detail: str) -> BackendError:
    return BackendError(detail, status=502, retryable=False, code="backend_misconfigured")


class BodyBroken(Exception):
    """A response body broke off after its head arrived: ``kind`` as httpx names it (ReadError, ...)."""

    def __init__(self, kind: str, *, timed_out: bool = False) -> None:
        super().__init__(kind)
        self.kind = kind
        self.timed_out = timed_out


def truncated(ending: str, *, delivered: bool) -> BackendError:
    return BackendError(
        f"the model's stream ended before it finished: {ending} without a finish reason",
        retryable=not delivered,
        code="stream_truncated",
    )


def interrupted(broken: BodyBroken, *, delivered: bool) -> BackendError:
    if broken.timed_out:
        error: BackendError = BackendTimeout("the model's stream stalled: no data within the read timeout")
    else:
        message = f"the model's stream was interrupted before it finished: {broken.kind}"
        error = BackendError(message, code="stream_interrupted")
    error.retryable = not delivered
    return error


def unreachable(kind: str) -> BackendError:
    return BackendError(f"the model backend is unreachable: {kind}", status=502, retryable=True)
