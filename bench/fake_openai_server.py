"""FakeOpenAI: a zero-latency OpenAI-compatible server, the baseline the gateway is compared against.

Raw ASGI, stdlib json, served by uvicorn with httptools. The reply echoes the first words of the
prompt (the last chat message), capped at ``max_tokens`` words; usage counts words.

    python -m bench.fake_openai_server --port 9100 [--latency-ms 0] [--no-usage]

Faults. A request whose ``model`` is ``fault:<mode>`` gets a failure instead of the answer (any endpoint
but ``/v1/models``), so a registry route ``{"type": "openai", "base_url": ..., "model": "fault:drop-after-2"}``
drives the gateway into it. A stream sends the chat role chunk (no text) first, then one chunk per word;
N counts the chunks with text.

==================  ===============================================  =============================================
mode                streamed                                         not streamed
==================  ===============================================  =============================================
``<status>``        that status (400-599) with an OpenAI error body, before anything else (``fault:500``)
``hang``            reads the request, never answers (until the client goes away)
``slow-<ms>ms``     waits ``ms`` before each chunk                   waits ``ms`` before the answer
``drop-after-<N>``  N chunks, then the connection is closed          Content-Length of the whole JSON, half of
                    mid-body (the chunked body never ends)           it, then the connection is closed
``eof-after-<N>``   N chunks, then the body ends cleanly: no finish  a well-framed body holding half the JSON
                    reason, no usage, no ``[DONE]``
``stall-after-<N>`` N chunks, then nothing (until the client         Content-Length of the whole JSON, half of
                    goes away)                                       it, then nothing
``cut-body``        half of the first chunk's ``data:`` line, then   as ``drop-after-<N>``
                    the connection is closed
==================  ===============================================  =============================================

An unknown mode is a 400 ``unknown_fault``. A request without a fault takes the same path as before: one
prefix test on the model name.
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import logging
import math
import re
import socket
import threading
import time
from collections.abc import Awaitable, Callable
from dataclasses import dataclass
from typing import Any

import uvicorn

Message = dict[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]

MODEL_ID = "fake-model"
DEFAULT_MAX_TOKENS = 16
DIMENSIONS = 8

_JSON_HEADERS = [(b"content-type", b"application/json")]
_SSE_HEADERS = [(b"content-type", b"text/event-stream"), (b"cache-control", b"no-cache")]
FAULT_PREFIX = "fault:"
_FAULT = re.compile(
    r"(?P<status>[45]\d\d)|(?P<bare>hang|cut-body)|(?P<cut>drop|eof|stall)-after-(?P<n>\d+)|slow-(?P<ms>\d+)ms"
)


def answer(source: str, max_tokens: int, stop: list[str]) -> tuple[str, str]:
    """The deterministic reply to ``source`` and its finish reason."""
    words = source.split() or ["ok"]
    text = " ".join(words[:max_tokens])
    reason = "length" if len(words) > max_tokens else "stop"
    for marker in stop:
        if marker and marker in text:
            text, reason = text[: text.index(marker)], "stop"
    return text, reason


def embedding(text: str) -> list[float]:
    """A deterministic unit vector of ``DIMENSIONS`` floats derived from the text's hash."""
    digest = hashlib.sha256(text.encode()).digest()
    raw = [b / 127.5 - 1.0 for b in digest[:DIMENSIONS]]
    norm = math.sqrt(sum(x * x for x in raw)) or 1.0
    return [round(x / norm, 6) for x in raw]


def _dumps(data: object) -> bytes:
    return json.dumps(data, separators=(",", ":")).encode()


class _RequestError(Exception):
    """A request the fake refuses, answered in OpenAI's error shape."""

    def __init__(self, status: int, message: str, code: str) -> None:
        super().__init__(message)
        self.status, self.code = status, code

    def body(self) -> dict[str, Any]:
        error = {"message": str(self), "type": "invalid_request_error", "code": self.code, "param": None}
        return {"error": error}


@dataclass(frozen=True, slots=True)
class Fault:
    """A failure to inject: ``mode`` as in the module docstring; ``n`` the status, chunk count or delay in ms."""

    mode: str
    n: int = 0

    @classmethod
    def parse(cls, model: object) -> Fault | None:
        if not (isinstance(model, str) and model.startswith(FAULT_PREFIX)):
            return None
        match = _FAULT.fullmatch(model[len(FAULT_PREFIX) :])
        if match is None:
            raise _RequestError(400, f"unknown fault '{model}' (see bench/fake_openai_server.py)", "unknown_fault")
        if match["status"]:
            return cls("status", int(match["status"]))
        if match["bare"]:
            return cls(match["bare"])
        if match["cut"]:
            return cls(match["cut"], int(match["n"]))
        return cls("slow", int(match["ms"]))


class _Drop(Exception):
    """Raised after part of a response: uvicorn then closes the connection mid-body."""


def _not_a_drop(record: logging.LogRecord) -> bool:
    # uvicorn logs the exception that closes the connection; a dropped connection is what we asked for.
    return not (record.exc_info and record.exc_info[0] is _Drop)


@dataclass(frozen=True, slots=True)
class _Stream:
    """An SSE answer in frames: the chat role (``lead``), one per word (``text``), finish, usage, [DONE] (``tail``)."""

    lead: list[bytes]
    text: list[bytes]
    tail: list[bytes]


class FakeOpenAI:
    """The ASGI app. ``report_usage=False`` mimics servers that never report token usage."""

    def __init__(self, latency_ms: float = 0.0, report_usage: bool = True) -> None:
        self.latency_s = latency_ms / 1000
        self.report_usage = report_usage
        self._ids = itertools.count()

    async def __call__(self, scope: Message, receive: Receive, send: Send) -> None:
        if scope["type"] == "http":
            try:
                await self._dispatch(scope["method"], scope["path"], receive, send)
            except _RequestError as exc:
                await _respond(send, exc.status, exc.body())

    async def _dispatch(self, method: str, path: str, receive: Receive, send: Send) -> None:
        if path == "/v1/models" and method == "GET":
            models = {"object": "list", "data": [{"id": MODEL_ID, "object": "model", "created": 0}]}
            await _respond(send, 200, models)
            return
        handler = {
            "/v1/completions": self._completions,
            "/v1/chat/completions": self._chat,
            "/v1/embeddings": self._embeddings,
        }.get(path)
        if handler is None:
            raise _RequestError(404, f"no route {path}", "not_found")
        if method != "POST":
            raise _RequestError(405, "use POST", "method_not_allowed")
        try:
            body = json.loads(await _read_body(receive))
        except ValueError:
            raise _RequestError(400, "the body is not JSON", "invalid_json") from None
        if not isinstance(body, dict):
            raise _RequestError(400, "the body is not a JSON object", "invalid_json")
        fault = Fault.parse(body.get("model"))
        if fault is not None and fault.mode in ("status", "hang"):
            await _fail_at_once(fault, receive, send)
            return
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        answer = handler(body)
        if fault is None:
            await (_send_stream(send, answer) if isinstance(answer, _Stream) else _respond(send, 200, answer))
        elif isinstance(answer, _Stream):
            await _send_faulty_stream(fault, receive, send, answer)
        else:
            await _respond_faulty(fault, receive, send, answer)

    def _completions(self, body: Message) -> Message | _Stream:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise _RequestError(400, "'prompt' must be a string", "invalid_prompt")
        return self._generate(body, prompt, prompt, chat=False)

    def _chat(self, body: Message) -> Message | _Stream:
        messages = body.get("messages")
        if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
            raise _RequestError(400, "'messages' must be a list of objects", "invalid_messages")
        contents = [str(m.get("content") or "") for m in messages]
        return self._generate(body, contents[-1], " ".join(contents), chat=True)

    def _generate(self, body: Message, source: str, whole: str, *, chat: bool) -> Message | _Stream:
        max_tokens = body.get("max_tokens")
        if not isinstance(max_tokens, int) or max_tokens < 1:
            max_tokens = DEFAULT_MAX_TOKENS
        stop = body.get("stop") or []
        text, reason = answer(source, max_tokens, [stop] if isinstance(stop, str) else list(stop))
        prompt_tokens, completion_tokens = len(whole.split()), len(text.split())
        usage = {
            "prompt_tokens": prompt_tokens,
            "completion_tokens": completion_tokens,
            "total_tokens": prompt_tokens + completion_tokens,
        }
        head = {
            "id": f"cmpl-{next(self._ids)}",
            "object": "chat.completion" if chat else "text_completion",
            "created": int(time.time()),
            "model": str(body.get("model") or MODEL_ID),
        }
        if body.get("stream"):
            options = body.get("stream_options")
            with_usage = isinstance(options, dict) and bool(options.get("include_usage"))
            return self._stream(head, text, reason, usage if with_usage else None, chat=chat)
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
        reply: dict[str, Any] = {**head, "choices": [choice]}
        if self.report_usage:
            reply["usage"] = usage
        return reply

    def _stream(self, head: Message, text: str, reason: str, usage: Message | None, *, chat: bool) -> _Stream:
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        if usage is not None and self.report_usage:
            head["usage"] = None

        def chunk(piece: str | None, finish: str | None) -> Message:
            if chat:
                delta = {} if piece is None else {"content": piece}
                return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return {**head, "choices": [{"index": 0, "text": piece or "", "finish_reason": finish}]}

        lead = [{**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]}] if chat else []
        words = text.split(" ") if text else []
        tail = [chunk(None, reason)]
        if usage is not None and self.report_usage:
            tail.append({**head, "choices": [], "usage": usage})
        return _Stream(
            [_frame(event) for event in lead],
            [_frame(chunk(word if i == 0 else " " + word, None)) for i, word in enumerate(words)],
            [*(_frame(event) for event in tail), b"data: [DONE]\n\n"],
        )

    def _embeddings(self, body: Message) -> Message:
        inputs = body.get("input")
        if isinstance(inputs, str):
            inputs = [inputs]
        if not (isinstance(inputs, list) and inputs and all(isinstance(i, str) for i in inputs)):
            raise _RequestError(400, "'input' must be a string or a list of strings", "invalid_input")
        data = [{"object": "embedding", "index": i, "embedding": embedding(t)} for i, t in enumerate(inputs)]
        tokens = sum(len(t.split()) for t in inputs)
        reply: dict[str, Any] = {"object": "list", "data": data, "model": str(body.get("model") or MODEL_ID)}
        if self.report_usage:
            reply["usage"] = {"prompt_tokens": tokens, "total_tokens": tokens}
        return reply


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


def _frame(event: Message) -> bytes:
    return b"data: " + _dumps(event) + b"\n\n"


async def _respond(send: Send, status: int, data: object) -> None:
    body = _dumps(data)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


async def _send_stream(send: Send, answer: _Stream) -> None:
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    frames = [*answer.lead, *answer.text, *answer.tail]
    for frame in frames[:-1]:
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await send({"type": "http.response.body", "body": frames[-1]})


async def _until_disconnect(receive: Receive) -> None:
    while (await receive())["type"] != "http.disconnect":
        pass


async def _fail_at_once(fault: Fault, receive: Receive, send: Send) -> None:
    """``<status>`` and ``hang``: before any answer."""
    if fault.mode == "hang":
        await _until_disconnect(receive)
        return
    kind = "server_error" if fault.n >= 500 else "invalid_request_error"
    error = {"message": f"injected fault: {fault.n}", "type": kind, "code": "injected_fault", "param": None}
    await _respond(send, fault.n, {"error": error})


async def _send_faulty_stream(fault: Fault, receive: Receive, send: Send, answer: _Stream) -> None:
    if fault.mode == "slow":
        await _send_slowly(fault.n / 1000, receive, send, [*answer.lead, *answer.text, *answer.tail])
        return
    if fault.mode == "cut-body":
        first = (answer.text or answer.tail)[0]
        frames = [*answer.lead, first[: len(first) // 2]]
    else:
        frames = [*answer.lead, *answer.text[: fault.n]]
    await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
    for frame in frames:
        await send({"type": "http.response.body", "body": frame, "more_body": True})
    await _end(fault, receive, send)


async def _send_slowly(delay_s: float, receive: Receive, send: Send, frames: list[bytes]) -> None:
    """Each frame after ``delay_s``; stops when the client goes away (uvicorn drops what is sent after)."""
    gone = asyncio.ensure_future(_until_disconnect(receive))
    try:
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        for i, frame in enumerate(frames, 1):
            await asyncio.wait([gone], timeout=delay_s)
            if gone.done():
                return
            await send({"type": "http.response.body", "body": frame, "more_body": i < len(frames)})
    finally:
        gone.cancel()


async def _respond_faulty(fault: Fault, receive: Receive, send: Send, data: object) -> None:
    if fault.mode == "slow":
        await asyncio.sleep(fault.n / 1000)
        await _respond(send, 200, data)
        return
    body = _dumps(data)
    half = body[: len(body) // 2]
    declared = len(half) if fault.mode == "eof" else len(body)
    headers = [*_JSON_HEADERS, (b"content-length", str(declared).encode())]
    await send({"type": "http.response.start", "status": 200, "headers": headers})
    await send({"type": "http.response.body", "body": half, "more_body": True})
    await _end(fault, receive, send)


async def _end(fault: Fault, receive: Receive, send: Send) -> None:
    """How a faulty body ends: cleanly (``eof``), never (``stall``), or broken off (the rest)."""
    if fault.mode == "eof":
        await send({"type": "http.response.body", "body": b""})
    elif fault.mode == "stall":
        await _until_disconnect(receive)
    else:
        raise _Drop(fault.mode)


def _config(app: FakeOpenAI, host: str, port: int) -> uvicorn.Config:
    config = uvicorn.Config(
        app,
        host=host,
        port=port,
        http="httptools",
        lifespan="off",
        access_log=False,
        log_level="warning",
        timeout_graceful_shutdown=2,  # a hanging fault still being served must not hold up stop()
    )
    logging.getLogger("uvicorn.error").addFilter(_not_a_drop)
    return config


def start_in_thread(latency_ms: float = 0.0, report_usage: bool = True) -> tuple[str, Callable[[], None]]:
    """Serve on a free local port in a daemon thread; returns ``(base_url, stop)``."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    sock.bind(("127.0.0.1", 0))
    port = sock.getsockname()[1]
    server = uvicorn.Server(_config(FakeOpenAI(latency_ms, report_usage), "127.0.0.1", port))
    thread = threading.Thread(target=server.run, kwargs={"sockets": [sock]}, daemon=True)
    thread.start()
    deadline = time.monotonic() + 10
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            sock.close()
            raise RuntimeError("the fake OpenAI server did not start")
        time.sleep(0.005)

    def stop() -> None:
        server.should_exit = True
        thread.join(timeout=10)
        sock.close()

    return f"http://127.0.0.1:{port}/v1", stop


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    parser.add_argument("--host", default="127.0.0.1")
    parser.add_argument("--port", type=int, default=9100)
    parser.add_argument("--latency-ms", type=float, default=0.0)
    parser.add_argument("--no-usage", action="store_true", help="never report token usage")
    args = parser.parse_args(argv)
    app = FakeOpenAI(args.latency_ms, report_usage=not args.no_usage)
    uvicorn.Server(_config(app, args.host, args.port)).run()


if __name__ == "__main__":
    main()
