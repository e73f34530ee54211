"""Vertex AI serving containers on the wire: ``:predict`` bodies for vLLM and TGI and their predictions, and the
OpenAI chat body of an endpoint's chat completions route. Pure mapping, no I/O (``vertex.py`` sends).

``:predict`` wraps a container's input in ``{"instances": [...]}`` and its output in ``{"predictions": [...]}``.
Model Garden's vLLM takes ``{"prompt", "max_tokens", "temperature", "top_p", "raw_response"}``; TGI's Vertex
route takes ``{"inputs", "parameters"}`` or an OpenAI chat request (``messages``). Both answer one string per
instance, with no finish reason and no token counts; a container patched to pass vLLM's ``choices`` through, or
one answering TGI's ``GenerateResponse``, gives more, and every shape is read (WIRE-SCHEMAS.md marks the string
form unverified).
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from adapters.gcp.vertex_route import ChatTemplate
from adapters.openai_compat.wire import is_count, parse_usage
from adapters.openai_compat.wire import to_chat_payload as openai_chat_payload
from core.errors import BackendError
from core.inference import ChatMessage, FinishReason, GenerationParams, Prompt

# What the vLLM container prepends to its output unless ``raw_response`` is true.
_ECHO = "Prompt:\n{}\nOutput:\n"


@dataclass(frozen=True, slots=True)
class Reply:
    """A decoded prediction; a count or the finish reason is None where the container did not report it."""

    text: str
    finish_reason: FinishReason | None = None
    prompt_tokens: int | None = None
    completion_tokens: int | None = None


# -- requests ------------------------------------------------------------------------------------------------


def to_vllm_payload(prompt: str, params: GenerationParams) -> dict[str, Any]:
    """One Model Garden vLLM instance; ``raw_response`` so the output is the model's text alone."""
    instance: dict[str, Any] = {
        "prompt": prompt,
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "raw_response": True,
    }
    if 0 < params.top_p <= 1:
        instance["top_p"] = params.top_p
    if params.stop:
        instance["stop"] = list(params.stop)
    if params.seed is not None:
        instance["seed"] = params.seed
    return {"instances": [instance]}


def to_tgi_payload(prompt: Prompt, params: GenerationParams) -> dict[str, Any]:
    """One TGI instance: ``inputs`` + ``parameters`` for text, an OpenAI chat request for a chat (TGI applies the
    model's own chat template)."""
    if prompt.is_chat:
        chat: dict[str, Any] = {
            "model": "tgi",
            "messages": _messages(prompt.messages),
            "max_tokens": params.max_tokens,
            "temperature": params.temperature,
        }
        if 0 < params.top_p < 1:
            chat["top_p"] = params.top_p
        if params.stop:
            chat["stop"] = list(params.stop)
        if params.seed is not None:
            chat["seed"] = params.seed
        return {"instances": [chat]}
    sample = params.temperature > 0  # TGI rejects temperature 0 and top_p outside (0, 1)
    parameters: dict[str, Any] = {"max_new_tokens": params.max_tokens, "do_sample": sample}
    if sample:
        parameters["temperature"] = params.temperature
        if 0 < params.top_p < 1:
            parameters["top_p"] = params.top_p
    if params.stop:
        parameters["stop"] = list(params.stop)
    if params.seed is not None:
        parameters["seed"] = params.seed
    parameters.update(return_full_text=False, details=True)
    return {"instances": [{"inputs": prompt.text or "", "parameters": parameters}]}


def to_chat_payload(model: str | None, prompt: Prompt, params: GenerationParams, *, stream: bool) -> dict[str, Any]:
    """The OpenAI chat body; a text prompt is sent as one user message (the route serves chat completions only)."""
    chat = prompt if prompt.is_chat else Prompt(messages=(ChatMessage("user", prompt.text or ""),))
    payload = openai_chat_payload(model or "", chat, params, stream=stream)
    if model is None:
        del payload["model"]
    return payload


def render_chat(messages: Sequence[ChatMessage], template: ChatTemplate = "chatml") -> str:
    """The messages as one prompt string for a text-only ``:predict``, ending with the assistant's turn opened.

    ``chatml``: ``<|im_start|>{role}\\n{content}<|im_end|>\\n`` per message, then ``<|im_start|>assistant\\n``.
    ``llama3``: ``<|begin_of_text|>``, ``<|start_header_id|>{role}<|end_header_id|>\\n\\n{content}<|eot_id|>`` per
    message, then the assistant's header. ``none``: the contents joined by blank lines.
    """
    if template == "chatml":
        return "".join(f"<|im_start|>{m.role}\n{m.content}<|im_end|>\n" for m in messages) + "<|im_start|>assistant\n"
    if template == "llama3":
        head = "<|start_header_id|>{}<|end_header_id|>\n\n"
        turns = "".join(head.format(m.role) + m.content + "<|eot_id|>" for m in messages)
        return "<|begin_of_text|>" + turns + head.format("assistant")
    return "\n\n".join(m.content for m in messages)


def _messages(messages: Sequence[ChatMessage]) -> list[dict[str, str]]:
    return [{"role": m.role, "content": m.content} for m in messages]


# -- responses -----------------------------------------------------------------------------------------------


def from_predict_response(body: Any, prompt: str | None = None) -> Reply:
    """The first prediction: a string (vLLM, TGI), a completion choice (``text``), TGI's ``GenerateResponse``
    (``generated_text`` + ``details``) or a whole chat/completion object (``choices``). ``prompt``: the text sent,
    to take off an output the container prefixed with it (``raw_response`` ignored)."""
    if not isinstance(body, Mapping):
        raise bad_response("the response is not a JSON object")
    predictions = body.get("predictions")
    if not (isinstance(predictions, list) and predictions):
        raise bad_response("no predictions in the response")
    item = predictions[0]
    if isinstance(item, list) and item:  # a container answering a list per instance
        item = item[0]
    if isinstance(item, str):
        reply = Reply(item)
    elif isinstance(item, Mapping):
        reply = _from_object(item)
    else:
        raise bad_response("a prediction is neither text nor an object")
    usage = parse_usage(body)
    if usage is not None and reply.prompt_tokens is None and reply.completion_tokens is None:
        reply = Reply(reply.text, reply.finish_reason, *usage)
    if prompt is not None and reply.text.startswith(_ECHO.format(prompt.strip())):
        reply = Reply(reply.text[len(_ECHO.format(prompt.strip())) :], *_rest(reply))
    return reply


def _from_object(item: Mapping[str, Any]) -> Reply:
    choices = item.get("choices")
    if isinstance(choices, list):  # a whole OpenAI response object as the prediction
        if not (choices and isinstance(choices[0], Mapping)):
            raise bad_response("no choices in the prediction")
        choice = choices[0]
        message = choice.get("message")
        text = message.get("content") if isinstance(message, Mapping) else choice.get("text")
        usage = parse_usage(item) or (None, None)
        return Reply(_text(text), finish_reason(choice.get("finish_reason")), *usage)
    if isinstance(item.get("generated_text"), str):  # TGI's GenerateResponse
        details = item.get("details")
        details = details if isinstance(details, Mapping) else {}
        prefill, generated = details.get("prefill"), details.get("generated_tokens")
        return Reply(
            item["generated_text"],
            finish_reason(details.get("finish_reason")),
            len(prefill) if isinstance(prefill, list) and prefill else None,
            generated if is_count(generated) else None,
        )
    if isinstance(item.get("text"), str):  # one of vLLM's completion choices
        return Reply(item["text"], finish_reason(item.get("finish_reason")))
    raise bad_response("a prediction has no text")


def finish_reason(value: object) -> FinishReason | None:
    """OpenAI's and TGI's finish reasons (``length``, ``eos_token``, ``stop_sequence``); None when absent."""
    if value is None:
        return None
    if value == "error":
        raise BackendError("the model container failed while generating", status=502, retryable=True)
    if value == "length":
        return "length"
    if value == "content_filter":
        return "content_filter"
    return "stop"


def decode_json(content: bytes) -> Any:
    try:
        return json.loads(content)
    except ValueError:
        raise bad_response("the response is not JSON") from None


def bad_response(detail: str) -> BackendError:
    return BackendError(f"the Vertex AI endpoint sent a malformed response: {detail}", code="backend_bad_response")


def _rest(reply: Reply) -> tuple[FinishReason | None, int | None, int | None]:
    return reply.finish_reason, reply.prompt_tokens, reply.completion_tokens


def _text(value: object) -> str:
    return value if isinstance(value, str) else ""
