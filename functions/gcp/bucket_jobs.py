"""The batch function's job queue and blobs on Cloud Storage: no Pub/Sub topic, no scheduler.

``BucketJobQueue`` (the JobQueue port): a job is a small object ``batch-jobs/<tenant>/<job id>.json`` in the
input bucket; its "object finalized" event (the batch function's own Eventarc trigger) runs the job. Each write
is a new generation, hence a new event: that is also how a batch that ran out of time continues. Delivery is
at least once and jobs are idempotent (a batch resumes where it stopped, charging no line twice).

On the api function ``submit`` is called on the event loop, so the write goes to a thread; the request waits
for it (``drain``) before it answers, so the write is never cut short by Cloud Run's CPU throttling after the
response. Elsewhere (the batch function's continuation, from its request thread) it is written at once.

``SplitBlobs`` (the BlobStore port): ``batch-input/`` and ``batch-jobs/`` in the input bucket (the one the
trigger watches), everything else (files, ``batch-output/``) in the data bucket.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
from collections.abc import AsyncIterator, Iterable

from core.observability import LOGGER_NAME, log_event
from core.ports import BlobStore
from functions.gcp.storage_events import INPUT_PREFIX, JOBS_PREFIX

_PENDING: contextvars.ContextVar[list[asyncio.Future[None]] | None] = contextvars.ContextVar(
    "textnlp_pending_job_writes", default=None
)


def job_key(tenant_id: str, job_id: str) -> str:
    return f"{JOBS_PREFIX}{tenant_id}/{job_id}.json"


class BucketJobQueue:
    """``submit`` writes the job's object; the batch function runs the job on its event."""

    def __init__(self, blobs: BlobStore) -> None:
        self._blobs = blobs
        self._log = logging.getLogger(LOGGER_NAME)

    def submit(self, kind: str, tenant_id: str, job_id: str) -> None:
        key = job_key(tenant_id, job_id)
        body = json.dumps({"kind": kind, "tenant_id": tenant_id, "job_id": job_id}).encode()
        pending = _PENDING.get()
        if pending is None:  # not inside a request of the api function: write now
            self._blobs.write_object(key, body)
            return
        loop = asyncio.get_running_loop()
        pending.append(loop.run_in_executor(None, self._blobs.write_object, key, body))

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


def collect_job_writes() -> contextvars.Token[list[asyncio.Future[None]] | None]:
    """Called on the loop at the start of a request: job writes made during it are collected for ``drain``."""
    return _PENDING.set([])


class SplitBlobs:
    """Keys under ``batch-input/`` and ``batch-jobs/`` go to ``inputs``, every other key to ``data``."""

    def __init__(self, data: BlobStore, inputs: BlobStore) -> None:
        self.data = data
        self.inputs = inputs

    def _of(self, key: str) -> BlobStore:
        return self.inputs if key.startswith((INPUT_PREFIX, JOBS_PREFIX)) else self.data

    def read_lines(self, key: str, max_line_bytes: int | None = None) -> AsyncIterator[bytes]:
        return self._of(key).read_lines(key, max_line_bytes)

    def write_object(self, key: str, data: bytes) -> None:
        self._of(key).write_object(key, data)

    def write_lines(self, key: str, lines: Iterable[bytes]) -> int:
        return self._of(key).write_lines(key, lines)

    def read_object(self, key: str) -> bytes:
        return self._of(key).read_object(key)

    def delete_object(self, key: str) -> bool:
        return self._of(key).delete_object(key)

    def object_version(self, key: str) -> str | None:
        return self._of(key).object_version(key)
