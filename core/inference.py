"""What the core asks of an inference backend and what it gets back, whatever the wire format."""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Literal

FinishReason = Literal["stop", "length", "content_filter"]


@dataclass(frozen=True, slots=True)
class ChatMessage:
    role: str
    content: str


@dataclass(frozen=True, slots=True)
class Prompt:
    """Either plain text (completions) or chat messages; exactly one is set."""

    text: str | None = None
    messages: tuple[ChatMessage, ...] = ()

    @property
    def is_chat(self) -> bool:
        return self.text is None

    def utf8_bytes(self) -> int:
        if self.text is not None:
            return len(self.text.encode())
        return sum(len(m.content.encode()) + len(m.role.encode()) for m in self.messages)


@dataclass(frozen=True, slots=True)
class GenerationParams:
    max_tokens: int
    temperature: float = 1.0
    top_p: float = 1.0
    stop: tuple[str, ...] = ()
    seed: int | None = None

    @property
    def deterministic(self) -> bool:
        return self.temperature == 0 or self.seed is not None


@dataclass(frozen=True, slots=True)
class Generation:
    """One generated text with the token counts the backend reported (or the gateway counted)."""

    text: str
    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


@dataclass(frozen=True, slots=True)
class TextDelta:
    """A piece of streamed text."""

    text: str


@dataclass(frozen=True, slots=True)
class StreamEnd:
    """The last event of a stream: the final usage, exactly as a non-streamed call reports it."""

    finish_reason: FinishReason
    prompt_tokens: int
    completion_tokens: int


StreamEvent = TextDelta | StreamEnd


@dataclass(frozen=True, slots=True)
class Embeddings:
    vectors: list[list[float]]
    prompt_tokens: int
    dimensions: int = field(default=0)
