"""Fluency as perplexity under a language model: exp(-mean log-probability of each token given its prefix)."""

from __future__ import annotations

import math
from collections.abc import Sequence

from core.validation.result import MetricResult

#: exp() of more than this overflows a float; no real model's mean log-probability gets near it.
_MAX_EXPONENT = 700.0


def perplexity(logprobs: Sequence[float]) -> float | None:
    """``None`` for a text without scored tokens."""
    if not logprobs:
        return None
    return math.exp(min(-math.fsum(logprobs) / len(logprobs), _MAX_EXPONENT))


def fluency(logprobs_per_item: Sequence[Sequence[float]]) -> MetricResult:
    """Items: each candidate's perplexity (lower is more fluent). Corpus: the perplexity of all tokens together."""
    items = [perplexity(lp) for lp in logprobs_per_item]
    return MetricResult(perplexity([x for lp in logprobs_per_item for x in lp]), items)
