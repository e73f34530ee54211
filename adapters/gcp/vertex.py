"""VertexBackend: the InferenceBackend for Vertex AI endpoints serving vLLM or TGI, over REST (never the
``google.cloud.aiplatform`` SDK: seconds to import).

A route's ``api`` picks the wire format (``vertex_route.py``): ``predict-vllm`` and ``predict-tgi`` call the
endpoint's ``:predict``, ``openai-chat`` its OpenAI chat completions route. ``:predict`` does not stream: a
stream on those routes is the whole answer as one delta, then its end (a route that needs tokens as they come
uses ``openai-chat``, whose streams are read and judged as the OpenAI-compatible adapter's are: whole only with
a finish reason, else 502 ``stream_truncated``/``stream_interrupted`` or 504 after the deltas that came).

Token counts come from the response where it has them (the chat route's ``usage``, a TGI ``details`` block);
the predict containers answer text alone, so ``usage_fallback`` counts them: by default ``conservative_usage``
(UTF-8 bytes, an upper bound; pass the model's tokenizer count for exact records). Without a finish reason the
answer is ``length`` when its completion count reaches ``max_tokens``: an upper bound never calls an answer cut
at ``max_tokens`` ``stop``. Never logs text.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from adapters.gcp.google_auth import GoogleAccessTokens
from adapters.gcp.vertex_errors import error_for_status, not_supported
from adapters.gcp.vertex_route import VertexRoute
from adapters.gcp.vertex_wire import (
    Reply,
    decode_json,
    from_predict_response,
    render_chat,
    to_chat_payload,
    to_tgi_payload,
    to_vllm_payload,
)
from adapters.openai_compat.chat_stream import StreamedReply, read_chat_stream
from adapters.openai_compat.json_transport import JsonTransport, StatusError
from adapters.openai_compat.wire import (
    UsageFallback,
    conservative_usage,
    from_chat_response,
)
from adapters.openai_compat.wire import decode_json as decode_chunk
from core.errors import BackendError
from core.inference import (
    Embeddings,
    Generation,
    GenerationParams,
    Prompt,
    StreamEnd,
    StreamEvent,
    TextDelta,
)

if TYPE_CHECKING:
    import httpx
    from google.auth.credentials import Credentials


class VertexBackend:
    """Calls Vertex AI endpoints with a bearer token of the credentials passed in, else Application Default
    Credentials. ``endpoint_url`` sends every route that names none to that base URL instead of Google's
    regional host (a runtime on a local server); ``client`` an httpx client of the caller's."""

    def __init__(
        self,
        credentials: Credentials | None = None,
        *,
        tokens: GoogleAccessTokens | None = None,
        endpoint_url: str | None = None,
        client: httpx.AsyncClient | None = None,
        http_client: str = "auto",
        usage_fallback: UsageFallback | None = None,
    ) -> None:
        self._tokens = tokens or GoogleAccessTokens(credentials)
        self._endpoint_url = endpoint_url
        self._transport = JsonTransport(client, http_client)
        self._usage_fallback = usage_fallback or conservative_usage

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        cfg = VertexRoute.parse(route, self._endpoint_url)
        if cfg.api == "openai-chat":
            body = decode_chunk(await self._post(cfg, to_chat_payload(cfg.model, prompt, params, stream=False)))
            chat = from_chat_response(body)
            reply = Reply(chat.text, chat.finish_reason, *(chat.usage or (None, None)))
        else:
            sent, payload = _predict_request(cfg, prompt, params)
            reply = from_predict_response(decode_json(await self._post(cfg, payload)), sent)
        return self._generation(prompt, params, reply)

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        cfg = VertexRoute.parse(route, self._endpoint_url)
        if cfg.api != "openai-chat":  # :predict answers whole
            whole = await self.generate(route, prompt, params)
            if whole.text:
                yield TextDelta(whole.text)
            yield StreamEnd(whole.finish_reason, whole.prompt_tokens, whole.completion_tokens)
            return
        payload = to_chat_payload(cfg.model, prompt, params, stream=True)
        token = await self._tokens.token()
        lines = self._transport.lines(cfg.endpoint_url + cfg.path, self._auth(token), payload, cfg.timeout_s)
        streamed = StreamedReply()
        try:
            async with aclosing(read_chat_stream(lines, streamed)) as texts:
                async for text in texts:
                    yield TextDelta(text)
        except StatusError as refused:
            raise self._refused(refused, token) from None
        reason = streamed.reason
        counted = self._generation(prompt, params, Reply(streamed.text, reason, *(streamed.usage or (None, None))))
        yield StreamEnd(reason, counted.prompt_tokens, counted.completion_tokens)

    async def embed(self, route: Mapping[str, Any], inputs: list[str]) -> Embeddings:
        raise not_supported("a Vertex AI route serves text generation: embeddings are not supported")

    async def aclose(self) -> None:
        """Close the connections this backend opened on the running loop."""
        await self._transport.aclose()

    async def _post(self, cfg: VertexRoute, payload: dict[str, Any]) -> bytes:
        token = await self._tokens.token()
        try:
            return await self._transport.post(cfg.endpoint_url + cfg.path, self._auth(token), payload, cfg.timeout_s)
        except StatusError as refused:
            raise self._refused(refused, token) from None

    def _auth(self, token: str) -> dict[str, str]:
        headers = {"Authorization": f"Bearer {token}"}
        quota_project = self._tokens.quota_project
        if quota_project:
            headers["x-goog-user-project"] = quota_project
        return headers

    def _refused(self, refused: StatusError, token: str) -> BackendError:
        if refused.status == 401:
            self._tokens.invalidate(token)
        return error_for_status(refused.status, refused.body, refused.headers)

    def _generation(self, prompt: Prompt, params: GenerationParams, reply: Reply) -> Generation:
        prompt_tokens, completion_tokens = reply.prompt_tokens, reply.completion_tokens
        if prompt_tokens is None or completion_tokens is None:
            counted_prompt, counted_completion = self._usage_fallback(prompt, reply.text)
            if prompt_tokens is None:
                prompt_tokens = counted_prompt
            if completion_tokens is None:  # the container stops at max_tokens
                completion_tokens = min(counted_completion, params.max_tokens)
        reason = reply.finish_reason or ("length" if completion_tokens >= params.max_tokens else "stop")
        return Generation(reply.text, reason, prompt_tokens, completion_tokens)


def _predict_request(cfg: VertexRoute, prompt: Prompt, params: GenerationParams) -> tuple[str | None, dict[str, Any]]:
    """The ``:predict`` body and the prompt text it carries (None for a TGI chat instance)."""
    if cfg.api == "predict-tgi":
        return prompt.text, to_tgi_payload(prompt, params)
    text = prompt.text if prompt.text is not None else render_chat(prompt.messages, cfg.chat_template)
    return text, to_vllm_payload(text, params)
