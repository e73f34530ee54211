"""A fine-tune job record, what a tuner reports about it, and their mapping to documents and to the API."""

from __future__ import annotations

import dataclasses
import re
import secrets
from dataclasses import dataclass, field
from typing import Any

from core.domain import Document
from core.errors import InvalidRequest
from core.fine_tuning.states import is_terminal

JOBS = "fine_tuning_jobs"
_ID_SPACE = 2**48  # milliseconds; ids count down from here, so listing by id shows the newest first
_EVENT_SPACE = 10**9
_NAME_UNSAFE = re.compile(r"[^A-Za-z0-9._-]+")


class FineTuningUnavailable(InvalidRequest):
    """This deployment cannot train (the local runtime; a cloud stack without a tuner configured).

    A 400 like OpenAI's answer for a model that cannot be fine-tuned: the SDK raises ``BadRequestError``
    at once (a 5xx would be retried) and no job is recorded, so nothing looks like a training attempt.
    """

    code = "fine_tuning_unavailable"


def new_job_id(now: float) -> str:
    return f"ftjob-{_ID_SPACE - int(now * 1000):012x}{secrets.token_hex(6)}"


def events_collection(job_id: str) -> str:
    """The collection holding one job's events, one document per event."""
    return f"fine_tuning_events:{job_id}"


def event_id(job_id: str, seq: int) -> str:
    """Counts down with ``seq``, so that ordering a job's events by id lists the newest first."""
    return f"ftevent-{job_id.removeprefix('ftjob-')[-12:]}{_EVENT_SPACE - seq:09d}"


def short_job_id(job_id: str) -> str:
    return job_id.removeprefix("ftjob-")[-12:]


def name_part(text: str, limit: int = 40) -> str:
    """``text`` made safe for a model id segment (letters, digits, ``.``, ``_``, ``-``)."""
    return _NAME_UNSAFE.sub("-", text).strip("-")[:limit] or "x"


@dataclass(frozen=True, slots=True)
class TunerStatus:
    """What a tuner says about one job: its state in our terms, and what it produced or why it failed.

    ``events`` is the backend's whole history each time (the service records the ones it has not seen);
    ``fine_tuned_model_route`` is the registry route of the trained model (required on ``succeeded``);
    ``metadata`` goes into the model's registry entry (artefact location, backend job name).
    """

    state: str
    fine_tuned_model_route: dict[str, Any] | None = None
    error: str | None = None
    trained_tokens: int | None = None
    events: list[str] = field(default_factory=list)
    metadata: dict[str, Any] = field(default_factory=dict)


@dataclass
class FineTuneJob:
    """A fine-tune job: the OpenAI fields, plus which tuner runs it and under which external id."""

    id: str
    tenant_id: str
    key_id: str
    model: str
    training_file: str
    training_key: str
    created_at: float
    seed: int
    hyperparameters: dict[str, Any]
    base_model_ref: str  # what the tuner trains from (a Hugging Face model id), from the base model's registry entry
    validation_file: str | None = None
    validation_key: str | None = None
    suffix: str | None = None
    metadata: dict[str, str] | None = None
    status: str = "validating_files"
    fine_tuned_model: str | None = None
    finished_at: float | None = None
    error: dict[str, Any] | None = None
    trained_tokens: int | None = None
    result_files: list[str] = field(default_factory=list)
    backend: str | None = None
    external_id: str | None = None
    backend_events: int = 0  # how many of the tuner's events are recorded already
    event_count: int = 0
    version: int = 0

    @property
    def terminal(self) -> bool:
        return is_terminal(self.status)

    def to_document(self) -> Document:
        body = dataclasses.asdict(self)
        del body["version"]
        return Document(self.id, self.tenant_id, body, self.version)

    @classmethod
    def from_document(cls, doc: Document) -> FineTuneJob:
        names = {f.name for f in dataclasses.fields(cls)} - {"version"}
        return cls(**{k: v for k, v in doc.body.items() if k in names}, version=doc.version)

    def copy(self) -> FineTuneJob:
        return dataclasses.replace(
            self,
            hyperparameters=dict(self.hyperparameters),
            metadata=dict(self.metadata) if self.metadata is not None else None,
            error=dict(self.error) if self.error is not None else None,
            result_files=list(self.result_files),
        )

    def to_api(self) -> dict[str, Any]:
        hyperparameters = {k: self.hyperparameters.get(k, "auto") for k in HYPERPARAMETERS}
        return {
            "id": self.id,
            "object": "fine_tuning.job",
            "created_at": int(self.created_at),
            "error": self.error,
            "fine_tuned_model": self.fine_tuned_model,
            "finished_at": None if self.finished_at is None else int(self.finished_at),
            "hyperparameters": hyperparameters,
            "model": self.model,
            "organization_id": self.tenant_id,
            "result_files": list(self.result_files),
            "seed": self.seed,
            "status": self.status,
            "trained_tokens": self.trained_tokens,
            "training_file": self.training_file,
            "validation_file": self.validation_file,
            "estimated_finish": None,
            "integrations": [],
            "metadata": self.metadata,
            "method": {"type": "supervised", "supervised": {"hyperparameters": hyperparameters}},
            "user_provided_suffix": self.suffix,
        }


HYPERPARAMETERS = ("n_epochs", "batch_size", "learning_rate_multiplier")
