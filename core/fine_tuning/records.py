"""Fine-tune jobs in the document store: create, load, update with optimistic concurrency, and their events."""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any

from core.domain import Document
from core.fine_tuning.job import JOBS, FineTuneJob, event_id, events_collection
from core.fine_tuning.states import IllegalTransition, check, is_terminal, path
from core.ports import DocumentStore

STEP_MESSAGES = {
    "queued": "Files validated, moving job to queued state",
    "running": "Fine-tuning job started",
    "succeeded": "The job has successfully completed",
    "cancelled": "The job was cancelled",
}


@dataclass(frozen=True, slots=True)
class Event:
    """One line of a job's history, as ``GET /v1/fine_tuning/jobs/{id}/events`` shows it."""

    message: str
    level: str = "info"


def advance(job: FineTuneJob, target: str, now: float) -> list[Event]:
    """Move ``job`` to ``target`` through every state in between; each step is checked and logged.

    Raises ``IllegalTransition`` when ``target`` cannot be reached (backwards, or out of a terminal state).
    """
    steps = path(job.status, target)
    if not steps:
        raise IllegalTransition(job.status, target)
    events: list[Event] = []
    for step in steps:
        check(job.status, step)
        job.status = step
        if is_terminal(step):
            job.finished_at = now
        if step == "failed":
            reason = (job.error or {}).get("message") or "unknown error"
            events.append(Event(f"The job failed: {reason}", "error"))
        else:
            events.append(Event(STEP_MESSAGES[step]))
    return events


def load_job(store: DocumentStore, tenant_id: str, job_id: str) -> FineTuneJob | None:
    """The tenant's fine-tune job; another tenant's job of that id is not found."""
    doc = store.get_document(JOBS, tenant_id, job_id)
    return FineTuneJob.from_document(doc) if doc is not None else None


def create_job(store: DocumentStore, job: FineTuneJob, events: list[Event], now: float) -> FineTuneJob | None:
    """Write a new job (None if its id exists) and its first events."""
    job.event_count = len(events)
    written = store.put_document(JOBS, job.to_document(), if_absent=True)
    if written is None:
        return None
    job.version = written.version
    _write_events(store, job, events, 1, now)
    return job


def update_job(
    store: DocumentStore, job: FineTuneJob, change: Callable[[FineTuneJob], list[Event]], now: float
) -> FineTuneJob:
    """Apply ``change`` (which returns the events it caused) and write it only over the version read;
    when someone wrote in between, re-read and apply it again. Events follow the job's write."""
    while True:
        fresh = job.copy()
        events = change(fresh)
        first = fresh.event_count + 1
        fresh.event_count += len(events)
        written = store.put_document(JOBS, fresh.to_document(), if_version=job.version)
        if written is not None:
            fresh.version = written.version
            _write_events(store, fresh, events, first, now)
            return fresh
        reread = load_job(store, job.tenant_id, job.id)
        if reread is None:
            raise LookupError(f"fine-tuning job {job.id} vanished")
        job = reread


def _write_events(store: DocumentStore, job: FineTuneJob, events: list[Event], first: int, now: float) -> None:
    collection = events_collection(job.id)
    for seq, event in enumerate(events, start=first):
        body: dict[str, Any] = {
            "id": event_id(job.id, seq),
            "object": "fine_tuning.job.event",
            "created_at": int(now),
            "level": event.level,
            "message": event.message,
            "data": {},
            "type": "message",
        }
        store.put_document(collection, Document(body["id"], job.tenant_id, body), if_absent=True)


def list_events(
    store: DocumentStore, job: FineTuneJob, after: str | None, limit: int
) -> tuple[list[dict[str, Any]], bool]:
    """A page of the job's events, newest first, and whether older ones remain."""
    docs = store.list_documents(events_collection(job.id), job.tenant_id, after, limit + 1)
    return [d.body for d in docs[:limit]], len(docs) > limit
