"""The native text-generation call, ``POST /v1/generate``."""

from __future__ import annotations

from typing import Any, Literal

from pydantic import BaseModel, Field, field_validator

from core.schemas.common import SamplingFields, Usage
from core.schemas.openai import MAX_PROMPTS


class GenerateRequest(SamplingFields):
    prompt: str | list[str]

    @field_validator("prompt")
    @classmethod
    def _prompt(cls, value: str | list[str]) -> str | list[str]:
        items = [value] if isinstance(value, str) else value
        if not items or len(items) > MAX_PROMPTS:
            raise ValueError(f"give between 1 and {MAX_PROMPTS} prompts")
        if any(not p.strip() for p in items):
            raise ValueError("prompt cannot be empty")
        return value

    def prompts(self) -> list[str]:
        return [self.prompt] if isinstance(self.prompt, str) else list(self.prompt)


class GenerateResult(BaseModel):
    index: int
    prompt_index: int
    text: str
    finish_reason: str


class GenerateResponse(BaseModel):
    id: str
    object: Literal["generation"] = "generation"
    created: int
    model: str
    text: str | None = Field(
        default=None,
        description="The first result's text; present only when prompt is a single string (one prompt, one answer)",
    )
    results: list[GenerateResult]
    usage: Usage
    cached: bool = False

    def to_json(self) -> dict[str, Any]:
        """The answer as sent: ``text`` left out, not null, for a list of prompts (no single answer to give)."""
        return self.model_dump(mode="json", exclude={"text"} if self.text is None else None)
