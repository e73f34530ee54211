"""SageMaker container wire formats: TGI, LMI/DJL, OpenAI messages and TEI, as pure functions."""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any, Literal

from adapters.openai_compat.backend import from_chat_response, from_stream_chunk, is_count, upstream_message
from core.errors import BackendError
from core.inference import ChatMessage, FinishReason, GenerationParams, Prompt

ChatTemplate = Literal["chatml", "llama3", "none"]
CHAT_TEMPLATES: tuple[ChatTemplate, ...] = ("chatml", "llama3", "none")


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded response; a count is None where the container did not report it."""

    text: str
    finish_reason: FinishReason | None
    prompt_tokens: int | None
    completion_tokens: int | None


@dataclass(frozen=True, slots=True)
class StreamChunk:
    """One parsed stream line: a piece of text and, on the last one, the final details."""

    text: str = ""
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None
    done: bool = False


# -- chat templates for text-only containers --------------------------------------------------------


def render_chat(messages: Sequence[ChatMessage], template: ChatTemplate = "chatml") -> str:
    """The messages as one prompt string, ending with the opening of the assistant's turn.

    ``chatml``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then ``<|im_start|>assistant\\n``.
    ``llama3``: ``<|begin_of_text|>`` then ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>``
    per message, then the assistant header. ``none``: the contents joined by blank lines, no markup.
    """
    if template == "chatml":
        turns = "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages)
        return turns + "<|im_start|>assistant\n"
    if template == "llama3":
        head = "<|start_header_id|>{}<|end_header_id|>\n\n"
        turns = "".join(head.format(m.role) + m.content + "<|eot_id|>" for m in messages)
        return "<|begin_of_text|>" + turns + head.format("assistant")
    if template == "none":
        return "\n\n".join(m.content for m in messages)
    raise ValueError(f"unknown chat template: {template!r}")


def prompt_text(prompt: Prompt, template: ChatTemplate = "chatml") -> str:
    return prompt.text if prompt.text is not None else render_chat(prompt.messages, template)


# -- TGI and LMI (the containers' native "inputs" schema) ---------------------------------------------


def to_tgi_payload(
    prompt: str, params: GenerationParams, *, stream: bool = False, decoder_input_details: bool = False
) -> dict[str, Any]:
    """TGI ``inputs`` + ``parameters``; temperature 0 is greedy (TGI rejects 0 and top_p outside (0, 1))."""
    parameters = _sampling(params)
    if params.stop:
        parameters["stop"] = list(params.stop)
    parameters["decoder_input_details"] = decoder_input_details and not stream
    return {"inputs": prompt, "parameters": parameters, "stream": stream}


def to_lmi_payload(
    prompt: str, params: GenerationParams, *, stream: bool = False, decoder_input_details: bool = False
) -> dict[str, Any]:
    """LMI/DJL rolling-batch request: as TGI's, with ``stop_sequences`` for the stop strings."""
    parameters = _sampling(params)
    if params.stop:
        parameters["stop_sequences"] = list(params.stop)
    parameters["decoder_input_details"] = decoder_input_details and not stream
    return {"inputs": prompt, "parameters": parameters, "stream": stream}


def _sampling(params: GenerationParams) -> dict[str, Any]:
    sample = params.temperature > 0
    parameters: dict[str, Any] = {"max_new_tokens": params.max_tokens, "do_sample": sample}
    if sample:
        parameters["temperature"] = params.temperature
        if 0 < params.top_p < 1:
            parameters["top_p"] = params.top_p
    if params.seed is not None:
        parameters["seed"] = params.seed
    parameters.update(return_full_text=False, details=True)
    return parameters


def from_tgi_response(body: Any) -> Reply:
    """TGI answers a list of ``GenerateResponse`` (compat route) or, unverified, a single object."""
    return _generated(body)


def from_lmi_response(body: Any) -> Reply:
    """LMI answers an object (a list with ``OPTION_TGI_COMPAT``); ``finish reason`` may have a space."""
    return _generated(body)


def _generated(body: Any) -> Reply:
    item = body[0] if isinstance(body, list) and body else body
    if not isinstance(item, dict) or not isinstance(item.get("generated_text"), str):
        raise bad_response("no generated_text in the response")
    details = item.get("details")
    details = details if isinstance(details, dict) else {}
    prompt_tokens, completion = _prompt_tokens(details), details.get("generated_tokens")
    return Reply(
        item["generated_text"],
        _finish(details),
        prompt_tokens if prompt_tokens is not None else _usage(item, "prompt_tokens"),
        completion if is_count(completion) else _usage(item, "completion_tokens"),
    )


def _finish(details: Mapping[str, Any]) -> FinishReason | None:
    value = details.get("finish_reason", details.get("finish reason"))
    if value is None:
        return None
    if value == "error":
        raise BackendError("the model container failed while generating", status=502, retryable=True)
    return "length" if value == "length" else "stop"


def _prompt_tokens(details: Mapping[str, Any]) -> int | None:
    """``details.prefill`` (only filled with ``decoder_input_details``) or stream ``input_length``."""
    prefill, length = details.get("prefill"), details.get("input_length")
    if isinstance(prefill, list) and prefill:
        return len(prefill)
    return length if is_count(length) else None


def _usage(body: Mapping[str, Any], name: str) -> int | None:
    usage = body.get("usage")
    value = usage.get(name) if isinstance(usage, dict) else None
    return value if is_count(value) else None


# -- OpenAI messages schema (TGI >= 1.4 and LMI serve it on /invocations) ----------------------------


def to_messages_payload(
    messages: Sequence[ChatMessage], params: GenerationParams, *, model: str = "tgi", stream: bool = False
) -> dict[str, Any]:
    payload: dict[str, Any] = {
        "model": model,
        "messages": [{"role": m.role, "content": m.content} for m in messages],
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
    }
    if 0 < params.top_p < 1:
        payload["top_p"] = params.top_p
    if params.stop:
        payload["stop"] = list(params.stop)
    if params.seed is not None:
        payload["seed"] = params.seed
    if stream:
        payload.update(stream=True, stream_options={"include_usage": True})
    return payload


def from_messages_response(body: Any) -> Reply:
    if not isinstance(body, dict):
        raise bad_response("the response is not a JSON object")
    reply = from_chat_response(body)
    prompt_tokens, completion = reply.usage or (None, None)
    return Reply(reply.text, reply.finish_reason, prompt_tokens, completion)


# -- streams -------------------------------------------------------------------------------------------


def parse_stream_line(line: bytes | str, schema: str = "native") -> StreamChunk | None:
    """One line of a TGI SSE / LMI jsonlines (``native``) or OpenAI chunk (``messages``) stream.

    Returns None for blank lines, SSE comments and fields other than ``data``.
    """
    text = line.decode(errors="replace") if isinstance(line, bytes) else line
    text = text.strip()
    if text.startswith("data:"):
        text = text[5:].strip()
    elif not text.startswith(("{", "[")):
        return None
    if not text:
        return None
    if text == "[DONE]":
        return StreamChunk(done=True)
    try:
        data = json.loads(text)
    except ValueError:
        raise bad_response("a stream line is not JSON") from None
    if not isinstance(data, dict):
        raise bad_response("a stream line is not a JSON object")
    if schema == "messages":
        reply = from_stream_chunk(data)
        prompt_tokens, completion = reply.usage or (None, None)
        return StreamChunk(reply.text, reply.finish_reason, prompt_tokens, completion)
    return _native_chunk(data)


def _native_chunk(data: Mapping[str, Any]) -> StreamChunk:
    if "error" in data:
        raise BackendError(f"the model container failed mid-stream: {upstream_message(data)}", retryable=True)
    token = data.get("token")
    piece = ""
    if isinstance(token, dict) and not token.get("special") and isinstance(token.get("text"), str):
        piece = token["text"]
    details = data.get("details")
    if not isinstance(details, dict):
        return StreamChunk(piece)
    completion = details.get("generated_tokens")
    return StreamChunk(
        piece, _finish(details) or "stop", _prompt_tokens(details), completion if is_count(completion) else None
    )


# -- TEI / feature extraction --------------------------------------------------------------------------


def to_tei_payload(inputs: list[str]) -> dict[str, Any]:
    return {"inputs": inputs}


def from_tei_response(body: Any, expected: int) -> list[list[float]]:
    """TEI answers one vector per input; an ``{"embeddings": [...]}`` object is accepted too."""
    vectors = body.get("embeddings") if isinstance(body, dict) else body
    if not isinstance(vectors, list) or len(vectors) != expected:
        raise bad_response(f"expected {expected} embeddings")
    try:
        return [[float(x) for x in vector] for vector in vectors]
    except (TypeError, ValueError):
        raise bad_response("malformed embeddings (a pooled vector per input is expected)") from None


# -- shared --------------------------------------------------------------------------------------------


def decode_body(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        raise bad_response("the response is not JSON") from None


def container_error_type(body: bytes | str) -> str | None:
    """TGI's ``error_type`` (validation, generation, overloaded, incomplete_generation), if any."""
    try:
        data = json.loads(body)
    except ValueError:
        return None
    value = data.get("error_type") if isinstance(data, dict) else None
    return value if isinstance(value, str) else None


def bad_response(detail: str) -> BackendError:
    return BackendError(f"the model endpoint sent a malformed response: {detail}", code="backend_bad_response")
