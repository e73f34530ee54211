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
import os
import weakref
from collections.abc import AsyncGenerator, AsyncIterator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from adapters.openai_compat.chat_stream import StreamedReply, read_chat_stream
from adapters.openai_compat.http11 import ConnectionPool, HTTPTimeout, HTTPTransportError, Response
from adapters.openai_compat.route import DEFAULT_TIMEOUT_S, OpenAIRoute, Target
from adapters.openai_compat.wire import (
    CHAT_TOKENS_PER_MESSAGE,
    CHAT_TOKENS_PER_REPLY,
    BodyBroken,
    Usage,
    UsageFallback,
    conservative_usage,
    cut_body,
    decode_json,
    error_for_status,
    finish_reason,
    from_chat_response,
    from_completion_response,
    from_embeddings_response,
    from_stream_chunk,
    is_count,
    json_bytes,
    misconfigured,
    parse_usage,
    sse_data,
    sse_lines,
    to_chat_payload,
    to_completion_payload,
    to_embeddings_payload,
    to_request,
    unreachable,
    upstream_message,
)
from core.errors import BackendTimeout
from core.inference import (
    Embeddings,
    Generation,
    GenerationParams,
    Prompt,
    StreamEnd,
    StreamEvent,
    TextDelta,
)

if TYPE_CHECKING:  # httpx is imported on first use: most routes never need it (~160 ms to import)
    import httpx

_CONNECT_TIMEOUT_S = 10.0
# After ``data: [DONE]``, how long to wait for the end of the body so the connection can be reused.
_DRAIN_GRACE_S = 0.1
# "httpx" sends every call through httpx; "auto" (default) uses the built-in HTTP/1.1 pool for
# plain-http base URLs without a proxy and httpx for the rest (https, proxies, credentials in the URL).
CLIENT_ENV = "TEXTNLP_OPENAI_HTTP_CLIENT"


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
        self._targets: dict[str, Target | None] = {}

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        cfg = OpenAIRoute.parse(route)
        body = await self._post(cfg, *to_request(cfg.model, prompt, params, stream=False))
        reply = from_chat_response(body) if prompt.is_chat else from_completion_response(body)
        usage = reply.usage or self._fallback(prompt, reply.text, params)
        return Generation(reply.text, reply.finish_reason or "stop", usage[0], usage[1])

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        """Text deltas as they arrive, then a ``StreamEnd`` only if the server gave a finish reason."""
        cfg = OpenAIRoute.parse(route)
        path, payload = to_request(cfg.model, prompt, params, stream=True)
        target = self._target(cfg.base_url)
        if target is not None:
            lines = self._fast_lines(target, cfg, path, payload)
        else:
            lines = self._httpx_lines(cfg, path, payload)
        streamed = StreamedReply()
        async with aclosing(read_chat_stream(lines, streamed)) as texts:
            async for text in texts:
                yield TextDelta(text)
        reason = streamed.reason
        usage = streamed.usage or self._fallback(prompt, streamed.text, params)
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

    def _target(self, base_url: str) -> Target | None:
        """Where the built-in client sends requests for ``base_url``; None when httpx must."""
        if not self._fast_ok:
            return None
        try:
            return self._targets[base_url]
        except KeyError:
            target = self._targets[base_url] = Target.of(base_url)
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
        self, target: Target, cfg: OpenAIRoute, path: str, payload: dict[str, Any], accept: str
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
                json_bytes(payload),
                read_timeout=cfg.timeout_s,
                connect_timeout=min(cfg.timeout_s, _CONNECT_TIMEOUT_S),
            )
        except HTTPTimeout:
            raise BackendTimeout() from None
        except HTTPTransportError as exc:
            raise unreachable(exc.kind) from None

    async def _post(self, cfg: OpenAIRoute, path: str, payload: dict[str, Any]) -> dict[str, Any]:
        target = self._target(cfg.base_url)
        if target is None:
            status, headers, content = await self._httpx_post(cfg, path, payload)
        else:
            status, headers, content = await self._fast_post(target, cfg, path, payload)
        if status >= 300:
            raise error_for_status(status, content, headers)
        return decode_json(content)

    async def _fast_post(
        self, target: Target, cfg: OpenAIRoute, path: str, payload: dict[str, Any]
    ) -> tuple[int, Mapping[str, str], bytes]:
        response = await self._fast_request(target, cfg, path, payload, "application/json")
        try:
            content = await response.read()
        except HTTPTimeout:
            raise BackendTimeout() from None
        except HTTPTransportError as exc:
            raise cut_body(exc.kind) from None
        return response.status_code, response.headers, content

    async def _fast_lines(
        self, target: Target, cfg: OpenAIRoute, path: str, payload: dict[str, Any]
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
            raise BodyBroken(exc.kind, timed_out=True) from None
        except HTTPTransportError as exc:
            raise BodyBroken(exc.kind) from None
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
            raise unreachable(type(exc).__name__) from None

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
            raise cut_body(type(exc).__name__) from None
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
            raise BodyBroken(type(exc).__name__, timed_out=True) from None
        except httpx.TransportError as exc:
            raise BodyBroken(type(exc).__name__) from None
        finally:
            await response.aclose()

    def _headers(self, cfg: OpenAIRoute) -> dict[str, str]:
        key = self._api_key
        if cfg.api_key_env:
            key = os.environ.get(cfg.api_key_env)
            if not key:
                raise misconfigured(f"the environment variable {cfg.api_key_env} holds no API key")
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


def _timeout(cfg: OpenAIRoute) -> httpx.Timeout:
    import httpx

    return httpx.Timeout(cfg.timeout_s, connect=min(cfg.timeout_s, _CONNECT_TIMEOUT_S))


# tests/unit/test_http11.py reaches the route's target under its former name.
_Target = Target

# The wire mapping and the route are still imported from here (the SageMaker adapter, tests, bench).
__all__ = [
    "CHAT_TOKENS_PER_MESSAGE",
    "CHAT_TOKENS_PER_REPLY",
    "CLIENT_ENV",
    "DEFAULT_TIMEOUT_S",
    "OpenAICompatBackend",
    "OpenAIRoute",
    "UsageFallback",
    "conservative_usage",
    "error_for_status",
    "finish_reason",
    "from_chat_response",
    "from_completion_response",
    "from_embeddings_response",
    "from_stream_chunk",
    "is_count",
    "parse_usage",
    "sse_data",
    "sse_lines",
    "to_chat_payload",
    "to_completion_payload",
    "to_embeddings_payload",
    "upstream_message",
]
