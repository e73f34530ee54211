"""Word tokenisation shared by the candidate-only metrics: lower-cased Unicode words, punctuation dropped."""

from __future__ import annotations

import re
from collections.abc import Sequence

_WORD = re.compile(r"\w+(?:['\u2019]\w+)*")


def words(text: str) -> list[str]:
    """``"Don't stop, it's 9 AM!"`` -> ``["don't", "stop", "it's", "9", "am"]``."""
    return _WORD.findall(text.lower())


def ngrams(tokens: Sequence[str], n: int) -> list[tuple[str, ...]]:
    return [tuple(tokens[i : i + n]) for i in range(len(tokens) - n + 1)]
