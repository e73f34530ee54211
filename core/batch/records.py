"""Batch jobs and uploaded files as records, and their mapping to and from stored documents."""

from __future__ import annotations

import dataclasses
import hashlib
import secrets
from collections import deque
from collections.abc import Callable, Iterator
from dataclasses import dataclass, field
from typing import Any, Literal

from core.domain import Document, Principal
from core.offload import Offload
from core.ports import DocumentStore

FILES = "files"
BATCHES = "batches"
BatchState = Literal[
    "validating", "in_progress", "finalizing", "completed", "failed", "expired", "cancelling", "cancelled"
]
TERMINAL: frozenset[str] = frozenset({"completed", "failed", "expired", "cancelled"})
DAY = 86_400
_ID_SPACE = 2**48  # milliseconds; ids count down from here, so listing by id shows the newest first


def lines_collection(batch_id: str) -> str:
    """The collection holding one batch's line results, one document per line."""
    return f"batch_lines:{batch_id}"


def line_doc_id(line_no: int) -> str:
    """Zero-padded, so that ordering documents by id orders them by line."""
    return f"{line_no:010d}"


def line_request_id(batch_id: str, line_no: int) -> str:
    """The request id a line is metered under: the same in every run of the batch."""
    return f"{batch_id}:{line_no}"


def _time_id(prefix: str, now: float) -> str:
    return f"{prefix}{_ID_SPACE - int(now * 1000):012x}{secrets.token_hex(6)}"


def new_file_id(now: float) -> str:
    return _time_id("file-", now)


def new_batch_id(now: float) -> str:
    return _time_id("batch_", now)


def derived_batch_id(tenant_id: str, source: str, version: str) -> str:
    """The id of a batch started by a bucket upload: the same object version always maps to the same batch."""
    digest = hashlib.sha256(f"{tenant_id}\0{source}\0{version}".encode()).hexdigest()
    return f"batch_{digest[:32]}"


def derived_file_id(batch_id: str, role: str) -> str:
    """The id of a batch's output (``role="output"``) or error file, known before it is written."""
    return "file-" + hashlib.sha256(f"{batch_id}\0{role}".encode()).hexdigest()[:24]


def file_key(tenant_id: str, file_id: str) -> str:
    return f"files/{tenant_id}/{file_id}"


@dataclass
class FileRecord:
    """An uploaded (or produced) file: metadata in the store, content in the blob store."""

    id: str
    tenant_id: str
    filename: str
    purpose: str
    bytes: int
    created_at: float
    blob_key: str
    version: str | None = None
    lines: int = 0

    def to_api(self) -> dict[str, Any]:
        return {
            "id": self.id,
            "object": "file",
            "bytes": self.bytes,
            "created_at": int(self.created_at),
            "filename": self.filename,
            "purpose": self.purpose,
            "status": "processed",
            "status_details": None,
        }

    def to_document(self) -> Document:
        return Document(self.id, self.tenant_id, dataclasses.asdict(self))

    @classmethod
    def from_document(cls, doc: Document) -> FileRecord:
        return cls(**_known(cls, doc.body))


@dataclass
class BatchJob:
    """A batch's status record: state, counts, where its input and output live, who it runs as."""

    id: str
    tenant_id: str
    input_key: str
    output_key: str
    error_key: str
    created_at: float
    key_id: str
    scopes: list[str]
    endpoint: str | None = None  # None: each line names its own endpoint (bucket and CLI batches)
    input_version: str | None = None
    input_file_id: str | None = None
    publish_files: bool = False  # API batches register their outputs as files
    source: str = "api"
    completion_window: str = "24h"
    metadata: dict[str, str] | None = None
    status: str = "validating"
    total: int = 0
    completed: int = 0
    failed: int = 0
    deferred: int = 0  # failed lines that were not run for want of quota: running the batch again retries them
    errors: list[dict[str, Any]] = field(default_factory=list)
    output_file_id: str | None = None
    error_file_id: str | None = None
    in_progress_at: float | None = None
    finalizing_at: float | None = None
    completed_at: float | None = None
    failed_at: float | None = None
    cancelling_at: float | None = None
    cancelled_at: float | None = None
    attempts: int = 0
    lease_owner: str | None = None
    lease_until: float = 0.0
    version: int = 0

    @property
    def terminal(self) -> bool:
        return self.status in TERMINAL

    def principal(self) -> Principal:
        return Principal(self.tenant_id, self.key_id, frozenset(self.scopes))

    def leased_by_other(self, owner: str, now: float) -> bool:
        return self.lease_owner not in (None, owner) and self.lease_until > now

    def to_document(self) -> Document:
        body = dataclasses.asdict(self)
        del body["version"]
        return Document(self.id, self.tenant_id, body, self.version)

    @classmethod
    def from_document(cls, doc: Document) -> BatchJob:
        return cls(**_known(cls, doc.body), version=doc.version)

    def to_api(self) -> dict[str, Any]:
        def ts(value: float | None) -> int | None:
            return None if value is None else int(value)

        return {
            "id": self.id,
            "object": "batch",
            "endpoint": self.endpoint or "*",
            "errors": {"object": "list", "data": self.errors} if self.errors else None,
            "input_file_id": self.input_file_id or self.input_key,
            "completion_window": self.completion_window,
            "status": self.status,
            "output_file_id": self.output_file_id,
            "error_file_id": self.error_file_id,
            "created_at": int(self.created_at),
            "in_progress_at": ts(self.in_progress_at),
            "expires_at": int(self.created_at) + DAY,
            "finalizing_at": ts(self.finalizing_at),
            "completed_at": ts(self.completed_at),
            "failed_at": ts(self.failed_at),
            "expired_at": None,
            "cancelling_at": ts(self.cancelling_at),
            "cancelled_at": ts(self.cancelled_at),
            "request_counts": {"total": self.total, "completed": self.completed, "failed": self.failed},
            "metadata": self.metadata,
        }


def _known(cls: type[Any], body: dict[str, Any]) -> dict[str, Any]:
    """The fields of ``cls`` found in ``body`` (a newer writer's extra fields are ignored)."""
    names = {f.name for f in dataclasses.fields(cls)} - {"version"}
    return {k: v for k, v in body.items() if k in names}


def load_batch(store: DocumentStore, tenant_id: str, batch_id: str) -> BatchJob | None:
    """The tenant's batch; another tenant's batch of that id is not found."""
    doc = store.get_document(BATCHES, tenant_id, batch_id)
    return BatchJob.from_document(doc) if doc is not None else None


def update_batch(store: DocumentStore, job: BatchJob, change: Callable[[BatchJob], None]) -> BatchJob:
    """Apply ``change`` and write it if nobody wrote since; otherwise re-read and apply it again."""
    while True:
        fresh = dataclasses.replace(job, errors=list(job.errors), scopes=list(job.scopes))
        change(fresh)
        written = store.put_document(BATCHES, fresh.to_document(), if_version=job.version)
        if written is not None:
            fresh.version = written.version
            return fresh
        reread = load_batch(store, job.tenant_id, job.id)
        if reread is None:
            raise LookupError(f"batch {job.id} vanished")
        job = reread


def reopen(job: BatchJob) -> None:
    """Make a finished batch with deferred lines runnable again (an ``update_batch`` change)."""
    if job.status == "completed" and job.deferred:
        job.status = "in_progress"
        job.finalizing_at = job.completed_at = None
        job.output_file_id = job.error_file_id = None


def iter_documents(store: DocumentStore, collection: str, owner: str, page: int = 500) -> Iterator[Document]:
    """Every document of ``owner`` in a collection, in id order, read page by page."""
    after: str | None = None
    while True:
        docs = store.list_documents(collection, owner, after, page)
        yield from docs
        if len(docs) < page:
            return
        after = docs[-1].id


class DoneLines:
    """The stored results of a batch's lines, read page by page as a reader moves forward through the input.

    ``get`` must be awaited with growing line numbers; only one page is held at a time, so memory does
    not grow with the batch however many lines an earlier run finished. Pages are read through ``offload``
    (off the event loop: the store blocks).
    """

    def __init__(
        self, store: DocumentStore, batch_id: str, owner: str, page: int = 500, *, offload: Offload | None = None
    ) -> None:
        self._store = store
        self._collection = lines_collection(batch_id)
        self._owner = owner
        self._page = page
        self._offload = offload or Offload(0)
        self._buffer: deque[Document] = deque()
        self._after: str | None = None
        self._exhausted = False

    async def get(self, line_no: int) -> Document | None:
        key = line_doc_id(line_no)
        while True:
            while self._buffer and self._buffer[0].id < key:
                self._buffer.popleft()
            if self._buffer:
                return self._buffer[0] if self._buffer[0].id == key else None
            if self._exhausted:
                return None
            list_page = self._store.list_documents
            docs = await self._offload.call(list_page, self._collection, self._owner, self._after, self._page)
            self._exhausted = len(docs) < self._page
            if docs:
                self._after = docs[-1].id
                self._buffer.extend(docs)
