"""What a stream has cost: the charge on every way a stream can end (core/generation_service.py settles it).

Completed: the backend's final usage (the gateway's own count where it gave none). Any other end after text
reached the caller: what was delivered, the completion counted by the model's tokenizer where the gateway
has it, else one token per delta; the prompt exactly where it was counted, else estimated. Never 0 when text
was sent; the settlement caps it at the reservation.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from core.domain import ModelSpec
from core.errors import APIError
from core.inference import Prompt, StreamEnd, StreamEvent
from core.ports import TokenCounter
from core.token_counts import estimate_tokens


@dataclass
class StreamCharge:
    """What a stream has cost so far: its end event if one came, else the text that reached the caller."""

    spec: ModelSpec
    prompt: Prompt
    exact_prompt: int | None
    counter: TokenCounter | None
    end: StreamEnd | None = None
    deltas: list[str] = field(default_factory=list)

    def saw(self, event: StreamEvent) -> None:
        if isinstance(event, StreamEnd):
            self.end = event
        elif event.text:
            self.deltas.append(event.text)

    def tokens(self) -> tuple[int, int]:
        """(prompt, completion) tokens to charge; the settlement caps them at the reservation."""
        if self.end is not None and (self.end.completion_tokens or not self.deltas):
            return self.end.prompt_tokens, self.end.completion_tokens
        if not self.deltas:
            # Nothing reached the caller. A caller that left is charged the prompt the model read, where
            # the gateway counted it exactly; a failure is charged nothing.
            return (self.exact_prompt or 0) if self.end is None else self.end.prompt_tokens, 0
        prompt = self.end.prompt_tokens if self.end is not None and self.end.prompt_tokens else self._prompt()
        return prompt, self._completion()

    def _prompt(self) -> int:
        if self.exact_prompt is not None:
            return self.exact_prompt
        return estimate_tokens(self.prompt)

    def _completion(self) -> int:
        """The gateway's own count of the delivered text where it has the model's tokenizer, else one token
        per delta (how OpenAI-compatible servers and llama.cpp stream)."""
        counted = self.counter.count(self.spec.backend, Prompt(text="".join(self.deltas))) if self.counter else None
        return max(1, counted) if counted is not None else len(self.deltas)


def ended_by(exc: APIError) -> str:
    if exc.status == 504:
        return "timeout"
    if exc.code in ("stream_truncated", "stream_interrupted"):
        return "truncated"
    return "backend_error"
