"""FakeOpenAI: a zero-latency OpenAI-compatible server, the baseline the gateway is compared against.

Raw ASGI, stdlib json, served by uvicorn with httptools. The reply echoes the first words of the
prompt (the last chat message), capped at ``max_tokens`` words; usage counts words.

    python -m bench.fake_openai_server --port 9100 [--latency-ms 0] [--no-usage]
"""

from __future__ import annotations

import argparse
import asyncio
import hashlib
import itertools
import json
import math
import socket
import threading
import time
from collections.abc import Awaitable, Callable
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
        if self.latency_s:
            await asyncio.sleep(self.latency_s)
        await handler(body, send)

    async def _completions(self, body: Message, send: Send) -> None:
        prompt = body.get("prompt")
        if isinstance(prompt, list) and prompt:
            prompt = prompt[0]
        if not isinstance(prompt, str):
            raise _RequestError(400, "'prompt' must be a string", "invalid_prompt")
        await self._generate(body, send, prompt, prompt, chat=False)

    async def _chat(self, body: Message, send: Send) -> None:
        messages = body.get("messages")
        if not (isinstance(messages, list) and messages and all(isinstance(m, dict) for m in messages)):
            raise _RequestError(400, "'messages' must be a list of objects", "invalid_messages")
        contents = [str(m.get("content") or "") for m in messages]
        await self._generate(body, send, contents[-1], " ".join(contents), chat=True)

    async def _generate(self, body: Message, send: Send, source: str, whole: str, *, chat: bool) -> None:
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
            await self._stream(send, head, text, reason, usage if with_usage else None, chat=chat)
            return
        if chat:
            choice = {"index": 0, "message": {"role": "assistant", "content": text}, "finish_reason": reason}
        else:
            choice = {"index": 0, "text": text, "finish_reason": reason, "logprobs": None}
        reply: dict[str, Any] = {**head, "choices": [choice]}
        if self.report_usage:
            reply["usage"] = usage
        await _respond(send, 200, reply)

    async def _stream(
        self, send: Send, head: Message, text: str, reason: str, usage: Message | None, *, chat: bool
    ) -> None:
        head = {**head, "object": "chat.completion.chunk" if chat else "text_completion"}
        if usage is not None and self.report_usage:
            head["usage"] = None

        def chunk(piece: str | None, finish: str | None) -> Message:
            if chat:
                delta = {} if piece is None else {"content": piece}
                return {**head, "choices": [{"index": 0, "delta": delta, "finish_reason": finish}]}
            return {**head, "choices": [{"index": 0, "text": piece or "", "finish_reason": finish}]}

        events: list[Message] = []
        if chat:
            events.append({**head, "choices": [{"index": 0, "delta": {"role": "assistant", "content": ""}}]})
        words = text.split(" ") if text else []
        events += [chunk(word if i == 0 else " " + word, None) for i, word in enumerate(words)]
        events.append(chunk(None, reason))
        if usage is not None and self.report_usage:
            events.append({**head, "choices": [], "usage": usage})
        await send({"type": "http.response.start", "status": 200, "headers": _SSE_HEADERS})
        for event in events:
            await send({"type": "http.response.body", "body": b"data: " + _dumps(event) + b"\n\n", "more_body": True})
        await send({"type": "http.response.body", "body": b"data: [DONE]\n\n"})

    async def _embeddings(self, body: Message, send: Send) -> None:
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
        await _respond(send, 200, reply)


async def _read_body(receive: Receive) -> bytes:
    chunks: list[bytes] = []
    while True:
        message = await receive()
        chunks.append(message.get("body", b""))
        if not message.get("more_body"):
            return b"".join(chunks)


async def _respond(send: Send, status: int, data: object) -> None:
    body = _dumps(data)
    headers = [*_JSON_HEADERS, (b"content-length", str(len(body)).encode())]
    await send({"type": "http.response.start", "status": status, "headers": headers})
    await send({"type": "http.response.body", "body": body})


def _config(app: FakeOpenAI, host: str, port: int) -> uvicorn.Config:
    return uvicorn.Config(
        app, host=host, port=port, http="httptools", lifespan="off", access_log=False, log_level="warning"
    )


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
