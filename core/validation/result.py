"""What every metric returns: one corpus figure (a number or an object) and one value per candidate."""

from __future__ import annotations

import math
from collections.abc import Sequence
from dataclasses import dataclass, field
from typing import Any

Corpus = float | dict[str, Any] | None


@dataclass(frozen=True, slots=True)
class MetricResult:
    corpus: Corpus
    items: list[Any] = field(default_factory=list)


def mean(values: Sequence[float | None]) -> float | None:
    """The mean of the values that are defined (``None`` when none is)."""
    present = [v for v in values if v is not None and math.isfinite(v)]
    return math.fsum(present) / len(present) if present else None
