"""AzureMLBackend: the InferenceBackend for Azure ML online endpoints (managed or Kubernetes) and serverless
deployments, over HTTPS (never the ``azure-ai-ml`` SDK: seconds to import).

A route's ``format`` picks the scoring format (``azureml_wire.py``): ``hf``, ``text`` and ``chat`` POST the
scoring script's body to the scoring URI and answer whole, so a stream on them is the whole answer as one delta,
then its end; ``openai`` (serverless and vLLM deployments) calls the OpenAI paths under the route's base URL and
streams server-sent events, read and judged as the OpenAI-compatible adapter's are: whole only with a finish
reason, else 502 ``stream_truncated``/``stream_interrupted`` or 504 after the deltas that came.

Calls carry ``Authorization: Bearer`` with the endpoint key (from the variable the route's ``key_env`` names,
else the key the backend was built with) or a Microsoft Entra token (``auth: entra``; azure-identity is imported
on the first such call), and ``azureml-model-deployment`` when the route pins a deployment. Token counts come
from the response where it has them (``usage``, TGI's ``details``); the dedicated formats answer text alone, so
``usage_fallback`` counts them: by default ``conservative_usage`` (UTF-8 bytes, an upper bound; pass the model's
tokenizer count for exact records). Without a finish reason the answer is ``length`` when its completion count
reaches ``max_tokens``. Never logs text, and no error names a key.
"""

from __future__ import annotations

import os
from collections.abc import AsyncIterator, Mapping
from contextlib import aclosing
from typing import TYPE_CHECKING, Any

from adapters.azure.azureml_auth import EntraTokens, TokenCredential
from adapters.azure.azureml_errors import bad_response, error_for_status, misconfigured, not_supported
from adapters.azure.azureml_route import AzureMLRoute
from adapters.azure.azureml_wire import FORMATTERS, Malformed, Reply, cut_at_stop, decode, to_openai_request
from adapters.openai_compat.chat_stream import StreamedReply, read_chat_stream
from adapters.openai_compat.json_transport import JsonTransport, StatusError
from adapters.openai_compat.wire import (
    UsageFallback,
    conservative_usage,
    decode_json,
    from_chat_response,
    from_completion_response,
)
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

DEPLOYMENT_HEADER = "azureml-model-deployment"


class AzureMLBackend:
    """Calls Azure ML endpoints. ``api_key``: the endpoint key of routes that name no ``key_env`` (from the
    runtime's settings); ``credential``: the Entra credential of ``auth: entra`` routes (default: azure-identity's
    ``DefaultAzureCredential``, the managed identity); ``client``: an httpx client of the caller's."""

    def __init__(
        self,
        api_key: str | None = None,
        *,
        credential: TokenCredential | None = None,
        client: httpx.AsyncClient | None = None,
        http_client: str = "auto",
        usage_fallback: UsageFallback | None = None,
    ) -> None:
        self._api_key = api_key
        self._tokens = EntraTokens(credential)
        self._transport = JsonTransport(client, http_client)
        self._usage_fallback = usage_fallback or conservative_usage

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        cfg = AzureMLRoute.parse(route)
        if cfg.format == "openai":
            path, payload = to_openai_request(cfg.model, prompt, params, stream=False)
            body = decode_json(await self._post(cfg, cfg.scoring_uri + path, payload))
            answer = from_chat_response(body) if prompt.is_chat else from_completion_response(body)
            reply = Reply(answer.text, answer.finish_reason, *(answer.usage or (None, None)))
        else:
            formatter = FORMATTERS[cfg.format]
            content = await self._post(cfg, cfg.scoring_uri, formatter.request(prompt, params, cfg.chat_template))
            try:
                reply = formatter.response(decode(content))
            except Malformed as malformed:
                raise bad_response(cfg.where, str(malformed)) from None
            reply = cut_at_stop(reply, params.stop)
        return self._generation(prompt, params, reply)

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        cfg = AzureMLRoute.parse(route)
        if cfg.format != "openai":  # a scoring script answers whole
            whole = await self.generate(route, prompt, params)
            if whole.text:
                yield TextDelta(whole.text)
            yield StreamEnd(whole.finish_reason, whole.prompt_tokens, whole.completion_tokens)
            return
        path, payload = to_openai_request(cfg.model, prompt, params, stream=True)
        headers, token = await self._headers(cfg)
        lines = self._transport.lines(cfg.scoring_uri + path, headers, payload, cfg.timeout_s)
        streamed = StreamedReply()
        try:
            async with aclosing(read_chat_stream(lines, streamed)) as texts:
                async for text in texts:
                    yield TextDelta(text)
        except StatusError as refused:
            raise self._refused(cfg, refused, token) from None
        reason = streamed.reason
        counted = self._generation(prompt, params, Reply(streamed.text, reason, *(streamed.usage or (None, None))))
        yield StreamEnd(reason, counted.prompt_tokens, counted.completion_tokens)

    async def embed(self, route: Mapping[str, Any], inputs: list[str]) -> Embeddings:
        raise not_supported("an Azure ML route serves text generation: embeddings are not supported")

    async def aclose(self) -> None:
        """Close the connections this backend opened on the running loop."""
        await self._transport.aclose()

    async def _post(self, cfg: AzureMLRoute, url: str, payload: dict[str, Any]) -> bytes:
        headers, token = await self._headers(cfg)
        try:
            return await self._transport.post(url, headers, payload, cfg.timeout_s)
        except StatusError as refused:
            raise self._refused(cfg, refused, token) from None

    async def _headers(self, cfg: AzureMLRoute) -> tuple[dict[str, str], str | None]:
        """The call's headers, and the Entra token in them (None on key auth)."""
        token = None
        if cfg.auth == "entra":
            secret = token = await self._tokens.token()
        elif cfg.key_env:
            secret = os.environ.get(cfg.key_env, "")
            if not secret:
                raise misconfigured(
                    f"the Azure ML endpoint {cfg.where} has no endpoint key: the variable {cfg.key_env} is empty"
                )
        elif self._api_key:
            secret = self._api_key
        else:
            raise misconfigured(f"the Azure ML endpoint {cfg.where} has no endpoint key: its route names no key_env")
        headers = {"Authorization": f"Bearer {secret}"}
        if cfg.deployment:
            headers[DEPLOYMENT_HEADER] = cfg.deployment
        return headers, token

    def _refused(self, cfg: AzureMLRoute, refused: StatusError, token: str | None) -> BackendError:
        if cfg.auth == "entra":
            sent = "Entra token"
        else:
            sent = f"endpoint key (from {cfg.key_env})" if cfg.key_env else "endpoint key (from its settings)"
        error = error_for_status(refused.status, refused.body, refused.headers, cfg.where, sent)
        if refused.status == 401 and token is not None:
            # The cached token was refused (revoked, or expired early): dropped, so a retry uses a new one.
            self._tokens.invalidate(token)
            error.retryable = True
        return error

    def _generation(self, prompt: Prompt, params: GenerationParams, reply: Reply) -> Generation:
        prompt_tokens, completion_tokens = reply.prompt_tokens, reply.completion_tokens
        if prompt_tokens is None or completion_tokens is None:
            counted_prompt, counted_completion = self._usage_fallback(prompt, reply.text)
            if prompt_tokens is None:
                prompt_tokens = counted_prompt
            if completion_tokens is None:  # the model stops at max_new_tokens
                completion_tokens = min(counted_completion, params.max_tokens)
        reason = reply.finish_reason or ("length" if completion_tokens >= params.max_tokens else "stop")
        return Generation(reply.text, reason, prompt_tokens, completion_tokens)
