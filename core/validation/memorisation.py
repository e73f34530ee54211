"""Memorisation: the share of n-word windows, and the longest span, a candidate copies from a corpus."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from core.validation.report import DEFAULT_NGRAM
from core.validation.result import MetricResult
from core.validation.text import words

_MOD = (1 << 61) - 1
_BASE = 1_000_003


class NgramIndex:
    """The hashed n-word windows of a corpus (training texts, or the references).

    Texts are compared as lower-cased words (punctuation and spacing ignored). Each window is a rolling
    polynomial hash of interned word ids mod the Mersenne prime 2**61 - 1, so building the set and
    checking a candidate take time linear in their words, whatever n. A candidate's longest copied span
    is its longest run of consecutive copied windows, in words (run + n - 1): a stretch every n-word
    window of which occurs in the corpus. Spans shorter than n words do not count as copies.
    """

    def __init__(self, texts: Iterable[str], n: int = DEFAULT_NGRAM) -> None:
        if n < 1:
            raise ValueError("n must be positive")
        self.n = n
        self._ids: dict[str, int] = {}
        self._hashes: set[int] = set()
        self._top = pow(_BASE, n - 1, _MOD)
        for text in texts:
            ids = [self._ids.setdefault(w, len(self._ids) + 1) for w in words(text)]
            self._hashes.update(h for _, h in self._windows(ids))

    def __len__(self) -> int:
        return len(self._hashes)

    def _windows(self, ids: Sequence[int]) -> Iterable[tuple[int, int]]:
        """(start, hash) of every window of ``n`` known words; windows over an unknown word (id 0) are skipped."""
        n, h, last_unknown = self.n, 0, -1
        for i, word_id in enumerate(ids):
            if i >= n:
                h = (h - ids[i - n] * self._top) % _MOD
            h = (h * _BASE + word_id) % _MOD
            if word_id == 0:
                last_unknown = i
            start = i - n + 1
            if start >= 0 and last_unknown < start:
                yield start, h

    def copied(self, text: str) -> tuple[int, int, int]:
        """(windows, copied windows, longest copied span in words) of one text."""
        ids = [self._ids.get(w, 0) for w in words(text)]
        windows = max(0, len(ids) - self.n + 1)
        hits = [start for start, h in self._windows(ids) if h in self._hashes]  # ascending
        longest = run = 0
        previous = -2
        for start in hits:
            run = run + 1 if start == previous + 1 else 1
            previous = start
            longest = max(longest, run)
        return windows, len(hits), longest + self.n - 1 if longest else 0


def memorisation(candidates: Sequence[str], corpus: Sequence[str], n: int = DEFAULT_NGRAM) -> MetricResult:
    """Items: ``{"copied_share", "longest_span"}`` (share is ``None`` for texts under n words).

    Corpus: the share of all candidate windows that are copied, the longest span, and how many
    candidates copy at least one window.
    """
    index = NgramIndex(corpus, n)
    items: list[dict[str, float | int | None]] = []
    windows_total = copied_total = longest = with_copies = 0
    for candidate in candidates:
        windows, copied, span = index.copied(candidate)
        items.append({"copied_share": copied / windows if windows else None, "longest_span": span})
        windows_total += windows
        copied_total += copied
        longest = max(longest, span)
        with_copies += 1 if copied else 0
    summary = {
        "ngram": n,
        "copied_share": copied_total / windows_total if windows_total else None,
        "longest_span": longest,
        "items_with_copies": with_copies,
    }
    return MetricResult(summary, items)
