"""The registry entry of a fine-tuned model: its id, its owner, and what it inherits from its base model."""

from __future__ import annotations

from dataclasses import replace
from typing import Any

from core.domain import ModelSpec
from core.fine_tuning.job import FineTuneJob, TunerStatus, name_part, short_job_id
from core.registry import OWNER_KEY


def fine_tuned_model_id(job: FineTuneJob, full: bool = False) -> str:
    """``ft:<base model>:<suffix or tenant>:<job id short>`` (``full``: the whole job id, on a clash)."""
    label = job.suffix or name_part(job.tenant_id.removeprefix("ten_"), 24)
    tail = job.id.removeprefix("ftjob-") if full else short_job_id(job.id)
    return f"ft:{job.model}:{label}:{tail}"


def fine_tuned_spec(
    model_id: str, job: FineTuneJob, base: ModelSpec | None, status: TunerStatus, now: float
) -> ModelSpec:
    """A generation model owned by the job's tenant, served by the route the tuner reported.

    Limits, prices and timeouts are the base model's (defaults if the base model is gone).
    """
    route: dict[str, Any] = dict(status.fine_tuned_model_route or {})
    metadata: dict[str, Any] = {
        **status.metadata,
        OWNER_KEY: job.tenant_id,
        "base_model": job.model,
        "fine_tuning_job": job.id,
    }
    template = base if base is not None else ModelSpec(id=model_id, kind="generation", backend=route)
    return replace(
        template,
        id=model_id,
        kind="generation",
        backend=route,
        fallbacks=(),
        aliases=(),  # the base model's names stay the base model's
        version="1",
        owned_by=job.tenant_id,
        created_at=now,
        metadata=metadata,
    )
