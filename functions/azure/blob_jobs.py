"""The batch function's job queue on Blob Storage: no Service Bus or Storage queue, no timer.

``BlobJobQueue`` (the JobQueue port): a job is a small blob ``batch-input/.jobs/<tenant>/<job id>.json`` in the
data container; its BlobCreated event (the batch function's own Event Grid subscription on ``batch-input/``) runs
the job. Each write is a new etag, hence a new event: that is also how a batch that ran out of time continues.
Delivery is at least once and jobs are idempotent (a batch resumes where it stopped, charging no line twice).

On the api function ``submit`` is called on the worker's event loop (core's batch handler), so the write goes to a
thread; the request waits for it (``drain``) before it answers, so a batch is never answered without its job.
Elsewhere (the batch function's continuation, already off the loop) it is written at once.

The same design as ``functions/gcp/bucket_jobs.py`` (cloud-neutral but for the prefix: a shared module is due).
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging

from core.observability import LOGGER_NAME, log_event
from core.ports import BlobStore
from functions.azure.blob_events import JOBS_PREFIX

_PENDING: contextvars.ContextVar[list[asyncio.Future[None]] | None] = contextvars.ContextVar(
    "textnlp_azure_pending_job_writes", default=None
)


def job_key(tenant_id: str, job_id: str) -> str:
    return f"{JOBS_PREFIX}{tenant_id}/{job_id}.json"


class BlobJobQueue:
    """``submit`` writes the job's blob; the batch function runs the job on its event."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._log = logging.getLogger(LOGGER_NAME)

    def submit(self, kind: str, tenant_id: str, job_id: str) -> None:
        pending = _PENDING.get()
        if pending is None:  # not inside a request of the api function: write now
            self.submit_now(kind, tenant_id, job_id)
            return
        loop = asyncio.get_running_loop()
        pending.append(loop.run_in_executor(None, self.submit_now, kind, tenant_id, job_id))

    def submit_now(self, kind: str, tenant_id: str, job_id: str) -> None:
        """Write the job's blob on this thread (blocking)."""
        body = json.dumps({"kind": kind, "tenant_id": tenant_id, "job_id": job_id}).encode()
        self._blobs.write_object(job_key(tenant_id, job_id), body)

    async def drain(self) -> None:
        """Wait for the job blobs this request wrote; a failed write is logged (the job can be submitted again:
        cancelling a batch nobody runs submits it)."""
        pending = _PENDING.get() or []
        for future in pending:
            try:
                await future
            except Exception as exc:
                log_event(self._log, "job not queued", logging.ERROR, error=f"{type(exc).__name__}: {exc}")
        pending.clear()


def collect_job_writes() -> contextvars.Token[list[asyncio.Future[None]] | None]:
    """Called on the loop at the start of a request: job writes made during it are collected for ``drain``."""
    return _PENDING.set([])
