"""Scores against references by the libraries' own code: BLEU, chrF (sacrebleu), ROUGE-1/2/L (rouge-score)."""

from __future__ import annotations

from collections.abc import Sequence
from typing import TYPE_CHECKING

from core.validation.report import ROUGE_TYPES
from core.validation.result import MetricResult, mean

if TYPE_CHECKING:
    from sacrebleu.metrics.base import Metric


def reference_streams(references: Sequence[Sequence[str]]) -> list[list[str | None]]:
    """sacrebleu's layout: stream k holds every item's k-th reference (``None`` where an item has fewer)."""
    width = max((len(r) for r in references), default=0)
    return [[refs[k] if k < len(refs) else None for refs in references] for k in range(width)]


def _scores(
    sentence: Metric, corpus: Metric, candidates: Sequence[str], references: Sequence[Sequence[str]]
) -> MetricResult:
    """Per-item and corpus scores from ONE pass of sacrebleu's statistics (what its ``sentence_score`` and
    ``corpus_score`` each compute for themselves): the items are ``sentence``'s score of one item's
    statistics, the corpus ``corpus``'s score of them all. The tests check both against the public calls.
    """
    if len(candidates) != len(references):
        raise ValueError("candidates and references differ in length")
    stats = corpus._extract_corpus_statistics(list(candidates), reference_streams(references))  # type: ignore[arg-type]
    items = [float(sentence._aggregate_and_compute([s]).score) for s in stats]
    return MetricResult(float(corpus._aggregate_and_compute(stats).score), items)


def bleu(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> MetricResult:
    """Items as ``sacrebleu.sentence_bleu`` (effective order), corpus as ``sacrebleu.corpus_bleu``."""
    from sacrebleu.metrics.bleu import BLEU

    return _scores(BLEU(effective_order=True), BLEU(), candidates, references)


def chrf(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> MetricResult:
    """Items as ``sacrebleu.sentence_chrf``, corpus as ``sacrebleu.corpus_chrf``."""
    from sacrebleu.metrics.chrf import CHRF

    metric = CHRF()
    return _scores(metric, metric, candidates, references)


def rouge(
    candidates: Sequence[str], references: Sequence[Sequence[str]], types: Sequence[str] = ROUGE_TYPES
) -> dict[str, MetricResult]:
    """One pass of rouge-score for every requested type: ``{"rougeL": MetricResult(mean F, [F, ...])}``.

    Items are rouge-score's F-measure from ``score_multi`` (the best reference by F) with its defaults:
    no stemming, and its tokenizer keeps only ASCII letters and digits, so non-Latin text scores as
    empty. The corpus figure is the mean F (rouge-score's own aggregator bootstraps, at random).
    sacrebleu and rouge-score are imported on first use, never at import of the gateway.
    """
    from rouge_score import rouge_scorer  # type: ignore[import-untyped]

    unknown = set(types) - set(ROUGE_TYPES)
    if unknown:
        raise ValueError(f"unknown ROUGE types: {sorted(unknown)}")
    scorer = rouge_scorer.RougeScorer(list(types))
    per_type: dict[str, list[float]] = {t: [] for t in types}
    for candidate, refs in zip(candidates, references, strict=True):
        scores = scorer.score_multi(list(refs), candidate)
        for t in types:
            per_type[t].append(float(scores[t].fmeasure))
    return {t: MetricResult(mean(values), values) for t, values in per_type.items()}


def lcs_cells(candidates: Sequence[str], references: Sequence[Sequence[str]]) -> int:
    """The size of ROUGE-L's dynamic programme (words x words), to refuse requests that would take minutes."""
    return sum(
        len(c.split()) * sum(len(r.split()) for r in refs) for c, refs in zip(candidates, references, strict=True)
    )
