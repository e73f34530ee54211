"""``POST /v1/validate``: candidates (and references) in; per-metric corpus and item scores, PII and a summary out."""

from __future__ import annotations

from typing import Annotated, Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationInfo, field_validator

from core.schemas.common import Usage
from core.validation.report import (
    DEFAULT_NGRAM,
    MAX_CANDIDATES,
    MAX_REFERENCES_PER_ITEM,
    MAX_TEXT_CHARS,
    MAX_TRAINING_CHARS,
    MAX_TRAINING_TEXTS,
    METRICS,
    Inputs,
    Report,
    headline,
)

Text = Annotated[str, Field(max_length=MAX_TEXT_CHARS)]


class ValidateRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")

    candidates: Annotated[list[Text], Field(min_length=1, max_length=MAX_CANDIDATES)]
    references: list[str | list[str]] | None = Field(
        default=None,
        description=f"One reference, or a list of up to {MAX_REFERENCES_PER_ITEM}, per candidate (aligned with them)",
    )
    metrics: Annotated[list[str], Field(min_length=1, max_length=len(METRICS))] | None = Field(
        default=None, description=f"Names from: {', '.join(METRICS)}. Default: a cheap set (see the docs)"
    )
    embedding_model: Annotated[str, Field(min_length=1, max_length=256)] = "all-minilm-l6-v2"
    fluency_model: Annotated[str, Field(min_length=1, max_length=256)] | None = None
    training_texts: (
        Annotated[list[Annotated[str, Field(max_length=MAX_TRAINING_CHARS)]], Field(max_length=MAX_TRAINING_TEXTS)]
        | None
    ) = Field(default=None, description="Corpus for memorisation; the references when absent")
    ngram: Annotated[int, Field(ge=4, le=32)] = DEFAULT_NGRAM
    near_duplicate_threshold: Annotated[float, Field(ge=0, le=1)] = 0.8

    @field_validator("references")
    @classmethod
    def _aligned(cls, value: list[str | list[str]] | None, info: ValidationInfo) -> Any:
        if value is None:
            return value
        candidates = info.data.get("candidates")
        if candidates is not None and len(value) != len(candidates):
            raise ValueError(
                f"give one reference (or one list of references) per candidate: "
                f"{len(value)} references for {len(candidates)} candidates"
            )
        for i, refs in enumerate(value):
            group = [refs] if isinstance(refs, str) else refs
            if not 1 <= len(group) <= MAX_REFERENCES_PER_ITEM:
                raise ValueError(f"item {i}: give between 1 and {MAX_REFERENCES_PER_ITEM} references")
            if any(len(r) > MAX_TEXT_CHARS for r in group):
                raise ValueError(f"item {i}: a reference is longer than {MAX_TEXT_CHARS} characters")
        return value

    def reference_lists(self) -> list[list[str]] | None:
        if self.references is None:
            return None
        return [[r] if isinstance(r, str) else list(r) for r in self.references]

    def inputs(self) -> Inputs:
        return Inputs(
            candidates=list(self.candidates),
            references=self.reference_lists(),
            training=list(self.training_texts) if self.training_texts is not None else None,
            ngram=self.ngram,
            threshold=self.near_duplicate_threshold,
        )


class MetricScores(BaseModel):
    corpus: float | dict[str, Any] | None = Field(description="The figure over all candidates")
    items: list[Any] = Field(description="One value per candidate, in order (null where undefined)")


class PiiFindingOut(BaseModel):
    kind: Literal["email", "iban", "card", "phone", "address", "postcode"]
    start: int
    end: int
    masked: str = Field(description="The match with its letters and digits masked; the raw value is never returned")


class ValidateSummary(BaseModel):
    candidates: int
    references: bool
    metrics: list[str]
    scores: dict[str, float | None] = Field(description="One headline figure per metric")
    flags: list[str] = Field(description="Plain-language warnings: PII, near-duplicates, memorisation, empty texts")


class ValidateResponse(BaseModel):
    object: Literal["validation"] = "validation"
    metrics: dict[str, MetricScores]
    pii: list[list[PiiFindingOut]] | None = Field(description="Findings per candidate when `pii` ran")
    summary: ValidateSummary
    usage: Usage | None = Field(default=None, description="Tokens charged for model-backed metrics")

    @classmethod
    def from_report(cls, report: Report, inputs: Inputs, usage: Usage | None = None) -> ValidateResponse:
        return cls(
            metrics={n: MetricScores(corpus=r.corpus, items=r.items) for n, r in report.metrics.items()},
            pii=(
                [[PiiFindingOut.model_validate(f.as_dict()) for f in item] for item in report.pii]
                if report.pii is not None
                else None
            ),
            summary=ValidateSummary(
                candidates=len(inputs.candidates),
                references=inputs.references is not None,
                metrics=list(report.metrics),
                scores={n: headline(n, r) for n, r in report.metrics.items()},
                flags=report.flags,
            ),
            usage=usage,
        )
