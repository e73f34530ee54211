"""A job queue made of blobs: for runtimes whose batch function is triggered by objects written to a bucket.

``BlobJobQueue`` (the JobQueue port): a job is a small object ``<prefix><tenant>/<job id>.json``; the object's
creation event (the batch function's own trigger: Eventarc on Cloud Storage, Event Grid on Blob Storage) runs the
job. No queue service, no scheduler. Each write is a new object version, hence a new event: that is also how a
batch that ran out of time continues. Delivery is at least once and jobs are idempotent (a batch resumes where it
stopped, charging no line twice).

Inside an API request ``submit`` is called on the event loop, so the write goes to a thread and the request waits
for it (``drain``, after ``collect_job_writes`` at its start) before it answers: a batch is never answered
without its job, and the write is never cut short by CPU throttled after the response. Elsewhere (the batch
function's continuation) it is written at once.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging

from core.observability import LOGGER_NAME, log_event
from core.ports import BlobStore

_PENDING: contextvars.ContextVar[list[asyncio.Future[None]] | None] = contextvars.ContextVar(
    "textnlp_pending_job_writes", default=None
)


def collect_job_writes() -> contextvars.Token[list[asyncio.Future[None]] | None]:
    """Called on the loop at the start of a request: job writes made during it are collected for ``drain``."""
    return _PENDING.set([])


class BlobJobQueue:
    """``submit`` writes the job's object under ``prefix``; the batch function runs the job on its event."""

    def __init__(self, blobs: BlobStore, prefix: str) -> None:
        self._blobs = blobs
        self.prefix = prefix
        self._log = logging.getLogger(LOGGER_NAME)

    def job_key(self, tenant_id: str, job_id: str) -> str:
        return f"{self.prefix}{tenant_id}/{job_id}.json"

    def submit(self, kind: str, tenant_id: str, job_id: str) -> None:
        pending = _PENDING.get()
        if pending is None:  # not inside an API request: write now
            self.submit_now(kind, tenant_id, job_id)
            return
        loop = asyncio.get_running_loop()
        pending.append(loop.run_in_executor(None, self.submit_now, kind, tenant_id, job_id))

    def submit_now(self, kind: str, tenant_id: str, job_id: str) -> None:
        """Write the job's object on this thread (blocking)."""
        body = json.dumps({"kind": kind, "tenant_id": tenant_id, "job_id": job_id}).encode()
        self._blobs.write_object(self.job_key(tenant_id, job_id), body)

    async def drain(self) -> None:
        """Wait for the job objects this request wrote; a failed write is logged (the job can be submitted
        again: cancelling a batch nobody runs submits it)."""
        pending = _PENDING.get() or []
        for future in pending:
            try:
                await future
            except Exception as exc:
                log_event(self._log, "job not queued", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
        pending.clear()


__all__ = ["BlobJobQueue", "collect_job_writes"]
