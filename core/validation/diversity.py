"""Scores of the candidates alone: length statistics, distinct-n, self-BLEU and near-duplicates."""

from __future__ import annotations

import bisect
import itertools
import math
import statistics
from collections import Counter
from collections.abc import Sequence
from typing import Any

from core.validation.result import MetricResult, mean
from core.validation.text import ngrams, words

#: Word shingle size for near-duplicates; shorter texts are one shingle of all their words.
SHINGLE = 3
#: Near-duplicate pairs listed in the corpus figure (all of them are counted).
MAX_PAIRS_LISTED = 1000
_EPS = 1e-12


def length_stats(candidates: Sequence[str]) -> MetricResult:
    """Items: words per candidate. Corpus: mean, median, spread and extremes, in words, plus mean characters."""
    counts = [len(words(c)) for c in candidates]
    corpus = {
        "mean_words": statistics.fmean(counts),
        "median_words": statistics.median(counts),
        "std_words": statistics.pstdev(counts),
        "min_words": min(counts),
        "max_words": max(counts),
        "mean_chars": statistics.fmean(len(c) for c in candidates),
        "empty": sum(1 for n in counts if n == 0),
    }
    return MetricResult(corpus, counts)


def distinct_n(candidates: Sequence[str], n: int) -> MetricResult:
    """Distinct n-grams over all n-grams (Li et al. 2016), per candidate and over the corpus."""
    items: list[float | None] = []
    seen: set[tuple[str, ...]] = set()
    total = 0
    for candidate in candidates:
        grams = ngrams(words(candidate), n)
        unique = set(grams)
        items.append(len(unique) / len(grams) if grams else None)
        seen |= unique
        total += len(grams)
    return MetricResult(len(seen) / total if total else None, items)


def self_bleu(candidates: Sequence[str]) -> MetricResult:
    """Each candidate's sentence BLEU against all the others (Zhu et al. 2018): lower means more diverse.

    Equal to ``sacrebleu.sentence_bleu(c[i], c[:i] + c[i+1:])`` for every i, computed in linear time:
    BLEU clips each n-gram by its largest count in any reference, so keeping the two largest counts
    of every n-gram (and the reference lengths) answers "the others" for each i without pairing them.
    """
    from sacrebleu.metrics.bleu import BLEU
    from sacrebleu.metrics.helpers import extract_all_word_ngrams

    if len(candidates) < 2:
        return MetricResult(None, [None] * len(candidates))
    metric = BLEU(effective_order=True)
    order = metric.max_ngram_order
    counted = [extract_all_word_ngrams(metric.tokenizer(c.rstrip()), 1, order) for c in candidates]
    best: dict[tuple[str, ...], list[int]] = {}  # n-gram -> [largest count, its candidate, second count]
    for i, (grams, _) in enumerate(counted):
        for gram, count in grams.items():
            entry = best.get(gram)
            if entry is None:
                best[gram] = [count, i, 0]
            elif count > entry[0]:
                entry[1:] = [i, entry[0]]
                entry[0] = count
            elif count > entry[2]:
                entry[2] = count
    lengths = Counter(length for _, length in counted)
    distinct_lengths = sorted(lengths)
    items: list[float | None] = []
    for i, (grams, hyp_len) in enumerate(counted):
        correct = [0] * order
        total = [0] * order
        for gram, count in grams.items():
            entry = best[gram]
            ref_count = entry[2] if entry[1] == i else entry[0]
            total[len(gram) - 1] += count
            correct[len(gram) - 1] += min(count, ref_count)
        ref_len = _closest_other_length(hyp_len, distinct_lengths, lengths)
        score = BLEU.compute_bleu(
            correct,
            total,
            hyp_len,
            ref_len,
            smooth_method=metric.smooth_method,
            smooth_value=metric.smooth_value,
            effective_order=True,
            max_ngram_order=order,
        ).score
        items.append(score)
    return MetricResult(mean(items), items)


def _closest_other_length(hyp_len: int, distinct: list[int], counts: Counter[int]) -> int:
    """sacrebleu's closest reference length (ties go to the shorter) among the other candidates."""
    at = bisect.bisect_left(distinct, hyp_len)
    options = []
    for j in (at - 2, at - 1, at, at + 1):
        if 0 <= j < len(distinct):
            length = distinct[j]
            if counts[length] - (1 if length == hyp_len else 0) > 0:
                options.append(length)
    if not options:  # only reachable when every other length sits further out; scan them all
        options = [length for length in distinct if counts[length] - (1 if length == hyp_len else 0) > 0]
    return min(options, key=lambda length: (abs(hyp_len - length), length))


def shingles(text: str, size: int = SHINGLE) -> frozenset[tuple[str, ...]]:
    tokens = words(text)
    if not tokens:
        return frozenset()
    if len(tokens) < size:
        return frozenset({tuple(tokens)})
    return frozenset(ngrams(tokens, size))


def near_duplicates(candidates: Sequence[str], threshold: float) -> MetricResult:
    """Pairs of candidates whose word-shingle Jaccard similarity is at least ``threshold`` (and above 0).

    Exact. Candidates with the same shingle set are grouped first (similarity 1 within a group), then
    the groups go through an all-pairs similarity join with prefix and length filtering (Bayardo et al.
    2007): if J(x, y) >= t then |x & y| >= ceil(t * |x|) for the larger set x, so with shingles in one
    global order (rarest first) the two sets share one of x's first |x| - ceil(t * |x|) + 1 shingles,
    and only pairs that do are compared. Items: each candidate's closest duplicate
    ``{"index", "similarity"}`` or ``None``. The corpus lists at most ``MAX_PAIRS_LISTED`` pairs (most
    similar first) and counts them all.
    """
    groups: dict[frozenset[tuple[str, ...]], list[int]] = {}
    for i, candidate in enumerate(candidates):
        shingle_set = shingles(candidate)
        if shingle_set:
            groups.setdefault(shingle_set, []).append(i)
    members = list(groups.values())
    frequency = Counter(s for shingle_set in groups for s in shingle_set)
    rank = {s: k for k, s in enumerate(sorted(frequency, key=lambda s: (frequency[s], s)))}
    joined = _similarity_join([frozenset(rank[s] for s in shingle_set) for shingle_set in groups], threshold)
    joined.sort(key=lambda p: (-p[2], members[p[0]][0], members[p[1]][0]))
    best: dict[int, tuple[float, int]] = {}
    for g, h, similarity in joined:  # most similar first: the first seen is the best
        best.setdefault(g, (similarity, members[h][0]))
        best.setdefault(h, (similarity, members[g][0]))
    items: list[dict[str, Any] | None] = [None] * len(candidates)
    listed: list[list[Any]] = []
    for g, group in enumerate(members):
        if len(group) > 1:
            for i in group:
                items[i] = {"index": group[1] if i == group[0] else group[0], "similarity": 1.0}
            listed += [[a, b, 1.0] for a, b in itertools.islice(itertools.combinations(group, 2), MAX_PAIRS_LISTED)]
        elif g in best:
            items[group[0]] = {"index": best[g][1], "similarity": best[g][0]}
    for g, h, similarity in joined:
        if len(listed) >= MAX_PAIRS_LISTED:
            break
        listed += [[min(a, b), max(a, b), similarity] for a in members[g] for b in members[h]]
    pair_count = sum(len(m) * (len(m) - 1) // 2 for m in members) + sum(
        len(members[g]) * len(members[h]) for g, h, _ in joined
    )
    corpus = {
        "threshold": threshold,
        "pair_count": pair_count,
        "duplicate_share": sum(1 for item in items if item is not None) / len(candidates) if candidates else 0.0,
        "pairs": listed[:MAX_PAIRS_LISTED],
    }
    return MetricResult(corpus, items)


def _similarity_join(sets: Sequence[frozenset[int]], threshold: float) -> list[tuple[int, int, float]]:
    """Index pairs (i < j) of sets with Jaccard >= threshold (and > 0); elements are ranks, rarest lowest."""
    sizes = [len(s) for s in sets]
    index: dict[int, list[int]] = {}
    found: list[tuple[int, int, float]] = []
    for x in sorted(range(len(sets)), key=sizes.__getitem__):
        size = sizes[x]
        smallest = threshold * size - 1e-9
        seen: set[int] = set()
        for element in sorted(sets[x])[: size - max(1, math.ceil(smallest)) + 1]:
            postings = index.setdefault(element, [])
            seen.update(postings)
            postings.append(x)
        for y in seen:
            if sizes[y] < smallest:
                continue
            overlap = len(sets[x] & sets[y])
            similarity = overlap / (size + sizes[y] - overlap)
            if similarity > 0 and similarity >= threshold - _EPS:
                found.append((min(x, y), max(x, y), similarity))
    return found
