"""What the batch function receives: Cloud Storage "object finalized" CloudEvents, parsed and classified.

Eventarc delivers every object finalized in the input bucket. Two kinds of names mean work:
``batch-input/<tenant>/<name>.jsonl`` (a batch file: one batch per generation) and
``batch-jobs/<tenant>/<job id>.json`` (a job message: a batch created through the API, or the continuation of
one that ran out of time; see ``core.blob_jobs``). Everything else is ignored.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any

FINALIZED = "google.cloud.storage.object.v1.finalized"
INPUT_PREFIX = "batch-input/"
OUTPUT_PREFIX = "batch-output/"
JOBS_PREFIX = "batch-jobs/"
_INPUT_NAME = re.compile(r"^batch-input/(?P<tenant>[A-Za-z0-9_-]{1,64})/(?P<name>[^/]{1,200})\.jsonl$")
_JOB_NAME = re.compile(r"^batch-jobs/(?P<tenant>[A-Za-z0-9_-]{1,64})/(?P<job>[A-Za-z0-9_-]{1,128})\.json$")


class BadEvent(ValueError):
    """Not a Cloud Storage "object finalized" event with a bucket, a name and a generation: acknowledged and
    logged, never retried (no retry can fix it)."""


@dataclass(frozen=True, slots=True)
class ObjectFinalized:
    bucket: str
    name: str
    generation: str
    size: int

    def batch_input(self) -> tuple[str, str] | None:
        """(tenant, name) when the object is ``batch-input/<tenant>/<name>.jsonl``, else None."""
        m = _INPUT_NAME.match(self.name)
        return (m.group("tenant"), m.group("name")) if m else None

    def job_message(self) -> tuple[str, str] | None:
        """(tenant, job id) when the object is ``batch-jobs/<tenant>/<job id>.json``, else None."""
        m = _JOB_NAME.match(self.name)
        return (m.group("tenant"), m.group("job")) if m else None

    @property
    def identity(self) -> str:
        """What the batch of this object is named by, with its generation: the bucket and the object's name."""
        return f"gs://{self.bucket}/{self.name}"


def parse_event(event: Any) -> ObjectFinalized:
    """The object of a ``google.cloud.storage.object.v1.finalized`` CloudEvent; BadEvent for anything else."""
    try:
        kind = event["type"]
        data = event.data
        event["id"]  # every CloudEvent has one
    except (KeyError, TypeError, AttributeError) as exc:
        raise BadEvent("not a CloudEvent") from exc
    if kind != FINALIZED:
        raise BadEvent(f"an event of type {kind!r}, not {FINALIZED}")
    if not isinstance(data, dict):
        raise BadEvent("the event's data is not a JSON object")
    bucket, name, generation = data.get("bucket"), data.get("name"), data.get("generation")
    if not (isinstance(bucket, str) and bucket and isinstance(name, str) and name):
        raise BadEvent("the event's data has no bucket or no name")
    if isinstance(generation, int) and not isinstance(generation, bool):
        generation = str(generation)
    if not (isinstance(generation, str) and generation.isdigit()):
        raise BadEvent("the event's data has no generation")
    try:
        size = int(data.get("size") or 0)
    except (TypeError, ValueError):
        raise BadEvent("the event's size is not a number") from None
    return ObjectFinalized(bucket, name, generation, size)
