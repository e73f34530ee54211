"""The batch function's job queue and blobs on Cloud Storage: no Pub/Sub topic, no scheduler.

Jobs are objects ``batch-jobs/<tenant>/<job id>.json`` in the input bucket (``core.blob_jobs``: their "object
finalized" event, the batch function's own Eventarc trigger, runs them).

``SplitBlobs`` (the BlobStore port): ``batch-input/`` and ``batch-jobs/`` in the input bucket (the one the
trigger watches), everything else (files, ``batch-output/``) in the data bucket.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable

from core.blob_jobs import BlobJobQueue
from core.ports import BlobStore
from functions.gcp.storage_events import INPUT_PREFIX, JOBS_PREFIX


def bucket_jobs(blobs: BlobStore) -> BlobJobQueue:
    """The batch function's job queue: objects under ``batch-jobs/`` of the input bucket."""
    return BlobJobQueue(blobs, JOBS_PREFIX)


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
