"""Embedding similarity: cosine between a candidate's vector and its closest reference's vector."""

from __future__ import annotations

import math
from collections.abc import Sequence

from core.validation.result import MetricResult, mean

Vector = Sequence[float]


def cosine(a: Vector, b: Vector) -> float:
    """Cosine similarity; 0.0 when either vector is zero."""
    if len(a) != len(b):
        raise ValueError(f"vectors differ in size: {len(a)} and {len(b)}")
    norm = math.sqrt(math.fsum(x * x for x in a)) * math.sqrt(math.fsum(y * y for y in b))
    return math.fsum(x * y for x, y in zip(a, b, strict=True)) / norm if norm else 0.0


def embedding_similarity(candidates: Sequence[Vector], references: Sequence[Sequence[Vector]]) -> MetricResult:
    """Items: the best cosine over each candidate's references. Corpus: their mean."""
    items = [max(cosine(c, r) for r in refs) if refs else None for c, refs in zip(candidates, references, strict=True)]
    return MetricResult(mean(items), items)
