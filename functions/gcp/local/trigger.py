"""The Eventarc trigger's stand-in: new objects in the bucket become "object finalized" CloudEvents for ``batch``.

Polls the bucket every ``interval_s`` (the emulator sends no notifications) for objects under ``batch-input/``
and ``batch-jobs/``; each (name, generation) is delivered once to the real ``batch`` function through
functions-framework's CloudEvent app, in structured mode as Eventarc sends it. A delivery answered 5xx (a batch
another runner holds) is retried after ``retry_s``, as the trigger's retry policy does. One delivery at a time.
"""

from __future__ import annotations

import logging
import threading
import time
import uuid
from typing import Any

from functions.gcp.storage_events import FINALIZED, INPUT_PREFIX, JOBS_PREFIX

log = logging.getLogger("textnlp.local.gcp")


def finalized_event(blob: Any) -> tuple[dict[str, str], bytes]:
    """The structured-mode HTTP delivery of ``blob``'s "object finalized" event."""
    from cloudevents.conversion import to_structured
    from cloudevents.http import CloudEvent

    attributes = {
        "type": FINALIZED,
        "source": f"//storage.googleapis.com/projects/_/buckets/{blob.bucket.name}",
        "subject": f"objects/{blob.name}",
        "id": uuid.uuid4().hex,
    }
    data = {
        "bucket": blob.bucket.name,
        "name": blob.name,
        "generation": str(blob.generation),
        "size": str(blob.size or 0),
        "contentType": blob.content_type or "application/octet-stream",
    }
    headers, body = to_structured(CloudEvent(attributes, data))
    return dict(headers), bytes(body)


class BucketTrigger:
    def __init__(self, client: Any, bucket: str, deliver: Any, *, interval_s: float = 0.5, retry_s: float = 5.0):
        self._client = client
        self._bucket = bucket
        self._deliver = deliver  # (headers, body) -> HTTP status
        self._interval_s = interval_s
        self._retry_s = retry_s
        self._seen: set[tuple[str, str]] = set()
        self._retry_at: dict[tuple[str, str], float] = {}
        self._stop = threading.Event()
        self._thread = threading.Thread(target=self._run, name="textnlp-gcs-trigger", daemon=True)

    def start(self) -> BucketTrigger:
        self._thread.start()
        return self

    def stop(self, timeout: float = 30.0) -> None:
        self._stop.set()
        self._thread.join(timeout)

    def _run(self) -> None:
        while not self._stop.is_set():
            try:
                self.poll_once()
            except Exception:  # the emulator going away at shutdown, or a bug: logged, polling goes on
                log.exception("the bucket trigger failed")
            self._stop.wait(self._interval_s)

    def poll_once(self) -> int:
        """Deliver the events of the objects not yet delivered; how many were delivered."""
        delivered = 0
        for prefix in (INPUT_PREFIX, JOBS_PREFIX):
            for blob in self._client.list_blobs(self._bucket, prefix=prefix):
                if self._stop.is_set():
                    return delivered
                seen = (blob.name, str(blob.generation))
                if seen in self._seen or self._retry_at.get(seen, 0.0) > time.monotonic():
                    continue
                status = self._deliver(*finalized_event(blob))
                delivered += 1
                if status >= 500:
                    log.warning(
                        "batch function answered %s for %s; retried in %.0f s", status, blob.name, self._retry_s
                    )
                    self._retry_at[seen] = time.monotonic() + self._retry_s
                else:
                    self._retry_at.pop(seen, None)
                    self._seen.add(seen)
        return delivered
