"""OpenAICompatBackend: the InferenceBackend for any server that speaks OpenAI's HTTP API.

When an answer is whole. A non-streamed answer is whole when its body arrived as framed and parses as JSON;
otherwise it is a 502 ``backend_bad_response`` (retryable when the transfer broke off: nothing reached the
caller). A stream is whole when a chunk carried a ``finish_reason``: vLLM, TGI, llama.cpp server and Ollama
all send one, then (asked by ``stream_options.include_usage``) a chunk with the usage and no choices, then
``data: [DONE]``. A stream that ends without a finish reason was cut, and never ends with a ``StreamEnd``:

======================================================  ======  ======================
how the body ended, before any finish reason            status  code
======================================================  ======  ======================
cleanly: EOF, the last chunk, or ``data: [DONE]``       502     ``stream_truncated``
broken: a reset, or closed mid-chunk or mid-length      502     ``stream_interrupted``
no byte within the read timeout                         504     ``backend_timeout``
======================================================  ======  ======================

These are retryable only while no text was yielded (the router retries only then anyway). After the finish
reason, a body that breaks off before the usage chunk or ``[DONE]`` still ends the stream: the answer is
whole, and the usage falls back to the conservative count. An unterminated last line is dropped, as the SSE
spec drops an event cut by the end of the stream. Both transports (the built-in pool and httpx) map their
failures to these same errors.
"""

from __future__ import annotations

import asyncio
import json
import os
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any, TypeGuard
from urllib.parse import urlsplit

from adapters.openai_compat.http11 import ConnectionPool, HTTPTimeout, HTTPTransportError, Response
from core.errors import BackendError, BackendTimeout
from core.inference import (
    Embeddings,
    FinishReason,
    Generation,
    GenerationParams,
    Prompt,
    StreamEnd,
    StreamEvent,
    TextDelta,
)

if TYPE_CHECKING:  # httpx is imported on first use: most routes never need it (~160 ms to import)
    import httpx

Usage = tuple[int, int]
UsageFallback = Callable[[Prompt, str], Usage]

# Bytes bound the text of a chat; these bound the markup a chat template adds around each message
# (ChatML adds 4 tokens, Llama 3 adds 5) and before the reply (a role header of up to ~13 tokens).
CHAT_TOKENS_PER_MESSAGE = 8
CHAT_TOKENS_PER_REPLY = 16
# The read timeout (inactivity) when the route sets none: the largest model timeout the admin API accepts
# (``ModelSpec.timeout_s`` <= 900), so the model's own timeout in core/model_router.py is always the one that fires.
DEFAULT_TIMEOUT_S = 900.0
_CONNECT_TIMEOUT_S = 10.0
_MAX_MESSAGE_CHARS = 500
# After ``data: [DONE]``, how long to wait for the end of the body so the connection can be reused.
_DRAIN_GRACE_S = 0.1
# "httpx" sends every call through httpx; "auto" (default) uses the built-in HTTP/1.1 pool for
# plain-http base URLs without a proxy and httpx for the rest (https, proxies, credentials in the URL).
CLIENT_ENV = "TEXTNLP_OPENAI_HTTP_CLIENT"
_PROXY_ENV = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


def conservative_usage(prompt: Prompt, text: str) -> Usage:
    """Counts a byte-level BPE tokenizer never exceeds: one token per UTF-8 byte (+ chat markup)."""
    prompt_tokens = prompt.utf8_bytes()
    if prompt.is_chat:
        prompt_tokens += CHAT_TOKENS_PER_MESSAGE * len(prompt.messages) + CHAT_TOKENS_PER_REPLY
    return prompt_tokens, len(text.encode())


@dataclass(frozen=True, slots=True)
class OpenAIRoute:
    """The registry's ``backend`` entry for an OpenAI-compatible server."""

    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def parse(cls, route: Mapping[str, Any]) -> OpenAIRoute:
        base_url, model = route.get("base_url"), route.get("model")
        if not (isinstance(base_url, str) and base_url and isinstance(model, str) and model):
            raise _misconfigured("an OpenAI-compatible route needs 'base_url' and 'model'")
        key_env, timeout = route.get("api_key_env"), route.get("timeout_s")
        return cls(
            base_url=base_url.rstrip("/"),
            model=model,
            api_key_env=str(key_env) if key_env else None,
            timeout_s=float(timeout) if timeout is not None else DEFAULT_TIMEOUT_S,
        )


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
        raise _bad_response(f"expected {expected} embeddings")
    try:
        ordered = sorted(data, key=lambda item: int(item.get("index", 0)))
        vectors = [[float(x) for x in item["embedding"]] for item in ordered]
    except (AttributeError, KeyError, TypeError, ValueError):
        raise _bad_response("malformed embeddings") from None
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
        return _misconfigured(f"the model backend refused the gateway ({status}): {message}")
    return BackendError(message, status=400, retryable=False, type="invalid_request_error", code="backend_rejected")


def _first_choice(body: Mapping[str, Any]) -> Mapping[str, Any]:
    choices = body.get("choices")
    if not (isinstance(choices, list) and choices and isinstance(choices[0], dict)):
        raise _bad_response("no choices in the response")
    return choices[0]


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""


def is_count(value: object) -> TypeGuard[int]:
    """A token count as a JSON number can carry it: a non-negative int, not a bool."""
    return isinstance(value, int) and not isinstance(value, bool) and value >= 0


def _decode(content: bytes | str) -> dict[str, Any]:
    try:
        data = json.loads(content)
    except ValueError:
        raise _bad_response("the response is not JSON") from None
    if not isinstance(data, dict):
        raise _bad_response("the response is not a JSON object")
    return data


def _bad_response(detail: str, *, retryable: bool = False) -> BackendError:
    message = f"the model backend sent a malformed response: {detail}"
    return BackendError(message, retryable=retryable, code="backend_bad_response")


def _cut_body(kind: str) -> BackendError:
    """A non-streamed body that broke off: nothing reached the caller, so another attempt may do better."""
    return _bad_response(f"the body was cut off ({kind})", retryable=True)


class _BodyBroken(Exception):
    """A response body broke off after its head arrived: ``kind`` as httpx names it (ReadError, ...)."""

    def __init__(self, kind: str, *, timed_out: bool = False) -> None:
        super().__init__(kind)
        self.kind = kind
        self.timed_out = timed_out


def _truncated(ending: str, *, delivered: bool) -> BackendError:
    return BackendError(
        f"the model's stream ended before it finished: {ending} without a finish reason",
        retryable=not delivered,
        code="stream_truncated",
    )


def _interrupted(broken: _BodyBroken, *, delivered: bool) -> BackendError:
    if broken.timed_out:
        error: BackendError = BackendTimeout("the model's stream stalled: no data within the read timeout")
    else:
        message = f"the model's stream was interrupted before it finished: {broken.kind}"
        error = BackendError(message, code="stream_interrupted")
    error.retryable = not delivered
    return error


def _misconfigured(detail: str) -> BackendError:
    return BackendError(detail, status=502, retryable=False, code="backend_misconfigured")


class OpenAICompatBackend:
    """Calls ``{base_url}/chat/completions``, ``/completions`` and ``/embeddings``; never logs text.

    Plain ``http://`` servers (vLLM, TGI, llama.cpp, Ollama on the local network) go through a small
    keep-alive HTTP/1.1 pool (``http11``), an order of magnitude cheaper per call than httpx;
    ``https://``, proxied routes and a ``client`` passed in use httpx.
    """

    def __init__(
        self,
        client: httpx.AsyncClient | None = None,
        api_key: str | None = None,
        usage_fallback: UsageFallback | None = None,
        http_client: str | None = None,
    ) -> None:
        self._given = client
        self._owned: httpx.AsyncClient | None = None
        self._owned_loop: asyncio.AbstractEventLoop | None = None
        self._pool: ConnectionPool | None = None
        self._pools: weakref.WeakKeyDictionary[asyncio.AbstractEventLoop, ConnectionPool] = weakref.WeakKeyDictionary()
        self._api_key = api_key
        self._usage_fallback = usage_fallback or conservative_usage
        choice = http_client or os.environ.get(CLIENT_ENV, "auto")
        self._fast_ok = client is None and choice != "httpx"
        self._targets: dict[str, _Target | None] = {}

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        cfg = OpenAIRoute.parse(route)
        body = await self._post(cfg, *_request(cfg.model, prompt, params, stream=False))
        reply = from_chat_response(body) if prompt.is_chat else from_completion_response(body)
        usage = reply.usage or self._fallback(prompt, reply.text, params)
        return Generation(reply.text, reply.finish_reason or "stop", usage[0], usage[1])

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        """Text deltas as they arrive, then a ``StreamEnd`` only if the server gave a finish reason."""
        cfg = OpenAIRoute.parse(route)
        path, payload = _request(cfg.model, prompt, params, stream=True)
        pieces: list[str] = []
        reason: FinishReason | None = None
        usage: Usage | None = None
        ending = "the body ended"
        target = self._target(cfg.base_url)
        if target is not None:
            lines = self._fast_lines(target, cfg, path, payload)
        else:
            lines = self._httpx_lines(cfg, path, payload)
        try:
            async for line in lines:
                data = sse_data(line)
                if not data:
                    continue
                if data == "[DONE]":
                    ending = "data: [DONE] came"
                    break
                chunk = from_stream_chunk(_decode(data))
                reason = chunk.finish_reason or reason
                usage = chunk.usage or usage
                if chunk.text:
                    pieces.append(chunk.text)
                    yield TextDelta(chunk.text)
        except _BodyBroken as broken:
            if reason is None:
                raise _interrupted(broken, delivered=bool(pieces)) from None
            # The finish reason came: only the usage chunk or [DONE] is missing, the answer is whole.
        finally:
            await lines.aclose()
        if reason is None:
            raise _truncated(ending, delivered=bool(pieces))
        usage = usage or self._fallback(prompt, "".join(pieces), params)
        yield StreamEnd(reason, usage[0], usage[1])

    async def embed(self, route: Mapping[str, Any], inputs: list[str]) -> Embeddings:
        cfg = OpenAIRoute.parse(route)
        body = await self._post(cfg, "/embeddings", to_embeddings_payload(cfg.model, inputs))
        vectors, tokens = from_embeddings_response(body, len(inputs))
        if tokens is None:
            tokens = sum(self._usage_fallback(Prompt(text=text), "")[0] for text in inputs)
        return Embeddings(vectors, tokens, len(vectors[0]) if vectors else 0)

    async def aclose(self) -> None:
        """Close the clients this backend created for this loop (a client passed in is the caller's)."""
        pool = self._pools.pop(asyncio.get_running_loop(), None)
        if pool is not None:
            if self._pool is pool:
                self._pool = None
            await pool.aclose()
        client, self._owned = self._owned, None
        if client is not None:
            await client.aclose()

    def _fallback(self, prompt: Prompt, text: str, params: GenerationParams) -> Usage:
        # The server stops at max_tokens, so the completion can never count more than that.
        prompt_tokens, completion_tokens = self._usage_fallback(prompt, text)
        return prompt_tokens, min(completion_tokens, params.max_tokens)

    # -- transport: the built-in HTTP/1.1 pool ---------------------------------------------------------

    def _target(self, base_url: str) -> _Target | None:
        """Where the built-in client sends requests for ``base_url``; None when httpx must."""
        if not self._fast_ok:
            return None
        try:
            return self._targets[base_url]
        except KeyError:
            target = self._targets[base_url] = _Target.of(base_url)
            return target

    def _fast_pool(self) -> ConnectionPool:
        # One pool per event loop (connections belong to their loop); the last one used is at hand.
        loop = asyncio.get_running_loop()
        pool = self._pool
        if pool is not None and pool.loop is loop:
            return pool
        pool = self._pools.get(loop)
        if pool is None:
            pool = self._pools[loop] = ConnectionPool(max_keepalive=32)
        self._pool = pool
        return pool

    async def _fast_request(
        self, target: _Target, cfg: OpenAIRoute, path: str, payload: dict[str, Any], accept: str
    ) -> Response:
        """One POST through the keep-alive pool, up to the response head; the caller reads the body."""
        headers = self._headers(cfg)
        headers["Content-Type"] = "application/json"
        headers["Accept"] = accept
        try:
            return await self._fast_pool().request(
                "POST",
                target.host,
                target.port,
                target.prefix + path,
                headers,
                _json_bytes(payload),
                read_timeout=cfg.timeout_s,
                connect_timeout=min(cfg.timeout_s, _CONNECT_TIMEOUT_S),
            )
        except HTTPTimeout:
            raise BackendTimeout() from None
        except HTTPTransportError as exc:
            raise _unreachable(exc.kind) from None

    async def _post(self, cfg: OpenAIRoute, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        target = self._target(cfg.base_url)
        if target is None:
            status, headers, content = await self._httpx_post(cfg, path, payload)
        else:
            status, headers, content = await self._fast_post(target, cfg, path, payload)
        if status >= 300:
            raise error_for_status(status, content, headers)
        return _decode(content)

    async def _fast_post(
        self, target: _Target, cfg: OpenAIRoute, path: str, payload: dict[str, Any]
    ) -> tuple[int, Mapping[str, str], bytes]:
        response = await self._fast_request(target, cfg, path, payload, "application/json")
        try:
            content = await response.read()
        except HTTPTimeout:
            raise BackendTimeout() from None
        except HTTPTransportError as exc:
            raise _cut_body(exc.kind) from None
        return response.status_code, response.headers, content

    async def _fast_lines(
        self, target: _Target, cfg: OpenAIRoute, path: str, payload: dict[str, Any]
    ) -> AsyncGenerator[str, None]:
        response = await self._fast_request(target, cfg, path, payload, "text/event-stream")
        try:
            if response.status_code >= 300:
                raise error_for_status(response.status_code, await response.read(), response.headers)
            async for line in sse_lines(response.iter_bytes()):
                if sse_data(line) == "[DONE]":
                    # The body should end right here: read its end so the connection is reused.
                    await response.drain(min(cfg.timeout_s, _DRAIN_GRACE_S))
                yield line
        except HTTPTimeout as exc:
            raise _BodyBroken(exc.kind, timed_out=True) from None
        except HTTPTransportError as exc:
            raise _BodyBroken(exc.kind) from None
        finally:
            response.close()

    # -- transport: httpx --------------------------------------------------------------------------------

    async def _httpx_send(self, cfg: OpenAIRoute, path: str, payload: dict[str, Any]) -> httpx.Response:
        """One POST through httpx, up to the response head; the caller reads the body and closes."""
        import httpx

        client = self._http()
        request = client.build_request(
            "POST", cfg.base_url + path, json=payload, headers=self._headers(cfg), timeout=_timeout(cfg)
        )
        try:
            return await client.send(request, stream=True)
        except httpx.TimeoutException:
            raise BackendTimeout() from None
        except httpx.TransportError as exc:
            raise _unreachable(type(exc).__name__) from None

    async def _httpx_post(
        self, cfg: OpenAIRoute, path: str, payload: dict[str, Any]
    ) -> tuple[int, Mapping[str, str], bytes]:
        import httpx

        response = await self._httpx_send(cfg, path, payload)
        try:
            content = await response.aread()
        except httpx.TimeoutException:
            raise BackendTimeout() from None
        except httpx.TransportError as exc:
            raise _cut_body(type(exc).__name__) from None
        finally:
            await response.aclose()
        return response.status_code, response.headers, content

    async def _httpx_lines(self, cfg: OpenAIRoute, path: str, payload: dict[str, Any]) -> AsyncGenerator[str, None]:
        import httpx

        response = await self._httpx_send(cfg, path, payload)
        try:
            if response.status_code >= 300:
                raise error_for_status(response.status_code, await response.aread(), response.headers)
            async for line in sse_lines(response.aiter_bytes()):
                yield line
        except httpx.TimeoutException as exc:
            raise _BodyBroken(type(exc).__name__, timed_out=True) from None
        except httpx.TransportError as exc:
            raise _BodyBroken(type(exc).__name__) from None
        finally:
            await response.aclose()

    def _headers(self, cfg: OpenAIRoute) -> dict[str, str]:
        key = self._api_key
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise _misconfigured(f"the environment variable {cfg.api_key_env} holds no API key")
        return {"Authorization": f"Bearer {key}"} if key else {}

    def _http(self) -> httpx.AsyncClient:
        """The httpx client: the one passed in, else one per event loop, created on first use."""
        if self._given is not None:
            return self._given
        import httpx

        # One keep-alive client per event loop: a pool's connections cannot outlive their loop.
        loop = asyncio.get_running_loop()
        if self._owned is None or self._owned_loop is not loop:
            self._owned = httpx.AsyncClient(limits=httpx.Limits(max_keepalive_connections=32))
            self._owned_loop = loop
        return self._owned


@dataclass(frozen=True, slots=True)
class _Target:
    host: str
    port: int
    prefix: str

    @classmethod
    def of(cls, base_url: str) -> _Target | None:
        """A plain-http URL the built-in client can serve; None for https, proxies, credentials."""
        try:
            parts = urlsplit(base_url)
            port = parts.port or 80
        except ValueError:
            return None
        if parts.scheme != "http" or not parts.hostname or parts.username or parts.query or parts.fragment:
            return None
        if any(os.environ.get(name) for name in _PROXY_ENV):
            return None  # httpx applies the proxy settings (and NO_PROXY)
        return cls(parts.hostname, port, parts.path.rstrip("/"))


def _json_bytes(payload: dict[str, Any]) -> bytes:
    # As httpx encodes ``json=``: compact, UTF-8, no NaN.
    return json.dumps(payload, ensure_ascii=False, separators=(",", ":"), allow_nan=False).encode()


def _request(model: str, prompt: Prompt, params: GenerationParams, *, stream: bool) -> tuple[str, dict[str, Any]]:
    if prompt.is_chat:
        return "/chat/completions", to_chat_payload(model, prompt, params, stream=stream)
    return "/completions", to_completion_payload(model, prompt, params, stream=stream)


def _timeout(cfg: OpenAIRoute) -> httpx.Timeout:
    import httpx

    return httpx.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, _CONNECT_TIMEOUT_S))


def _unreachable(kind: str) -> BackendError:
    return BackendError(f"the model backend is unreachable: {kind}", status=502, retryable=True)
