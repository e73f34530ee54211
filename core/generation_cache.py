"""What the response cache keeps for a generation or embedding request: the parts of its key (the model's
identity, the sampling parameters, the prompts) and the stored form of a generation (core/cache.py stores them).
"""

from __future__ import annotations

import json

from core.domain import ModelSpec
from core.inference import Generation, GenerationParams, Prompt


def model_key(spec: ModelSpec) -> str:
    """A model's identity for caching: re-pointing or re-versioning a model starts a fresh cache."""
    return f"{spec.id}@{spec.version}#{json.dumps(spec.backend, sort_keys=True, default=str)}"


def params_dict(params: GenerationParams, n: int) -> dict[str, object]:
    return {
        "max_tokens": params.max_tokens,
        "temperature": params.temperature,
        "top_p": params.top_p,
        "stop": list(params.stop),
        "seed": params.seed,
        "n": n,
    }


def prompt_json(prompt: Prompt) -> object:
    if prompt.text is not None:
        return prompt.text
    return [[m.role, m.content] for m in prompt.messages]


def generation_json(g: Generation) -> dict[str, object]:
    return {
        "text": g.text,
        "finish_reason": g.finish_reason,
        "prompt_tokens": g.prompt_tokens,
        "completion_tokens": g.completion_tokens,
    }


__all__ = ["generation_json", "model_key", "params_dict", "prompt_json"]
