"""The metric registry (name -> what it needs), the default set, size limits, and one evaluation run."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Literal

from core.validation.result import MetricResult

if TYPE_CHECKING:
    from core.validation.pii import PiiFinding

MAX_CANDIDATES = 1000
MAX_TEXT_CHARS = 20_000
MAX_REFERENCES_PER_ITEM = 16
MAX_TRAINING_TEXTS = 10_000
MAX_TRAINING_CHARS = 100_000
#: Model-backed metrics cost tokens and time: fewer candidates per request.
MAX_FLUENCY_CANDIDATES = 256
MAX_EMBEDDING_TEXTS = 4096
#: ROUGE-L's dynamic programme in rouge-score runs at ~0.6 us per cell on one core: ~12 s at this size.
MAX_LCS_CELLS = 20_000_000
#: Memorisation's window, in words.
DEFAULT_NGRAM = 8
ROUGE_TYPES = ("rouge1", "rouge2", "rougeL")

Source = Literal["cpu", "embedding", "fluency"]


@dataclass(frozen=True, slots=True)
class MetricInfo:
    name: str
    description: str
    needs_references: bool = False
    needs_corpus: bool = False
    source: Source = "cpu"
    max_candidates: int = MAX_CANDIDATES


METRICS: dict[str, MetricInfo] = {
    m.name: m
    for m in (
        MetricInfo(
            "bleu", "sacrebleu BLEU (0-100): sentence BLEU per item, corpus BLEU overall", needs_references=True
        ),
        MetricInfo("chrf", "sacrebleu chrF (0-100): per item and corpus", needs_references=True),
        MetricInfo("rouge1", "rouge-score ROUGE-1 F-measure: per item, mean overall", needs_references=True),
        MetricInfo("rouge2", "rouge-score ROUGE-2 F-measure: per item, mean overall", needs_references=True),
        MetricInfo("rougeL", "rouge-score ROUGE-L F-measure: per item, mean overall", needs_references=True),
        MetricInfo(
            "embedding_similarity",
            "cosine between the embeddings of a candidate and its closest reference (embedding_model)",
            needs_references=True,
            source="embedding",
        ),
        MetricInfo("length", "words per candidate; mean, median, spread, extremes"),
        MetricInfo("distinct_1", "distinct unigrams / all unigrams"),
        MetricInfo("distinct_2", "distinct bigrams / all bigrams"),
        MetricInfo("self_bleu", "BLEU of each candidate against the others (lower is more diverse)"),
        MetricInfo("near_duplicates", "candidate pairs with word-shingle Jaccard >= near_duplicate_threshold"),
        MetricInfo(
            "fluency",
            "perplexity under fluency_model (lower is more fluent)",
            source="fluency",
            max_candidates=MAX_FLUENCY_CANDIDATES,
        ),
        MetricInfo(
            "memorisation",
            "share of n-word windows, and the longest span, copied from training_texts (or the references)",
            needs_corpus=True,
        ),
        MetricInfo("pii", "e-mails, phones, cards (Luhn), IBANs (mod 97), addresses, postcodes; masked"),
    )
}
#: Cheap, and meaningful without any extra input.
DEFAULT_METRICS = ("length", "distinct_1", "distinct_2", "self_bleu", "near_duplicates", "pii")
DEFAULT_REFERENCE_METRICS = ("bleu", "chrf", "rougeL")
#: The single figure of a metric whose corpus value is an object (for gauges and summaries).
HEADLINE_FIELDS = {
    "length": "mean_words",
    "near_duplicates": "duplicate_share",
    "memorisation": "copied_share",
    "pii": "share",
}


class MetricSelectionError(ValueError):
    """A request the metrics cannot serve; ``param`` and ``code`` say which input is at fault."""

    def __init__(self, message: str, *, param: str, code: str) -> None:
        super().__init__(message)
        self.param = param
        self.code = code


@dataclass(frozen=True, slots=True)
class Inputs:
    candidates: list[str]
    references: list[list[str]] | None = None
    training: list[str] | None = None
    ngram: int = DEFAULT_NGRAM
    threshold: float = 0.8

    def memorisation_corpus(self) -> list[str]:
        if self.training is not None:
            return self.training
        return [r for refs in self.references or [] for r in refs]

    def refs(self) -> list[list[str]]:
        if self.references is None:
            raise MetricSelectionError("this metric needs references", param="references", code="references_required")
        return self.references


@dataclass(slots=True)
class Report:
    metrics: dict[str, MetricResult]
    pii: list[list[PiiFinding]] | None = None
    flags: list[str] = field(default_factory=list)


def select_metrics(
    requested: Sequence[str] | None, *, has_references: bool, has_training: bool, has_fluency_model: bool
) -> list[str]:
    """The metrics to run, in a stable order; the default set when none are named."""
    if requested is None:
        names = list(DEFAULT_METRICS)
        names += DEFAULT_REFERENCE_METRICS if has_references else ()
        names += ["memorisation"] if has_training else []
        names += ["fluency"] if has_fluency_model else []
        return names
    names = list(dict.fromkeys(requested))
    unknown = [n for n in names if n not in METRICS]
    if unknown:
        raise MetricSelectionError(
            f"unknown metric(s) {', '.join(map(repr, unknown))}; known metrics: {', '.join(METRICS)}",
            param="metrics",
            code="unknown_metric",
        )
    needing = [n for n in names if METRICS[n].needs_references]
    if needing and not has_references:
        raise MetricSelectionError(
            f"{', '.join(needing)} compare with references: give one reference (or a list) per candidate",
            param="references",
            code="references_required",
        )
    if "memorisation" in names and not (has_training or has_references):
        raise MetricSelectionError(
            "memorisation needs training_texts (or references) to look for copies in",
            param="training_texts",
            code="training_texts_required",
        )
    if "fluency" in names and not has_fluency_model:
        raise MetricSelectionError(
            "fluency needs fluency_model: a generation model that can score text",
            param="fluency_model",
            code="fluency_model_required",
        )
    return names


def check_limits(names: Sequence[str], inputs: Inputs) -> None:
    """Refuse work that would not finish in a request's time."""
    n = len(inputs.candidates)
    for name in names:
        if n > METRICS[name].max_candidates:
            raise MetricSelectionError(
                f"{name} scores at most {METRICS[name].max_candidates} candidates per request; got {n}",
                param="candidates",
                code="too_many_candidates",
            )
    if "rougeL" in names and inputs.references is not None:
        from core.validation.reference import lcs_cells

        cells = lcs_cells(inputs.candidates, inputs.references)
        if cells > MAX_LCS_CELLS:
            raise MetricSelectionError(
                f"rougeL would compare {cells} word pairs, above the limit of {MAX_LCS_CELLS}; "
                "send fewer or shorter texts per request",
                param="candidates",
                code="request_too_costly",
            )
    if "embedding_similarity" in names and inputs.references is not None:
        texts = n + len({r for refs in inputs.references for r in refs})
        if texts > MAX_EMBEDDING_TEXTS:
            raise MetricSelectionError(
                f"embedding_similarity would embed {texts} texts, above the limit of {MAX_EMBEDDING_TEXTS}",
                param="references",
                code="request_too_costly",
            )


def _cpu_metric(name: str, inputs: Inputs) -> MetricResult:
    """Metric modules are imported where they run: importing the gateway compiles no PII pattern."""
    from core.validation import diversity, memorisation, reference

    candidates = inputs.candidates
    if name == "bleu":
        return reference.bleu(candidates, inputs.refs())
    if name == "chrf":
        return reference.chrf(candidates, inputs.refs())
    if name == "length":
        return diversity.length_stats(candidates)
    if name in ("distinct_1", "distinct_2"):
        return diversity.distinct_n(candidates, int(name[-1]))
    if name == "self_bleu":
        return diversity.self_bleu(candidates)
    if name == "near_duplicates":
        return diversity.near_duplicates(candidates, inputs.threshold)
    if name == "memorisation":
        return memorisation.memorisation(candidates, inputs.memorisation_corpus(), inputs.ngram)
    raise ValueError(f"metric {name!r} is scored by a model: pass its result in `computed`")


def evaluate(names: Sequence[str], inputs: Inputs, computed: Mapping[str, MetricResult] | None = None) -> Report:
    """Run the named metrics. Model-backed ones (embedding, fluency) come in ``computed``, already scored."""
    computed = computed or {}
    results: dict[str, MetricResult] = {}
    findings: list[list[PiiFinding]] | None = None
    rouge_types = [n for n in names if n in ROUGE_TYPES and n not in computed]
    if rouge_types:
        from core.validation.reference import rouge

        results.update(rouge(inputs.candidates, inputs.refs(), rouge_types))
    for name in names:
        if name in computed:
            results[name] = computed[name]
        elif name == "pii":
            from core.validation.pii import pii

            results[name], findings = pii(inputs.candidates)
        elif name not in results:
            results[name] = _cpu_metric(name, inputs)
    report = Report({n: results[n] for n in names}, findings)
    report.flags = flags(report)
    return report


def headline(name: str, result: MetricResult) -> float | None:
    """One number per metric: the corpus figure, or the named field of an object."""
    value = result.corpus
    if isinstance(value, dict):
        value = value.get(HEADLINE_FIELDS.get(name, ""))
    return float(value) if isinstance(value, int | float) else None


def flags(report: Report) -> list[str]:
    """Plain-language warnings about what needs a look."""
    out: list[str] = []
    n = len(next(iter(report.metrics.values())).items) if report.metrics else 0
    for name, result in report.metrics.items():
        corpus = result.corpus if isinstance(result.corpus, dict) else {}
        if name == "pii" and corpus.get("items_with_pii"):
            out.append(f"pii: {corpus['items_with_pii']} of {n} candidates contain personal data")
        elif name == "near_duplicates" and corpus.get("pair_count"):
            out.append(f"near_duplicates: {corpus['pair_count']} pairs at Jaccard >= {corpus['threshold']}")
        elif name == "memorisation" and corpus.get("items_with_copies"):
            out.append(
                f"memorisation: {corpus['items_with_copies']} of {n} candidates copy {corpus['ngram']}+ word spans "
                f"(longest {corpus['longest_span']} words)"
            )
        elif name == "length" and corpus.get("empty"):
            out.append(f"length: {corpus['empty']} of {n} candidates are empty")
    return out
