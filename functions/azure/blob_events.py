"""What the batch function receives: Event Grid ``Microsoft.Storage.BlobCreated`` events, parsed and classified.

The Event Grid subscription (terraform/azure) delivers the blobs created under ``batch-input/`` of the data
container, in the Event Grid schema or the CloudEvents 1.0 schema (the worker hands the function an
``EventGridEvent`` or a ``CloudEvent``; both are read). Two kinds of names mean work:
``batch-input/<tenant>/<name>.jsonl`` (a batch file: one batch per etag) and
``batch-input/.jobs/<tenant>/<job id>.json`` (a job message: a batch created through the API, or the continuation
of one that ran out of time; see ``core.blob_jobs``). A job message lives under ``batch-input/`` so that
the one subscription delivers it; ``.jobs`` can never be a tenant id (no dots in those). Everything else is ignored.

The blob's name comes from the event's subject (``/blobServices/default/containers/<c>/blobs/<name>``, not
URL-encoded), else from its ``data.url`` (URL-decoded). The etag is the event's ``data.eTag`` without quotes.
"""

from __future__ import annotations

import re
from dataclasses import dataclass
from typing import Any
from urllib.parse import unquote, urlsplit

BLOB_CREATED = "Microsoft.Storage.BlobCreated"
INPUT_PREFIX = "batch-input/"
JOBS_PREFIX = "batch-input/.jobs/"
OUTPUT_PREFIX = "batch-output/"
_SUBJECT = re.compile(r"^/blobServices/default/containers/(?P<container>[^/]+)/blobs/(?P<name>.+)$")
_INPUT_NAME = re.compile(r"^batch-input/(?P<tenant>[A-Za-z0-9_-]{1,64})/(?P<name>[^/]{1,200})\.jsonl$")
_JOB_NAME = re.compile(r"^batch-input/\.jobs/(?P<tenant>[A-Za-z0-9_-]{1,64})/(?P<job>[A-Za-z0-9_-]{1,128})\.json$")
#: Data Lake's ``CreateFile`` is followed by ``FlushWithClose`` once the content is there: only that one counts.
_NOT_YET_WRITTEN = frozenset({"CreateFile"})


class BadEvent(ValueError):
    """Not a BlobCreated event with a container, a name and an etag: acknowledged and logged, never retried
    (no retry can fix it)."""


@dataclass(frozen=True, slots=True)
class BlobCreated:
    container: str
    name: str
    etag: str
    size: int
    api: str = ""

    def batch_input(self) -> tuple[str, str] | None:
        """(tenant, name) when the blob is ``batch-input/<tenant>/<name>.jsonl``, else None."""
        m = _INPUT_NAME.match(self.name)
        return (m.group("tenant"), m.group("name")) if m else None

    def job_message(self) -> tuple[str, str] | None:
        """(tenant, job id) when the blob is ``batch-input/.jobs/<tenant>/<job id>.json``, else None."""
        m = _JOB_NAME.match(self.name)
        return (m.group("tenant"), m.group("job")) if m else None

    @property
    def complete(self) -> bool:
        """False for a Data Lake file just created (its content comes with a later event)."""
        return self.api not in _NOT_YET_WRITTEN

    @property
    def identity(self) -> str:
        """What the batch of this blob is named by, with its etag: the container and the blob's name."""
        return f"azblob://{self.container}/{self.name}"


def normal_etag(etag: str | None) -> str | None:
    """An etag without its quotes (the SDK's properties have them, Event Grid's ``eTag`` has not)."""
    return etag.strip().strip('"') or None if etag else None


def parse_event(event: Any) -> BlobCreated:
    """The blob of an Event Grid or CloudEvents BlobCreated event; BadEvent for anything else."""
    kind = _attribute(event, "event_type", "type")
    if kind != BLOB_CREATED:
        raise BadEvent(f"an event of type {kind!r}, not {BLOB_CREATED}")
    try:
        data = event.get_json()
    except (ValueError, TypeError, AttributeError) as exc:
        raise BadEvent("the event's data is not JSON") from exc
    if not isinstance(data, dict):
        raise BadEvent("the event's data is not a JSON object")
    container, name = _location(_attribute(event, "subject"), data.get("url"))
    etag = normal_etag(data.get("eTag") if isinstance(data.get("eTag"), str) else None)
    if etag is None:
        raise BadEvent("the event's data has no eTag")
    size = data.get("contentLength", 0)
    if isinstance(size, bool) or not isinstance(size, int | str):
        raise BadEvent("the event's contentLength is not a number")
    try:
        size = int(size or 0)
    except ValueError:
        raise BadEvent("the event's contentLength is not a number") from None
    api = data.get("api") if isinstance(data.get("api"), str) else ""
    return BlobCreated(container, name, etag, size, str(api))


def _attribute(event: Any, *names: str) -> Any:
    for name in names:
        value = getattr(event, name, None)
        if value is not None:
            return value
    return None


def _location(subject: Any, url: Any) -> tuple[str, str]:
    """(container, blob name) from the subject, else from the URL (``https://<account>.blob.../<container>/<name>``,
    or path-style ``http://127.0.0.1:10000/<account>/<container>/<name>`` on Azurite)."""
    if isinstance(subject, str):
        m = _SUBJECT.match(subject)
        if m:
            return m.group("container"), m.group("name")
    if isinstance(url, str) and url:
        parts = urlsplit(url)
        path = unquote(parts.path).lstrip("/")
        if (parts.hostname or "") in ("127.0.0.1", "localhost"):
            path = path.split("/", 1)[1] if "/" in path else ""
        container, _, name = path.partition("/")
        if container and name:
            return container, name
    raise BadEvent("the event names no blob (no subject /blobServices/default/containers/<c>/blobs/<name>, no url)")
