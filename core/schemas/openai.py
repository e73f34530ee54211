"""OpenAI-compatible request and response models: completions, chat, embeddings, models."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, field_validator

from core.schemas.common import SamplingFields, Usage

MAX_EMBED_INPUTS = 256
MAX_PROMPTS = 64


class StreamOptions(BaseModel):
    model_config = ConfigDict(extra="ignore")
    include_usage: bool = False


class CompletionRequest(SamplingFields):
    prompt: str | list[str]
    stream_options: StreamOptions | None = None
    echo: bool = False

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str | list[str]:
        items = [value] if isinstance(value, str) else value
        if not items or len(items) > MAX_PROMPTS:
            raise ValueError(f"give between 1 and {MAX_PROMPTS} prompts")
        if any(not p.strip() for p in items):
            raise ValueError("prompt cannot be empty")
        return value


class TextPart(BaseModel):
    type: Literal["text"]
    text: str


class ChatMessageIn(BaseModel):
    model_config = ConfigDict(extra="ignore")
    role: Literal["system", "developer", "user", "assistant", "tool"]
    content: str | list[TextPart] | None = None
    name: str | None = None

    def text(self) -> str:
        if self.content is None:
            return ""
        if isinstance(self.content, str):
            return self.content
        return "".join(p.text for p in self.content)


class ChatCompletionRequest(SamplingFields):
    messages: Annotated[list[ChatMessageIn], Field(min_length=1, max_length=512)]
    max_completion_tokens: Annotated[int, Field(ge=1)] | None = None
    stream_options: StreamOptions | None = None

    @field_validator("messages")
    @classmethod
    def _messages(cls, value: list[ChatMessageIn]) -> list[ChatMessageIn]:
        if not any(m.text().strip() for m in value):
            raise ValueError("messages have no content")
        return value

    def effective_max_tokens(self) -> int | None:
        return self.max_completion_tokens if self.max_completion_tokens is not None else self.max_tokens


class EmbeddingRequest(BaseModel):
    model_config = ConfigDict(extra="ignore")
    model: Annotated[str, Field(min_length=1, max_length=256)]
    input: str | list[str]
    encoding_format: Literal["float", "base64"] = "float"
    user: str | None = None

    @field_validator("input")
    @classmethod
    def _input(cls, value: str | list[str]) -> str | list[str]:
        items = [value] if isinstance(value, str) else value
        if not items or len(items) > MAX_EMBED_INPUTS:
            raise ValueError(f"give between 1 and {MAX_EMBED_INPUTS} inputs")
        if any(not s.strip() for s in items):
            raise ValueError("input cannot contain empty strings")
        return value

    def inputs(self) -> list[str]:
        return [self.input] if isinstance(self.input, str) else list(self.input)


class CompletionChoice(BaseModel):
    index: int
    text: str
    finish_reason: str | None
    logprobs: None = None


class CompletionResponse(BaseModel):
    id: str
    object: Literal["text_completion"] = "text_completion"
    created: int
    model: str
    choices: list[CompletionChoice]
    usage: Usage
    system_fingerprint: str | None = None
    cached: bool = False


class ChatMessageOut(BaseModel):
    role: Literal["assistant"] = "assistant"
    content: str


class ChatChoice(BaseModel):
    index: int
    message: ChatMessageOut
    finish_reason: str | None
    logprobs: None = None


class ChatCompletionResponse(BaseModel):
    id: str
    object: Literal["chat.completion"] = "chat.completion"
    created: int
    model: str
    choices: list[ChatChoice]
    usage: Usage
    system_fingerprint: str | None = None
    cached: bool = False


class EmbeddingItem(BaseModel):
    object: Literal["embedding"] = "embedding"
    index: int
    embedding: list[float] | str


class EmbeddingResponse(BaseModel):
    object: Literal["list"] = "list"
    data: list[EmbeddingItem]
    model: str
    usage: Usage
    cached: bool = False


class ModelCard(BaseModel):
    id: str
    object: Literal["model"] = "model"
    created: int
    owned_by: str
    kind: str
    version: str
    context_length: int
    max_output_tokens: int
    price_per_1k_prompt_tokens: float
    price_per_1k_completion_tokens: float
    fallbacks: list[str]
    metadata: dict[str, Any] = {}
    aliases: list[str] = Field(default=[], description="Other names this model answers to, in any request")


class ModelList(BaseModel):
    object: Literal["list"] = "list"
    data: list[ModelCard]
