"""The native text-generation call, ``POST /v1/generate``."""

from __future__ import annotations

from typing import Literal

from pydantic import BaseModel, field_validator

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
    results: list[GenerateResult]
    usage: Usage
    cached: bool = False
