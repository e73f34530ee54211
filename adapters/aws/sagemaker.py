"""SageMakerBackend: the InferenceBackend for SageMaker real-time endpoints (TGI, LMI, TEI containers)."""

from __future__ import annotations

import asyncio
import contextlib
import json
import threading
from collections.abc import AsyncGenerator, AsyncIterator, Callable, Iterator, Mapping
from dataclasses import dataclass
from typing import TYPE_CHECKING, Any

from adapters.aws.sagemaker_errors import BROKEN_CONNECTION, MAPPED_ERRORS, backend_error, misconfigured
from adapters.aws.sagemaker_wire import (
    CHAT_TEMPLATES,
    ChatTemplate,
    Reply,
    StreamChunk,
    decode_body,
    from_lmi_response,
    from_messages_response,
    from_tei_response,
    from_tgi_response,
    parse_stream_line,
    prompt_text,
    to_lmi_payload,
    to_messages_payload,
    to_tei_payload,
    to_tgi_payload,
)
from adapters.openai_compat.backend import UsageFallback, conservative_usage
from core.errors import BackendError
from core.inference import Embeddings, Generation, GenerationParams, Prompt, StreamEnd, StreamEvent, TextDelta

if TYPE_CHECKING:
    from botocore.config import Config
    from botocore.eventstream import EventStream
    from mypy_boto3_sagemaker_runtime.client import SageMakerRuntimeClient
    from mypy_boto3_sagemaker_runtime.type_defs import ResponseStreamTypeDef

    _EventStream = EventStream[ResponseStreamTypeDef]

CONTAINERS = ("tgi", "lmi", "tei")
SCHEMAS = ("native", "messages")
# SageMaker gives a container 60 s to answer; the client waits a little longer so the service reports it.
READ_TIMEOUT_S = 70.0
CONNECT_TIMEOUT_S = 5.0


@dataclass(frozen=True, slots=True)
class SageMakerRoute:
    """The registry's ``backend`` entry for a SageMaker endpoint."""

    endpoint_name: str
    container: str = "tgi"
    schema: str = "native"
    chat_template: ChatTemplate = "chatml"
    variant: str | None = None
    inference_component: str | None = None
    region: str | None = None
    model: str = "tgi"
    decoder_input_details: bool = False

    @classmethod
    def parse(cls, route: Mapping[str, Any]) -> SageMakerRoute:
        name = route.get("endpoint_name")
        container, schema = route.get("container", "tgi"), route.get("schema", "native")
        template = route.get("chat_template", "chatml")
        if not (isinstance(name, str) and name):
            raise misconfigured("a SageMaker route needs 'endpoint_name'")
        if container not in CONTAINERS or schema not in SCHEMAS or template not in CHAT_TEMPLATES:
            raise misconfigured(
                f"a SageMaker route needs container in {CONTAINERS}, schema in {SCHEMAS}, "
                f"chat_template in {CHAT_TEMPLATES}"
            )
        return cls(
            endpoint_name=name,
            container=container,
            schema=schema,
            chat_template=template,
            variant=_optional(route, "variant"),
            inference_component=_optional(route, "inference_component"),
            region=_optional(route, "region"),
            model=_optional(route, "model") or "tgi",
            decoder_input_details=bool(route.get("decoder_input_details", False)),
        )

    def request(self, prompt: Prompt, params: GenerationParams, *, stream: bool) -> tuple[dict[str, Any], str]:
        """The payload for this container and the schema its answer comes back in."""
        if self.container == "tei":
            raise misconfigured(f"the SageMaker endpoint {self.endpoint_name} serves embeddings only")
        if prompt.is_chat and self.schema == "messages":
            return to_messages_payload(prompt.messages, params, model=self.model, stream=stream), "messages"
        to_payload = to_lmi_payload if self.container == "lmi" else to_tgi_payload
        text = prompt_text(prompt, self.chat_template)
        return to_payload(text, params, stream=stream, decoder_input_details=self.decoder_input_details), "native"

    def invoke_args(self, payload: Mapping[str, Any]) -> dict[str, Any]:
        args: dict[str, Any] = {
            "EndpointName": self.endpoint_name,
            "Body": json.dumps(payload, ensure_ascii=False, separators=(",", ":")).encode(),
            "ContentType": "application/json",
        }
        if self.variant:
            args["TargetVariant"] = self.variant
        if self.inference_component:
            args["InferenceComponentName"] = self.inference_component
        return args


class SageMakerBackend:
    """Calls ``invoke_endpoint`` / ``invoke_endpoint_with_response_stream``; never logs text.

    Token counts come from the container's ``details`` (``generated_tokens``; prompt tokens from
    ``prefill`` or a stream's ``input_length``) or an OpenAI ``usage``. Where the container reports
    none (TGI/LMI without ``decoder_input_details`` do not report prompt tokens on ``invoke_endpoint``,
    TEI reports no counts), ``usage_fallback`` counts them: by default ``conservative_usage`` (UTF-8 bytes,
    an upper bound); pass the model's tokenizer count for exact records.
    """

    def __init__(
        self,
        client: SageMakerRuntimeClient | None = None,
        *,
        usage_fallback: UsageFallback | None = None,
        config: Config | None = None,
    ) -> None:
        self._given = client
        self._config = config
        self._clients: dict[str | None, SageMakerRuntimeClient] = {}
        self._lock = threading.Lock()
        self._usage_fallback = usage_fallback or conservative_usage

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        cfg = SageMakerRoute.parse(route)
        payload, schema = cfg.request(prompt, params, stream=False)
        body = decode_body(await asyncio.to_thread(self._invoke, cfg, payload))
        reply = _decode_reply(cfg, schema, body)
        prompt_tokens, completion_tokens = self._usage(prompt, reply.text, params, reply)
        return Generation(reply.text, reply.finish_reason or "stop", prompt_tokens, completion_tokens)

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        cfg = SageMakerRoute.parse(route)
        payload, schema = cfg.request(prompt, params, stream=True)
        events = await asyncio.to_thread(self._open_stream, cfg, payload)
        pieces: list[str] = []
        final = StreamChunk()
        try:
            async with contextlib.aclosing(_lines(events)) as lines:
                async for line in lines:
                    chunk = parse_stream_line(line, schema)
                    if chunk is None:
                        continue
                    if chunk.done:
                        break
                    final = _merge(final, chunk)
                    if chunk.text:
                        pieces.append(chunk.text)
                        yield TextDelta(chunk.text)
        finally:
            # Closing waits for a read in progress to return (a stalled stream: until the stall ends), so it
            # runs on a worker thread: a stream cut at its deadline must not block the event loop.
            asyncio.get_running_loop().run_in_executor(None, events.close)
        if final.finish_reason is None:
            # TGI and LMI end with a `details` chunk, the messages schema with a finish reason: without it the
            # answer was cut, and saying "stop" would hide that from the caller.
            raise BackendError(
                f"the stream of SageMaker endpoint {cfg.endpoint_name} ended before it finished (no finish reason)",
                status=502,
                code="stream_truncated",
            )
        reply = Reply("".join(pieces), final.finish_reason, final.prompt_tokens, final.completion_tokens)
        prompt_tokens, completion_tokens = self._usage(prompt, reply.text, params, reply)
        yield StreamEnd(final.finish_reason, prompt_tokens, completion_tokens)

    async def embed(self, route: Mapping[str, Any], inputs: list[str]) -> Embeddings:
        cfg = SageMakerRoute.parse(route)
        if cfg.container != "tei":
            raise misconfigured(f"the SageMaker endpoint {cfg.endpoint_name} is not an embeddings (tei) container")
        body = decode_body(await asyncio.to_thread(self._invoke, cfg, to_tei_payload(inputs)))
        vectors = from_tei_response(body, len(inputs))
        tokens = sum(self._usage_fallback(Prompt(text=text), "")[0] for text in inputs)
        return Embeddings(vectors, tokens, len(vectors[0]) if vectors else 0)

    def client(self, region: str | None = None) -> SageMakerRuntimeClient:
        """The client passed in, else one per region, created on first use and kept for the container."""
        if self._given is not None:
            return self._given
        with self._lock:
            found = self._clients.get(region)
            if found is None:
                import boto3
                from botocore.config import Config

                config = self._config or Config(
                    read_timeout=READ_TIMEOUT_S,
                    connect_timeout=CONNECT_TIMEOUT_S,
                    retries={"total_max_attempts": 1},  # the gateway retries, with backoff and fallbacks
                    max_pool_connections=64,
                    tcp_keepalive=True,
                )
                found = self._clients[region] = boto3.client("sagemaker-runtime", region_name=region, config=config)
            return found

    def _usage(self, prompt: Prompt, text: str, params: GenerationParams, reply: Reply) -> tuple[int, int]:
        prompt_tokens, completion_tokens = reply.prompt_tokens, reply.completion_tokens
        if prompt_tokens is None or completion_tokens is None:
            fallback_prompt, fallback_completion = self._usage_fallback(prompt, text)
            if prompt_tokens is None:
                prompt_tokens = fallback_prompt
            if completion_tokens is None:  # the container stops at max_new_tokens
                completion_tokens = min(fallback_completion, params.max_tokens)
        return prompt_tokens, completion_tokens

    def _invoke(self, cfg: SageMakerRoute, payload: Mapping[str, Any]) -> bytes:
        try:
            response = self.client(cfg.region).invoke_endpoint(**cfg.invoke_args(payload), Accept="application/json")
            return response["Body"].read()
        except MAPPED_ERRORS as exc:
            raise backend_error(exc) from None

    def _open_stream(self, cfg: SageMakerRoute, payload: Mapping[str, Any]) -> _EventStream:
        try:
            response = self.client(cfg.region).invoke_endpoint_with_response_stream(**cfg.invoke_args(payload))
        except MAPPED_ERRORS as exc:
            raise backend_error(exc) from None
        return response["Body"]


def _decode_reply(cfg: SageMakerRoute, schema: str, body: Any) -> Reply:
    if schema == "messages":
        return from_messages_response(body)
    parse: Callable[[Any], Reply] = from_lmi_response if cfg.container == "lmi" else from_tgi_response
    return parse(body)


def _merge(final: StreamChunk, chunk: StreamChunk) -> StreamChunk:
    """Keep the latest finish reason and counts (OpenAI sends usage in its own chunk after the reason)."""
    return StreamChunk(
        "",
        chunk.finish_reason or final.finish_reason,
        chunk.prompt_tokens if chunk.prompt_tokens is not None else final.prompt_tokens,
        chunk.completion_tokens if chunk.completion_tokens is not None else final.completion_tokens,
    )


async def _lines(events: _EventStream) -> AsyncGenerator[bytes, None]:
    """The container's output lines: PayloadPart bytes do not align with lines, so buffer and split."""
    iterator = iter(events)
    buffer = bytearray()
    started = False
    while True:
        part = await asyncio.to_thread(_next_part, iterator, started)
        started = True
        if part is None:
            break
        buffer += part
        if b"\n" in part:
            *lines, rest = bytes(buffer).split(b"\n")
            buffer = bytearray(rest)
            for line in lines:
                yield line
    if buffer:
        yield bytes(buffer)


def _next_part(iterator: Iterator[ResponseStreamTypeDef], started: bool = False) -> bytes | None:
    """The next PayloadPart's bytes (None at the end); stream error events raise BackendError.

    Once the stream has started, a connection that breaks is the stream being interrupted (502
    ``stream_interrupted``, as the OpenAI-compatible adapter says it), not an endpoint that cannot be reached.
    """
    try:
        for event in iterator:
            part = event.get("PayloadPart")
            if part is not None:
                return part.get("Bytes", b"")
            if "ModelStreamError" in event or "InternalStreamFailure" in event:
                raise BackendError("the model stream failed", status=502, retryable=True)
        return None
    except MAPPED_ERRORS as exc:
        if started and isinstance(exc, BROKEN_CONNECTION):
            raise BackendError(
                f"the SageMaker stream was interrupted before it finished: {type(exc).__name__}",
                status=502,
                code="stream_interrupted",
            ) from None
        raise backend_error(exc) from None


def _optional(route: Mapping[str, Any], name: str) -> str | None:
    value = route.get(name)
    return str(value) if value else None
