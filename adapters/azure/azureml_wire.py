"""Azure ML scoring formats on the wire: one request/response formatter per model family. Pure mapping, no I/O.

The body of a managed online endpoint is whatever its scoring script reads, so a route names its family
(WIRE-SCHEMAS.md, "Azure ML managed online endpoints"):

* ``hf``: Hugging Face catalog models, ``{"inputs": [prompt], "parameters": {...}}`` →
  ``[{"0": {"generated_text": ...}}]`` (also ``[{"generated_text": ...}]``, ``[{"0": "..."}]``);
* ``text``: the curated text models (Llama, Mistral), ``{"input_data": {"input_string": [prompt],
  "parameters": {...}}}`` → ``[{"0": "..."}]`` (Dolly: ``["..."]``);
* ``chat``: the curated chat models, ``{"input_data": {"input_string": [messages], "parameters": {...}}}`` →
  ``{"output": "..."}``;
* ``openai``: serverless (MaaS) and vLLM deployments speak OpenAI's API (``adapters.openai_compat.wire``).

The first three answer text alone, with no finish reason and no token counts (the backend counts them), take
no stop sequences (the text is cut at the first one here). ``hf`` and ``text`` ask for ``return_full_text``
false: a pipeline's default answer repeats the prompt, and a reply that begins with the prompt is not cut
(the model may repeat it).
"""

from __future__ import annotations

import json
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.azure.azureml_route import ChatTemplate
from adapters.openai_compat.wire import is_count, parse_usage, to_request
from core.inference import ChatMessage, FinishReason, GenerationParams, Prompt


class Malformed(ValueError):
    """The body is not one of the family's shapes; the message says how (the backend names the endpoint)."""


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded answer; a count or the finish reason is None where the endpoint did not report it."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


@dataclass(frozen=True, slots=True)
class Formatter:
    """One model family's scoring format: the body for a prompt, and the reply in the body it answers."""

    request: Callable[[Prompt, GenerationParams, ChatTemplate], dict[str, Any]]
    response: Callable[[Any], Reply]


# -- requests ------------------------------------------------------------------------------------------------


def sampling_parameters(params: GenerationParams, *, full_text: bool | None = False) -> dict[str, Any]:
    """The ``parameters`` of a Hugging Face pipeline: greedy (``do_sample`` false, no temperature) at 0."""
    sample = params.temperature > 0  # transformers rejects temperature 0 when sampling
    parameters: dict[str, Any] = {"max_new_tokens": params.max_tokens, "do_sample": sample}
    if sample:
        parameters["temperature"] = params.temperature
        if 0 < params.top_p < 1:
            parameters["top_p"] = params.top_p
    if full_text is not None:
        parameters["return_full_text"] = full_text
    return parameters


def to_hf_payload(prompt: Prompt, params: GenerationParams, template: ChatTemplate = "chatml") -> dict[str, Any]:
    return {"inputs": [prompt_text(prompt, template)], "parameters": sampling_parameters(params)}


def to_text_payload(prompt: Prompt, params: GenerationParams, template: ChatTemplate = "chatml") -> dict[str, Any]:
    text = prompt_text(prompt, template)
    return {"input_data": {"input_string": [text], "parameters": sampling_parameters(params)}}


def to_chat_payload(prompt: Prompt, params: GenerationParams, template: ChatTemplate = "chatml") -> dict[str, Any]:
    """The messages as the curated chat models take them; a text prompt is one user message."""
    messages = prompt.messages if prompt.is_chat else (ChatMessage("user", prompt.text or ""),)
    turns = [{"role": m.role, "content": m.content} for m in messages]
    return {"input_data": {"input_string": turns, "parameters": sampling_parameters(params, full_text=None)}}


def to_openai_request(
    model: str | None, prompt: Prompt, params: GenerationParams, *, stream: bool
) -> tuple[str, dict[str, Any]]:
    """The path after the route's base URL and the body; ``model`` omitted when unset (the deployment's own)."""
    path, payload = to_request(model or "", prompt, params, stream=stream)
    if model is None:
        del payload["model"]
    return path, payload


def prompt_text(prompt: Prompt, template: ChatTemplate = "chatml") -> str:
    return prompt.text if prompt.text is not None else render_chat(prompt.messages, template)


def render_chat(messages: Sequence[ChatMessage], template: ChatTemplate = "chatml") -> str:
    """The messages as one prompt for a text-only family, ending with the assistant's turn opened (``chatml``,
    ``llama3``), or the contents joined by blank lines (``none``)."""
    if template == "chatml":
        return "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"
    if template == "llama3":
        head = "<|start_header_id|>{}<|end_header_id|>\n\n"
        turns = "".join(head.format(m.role) + m.content + "<|eot_id|>" for m in messages)
        return "<|begin_of_text|>" + turns + head.format("assistant")
    return "\n\n".join(m.content for m in messages)


# -- responses -----------------------------------------------------------------------------------------------


def from_hf_response(body: Any) -> Reply:
    """``[{"0": {"generated_text": ...}}]``, ``[{"generated_text": ...}]``, ``[[{...}]]`` or ``[{"0": "..."}]``."""
    return _scored(_first(body), body)


def from_text_response(body: Any) -> Reply:
    """``[{"0": "..."}]`` or ``["..."]`` (a script answering ``{"output": ...}`` is read too)."""
    if isinstance(body, Mapping) and "output" in body:
        return _scored(body["output"], body)
    return _scored(_first(body), body)


def from_chat_response(body: Any) -> Reply:
    """``{"output": "..."}`` (also ``[{"0": "..."}]``)."""
    if isinstance(body, Mapping) and "output" in body:
        return _scored(body["output"], body)
    return _scored(_first(body), body)


FORMATTERS: dict[str, Formatter] = {
    "hf": Formatter(to_hf_payload, from_hf_response),
    "text": Formatter(to_text_payload, from_text_response),
    "chat": Formatter(to_chat_payload, from_chat_response),
}


def cut_at_stop(reply: Reply, stop: Sequence[str]) -> Reply:
    """The reply cut before the first stop sequence in it (its reason then ``stop``, its count the gateway's)."""
    text = reply.text
    cuts = [i for i in (text.find(s) for s in stop if s) if i >= 0]
    if cuts:
        return Reply(text[: min(cuts)], "stop", reply.prompt_tokens, None)
    return reply


def decode(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        raise Malformed("the response is not JSON") from None


def _first(body: Any) -> Any:
    if not (isinstance(body, list) and body):
        raise Malformed("the response is not a non-empty JSON list")
    item = body[0]
    if isinstance(item, list) and item:  # a pipeline answering a list per input
        item = item[0]
    return item


def _scored(item: Any, body: Any) -> Reply:
    if isinstance(item, Mapping) and "0" in item:  # the scoring scripts key each output by its input's index
        item = item["0"]
    if isinstance(item, list) and item:
        item = item[0]
    usage = parse_usage(body) if isinstance(body, Mapping) else None
    if isinstance(item, str):
        return Reply(item, None, *(usage or (None, None)))
    if isinstance(item, Mapping) and isinstance(item.get("generated_text"), str):
        details = item.get("details")
        details = details if isinstance(details, Mapping) else {}
        generated = details.get("generated_tokens")
        reason = details.get("finish_reason")
        return Reply(
            item["generated_text"],
            None if reason is None else ("length" if reason == "length" else "stop"),
            usage[0] if usage else None,
            generated if is_count(generated) else usage[1] if usage else None,
        )
    raise Malformed("the response holds no generated text")
