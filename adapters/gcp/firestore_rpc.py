"""FirestoreRpc: the Firestore calls FirestoreStore makes, their errors, retries and transactions.

The store talks to Firestore's API (the client's GAPIC ``FirestoreClient``) directly for the request path,
because the client library's ``Transaction`` costs a ``BeginTransaction`` round trip of its own: here a
transaction begins in its first read (``BatchGetDocuments`` with ``new_transaction``), so a read-check-write is
two round trips, the read and the ``Commit``. Every write is built as a ``Write`` whose document fields are the
names as given (counter fields hold ``|``, ``@``, ``.``, ``#``: no field path is ever parsed).

Errors: every call is made without the client's own retry (``retry=None``) and with a timeout; a transaction is
retried whole by ``FirestoreRpc.retried`` with exponential backoff and full jitter, a bounded number of rounds:
``ABORTED`` (contention: another transaction holds a document; 409), ``UNAVAILABLE``, ``DEADLINE_EXCEEDED``,
``INTERNAL`` and ``RESOURCE_EXHAUSTED``. Then ``StoreThrottled`` (contention or throttling: core spreads a busy
tenant over more counter shards) or ``ServiceUnavailable``, both 503 ``store_unavailable``. A commit is atomic,
so a failure leaves nothing half-written; a commit whose answer was lost may have applied, which each writer
tells by the token it writes (``w``) into its documents.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from datetime import UTC, datetime
from typing import Any, TypeVar

from google.api_core import exceptions as gexc
from google.cloud.firestore_v1 import _helpers
from google.cloud.firestore_v1.types import common, document, query, write

from core.errors import ServiceUnavailable, StoreThrottled

T = TypeVar("T")
Fields = dict[str, Any]

ROUNDS = 8  # attempts of one call or transaction
PAUSE_S = 0.01  # the first backoff's bound; doubling each round, full jitter
MAX_PAUSE_S = 1.0
_CONTENTION = (gexc.Aborted,)
_THROTTLED = (gexc.TooManyRequests, gexc.ResourceExhausted)
_UNAVAILABLE = (gexc.ServiceUnavailable, gexc.DeadlineExceeded, gexc.InternalServerError, gexc.Unknown)


class Retry(Exception):
    """A call or a transaction to run again: ``kind`` is contention, throttled or unavailable; ``ambiguous`` when
    it was a commit that may have applied."""

    def __init__(self, kind: str, ambiguous: bool = False) -> None:
        super().__init__(kind)
        self.kind = kind
        self.ambiguous = ambiguous


class Refused(Exception):
    """A write's precondition failed: ``exists`` (a create met a document), ``missing`` (an update or a delete
    found none) or ``changed`` (an update time moved)."""

    def __init__(self, why: str) -> None:
        super().__init__(why)
        self.why = why


def store_unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the database is busy or unreachable; retry shortly", code="store_unavailable", headers={"retry-after": "1"}
    )


def translated(exc: Exception, *, committing: bool) -> Exception:
    """What a google.api_core error means here: Refused, Retry, or itself (a bug or a misconfiguration)."""
    if isinstance(exc, gexc.AlreadyExists):
        return Refused("exists")
    if isinstance(exc, gexc.NotFound) and committing:
        return Refused("missing")
    if isinstance(exc, gexc.FailedPrecondition) and committing:
        return Refused("changed")
    if isinstance(exc, _CONTENTION):
        return Retry("contention")
    if isinstance(exc, _THROTTLED):
        return Retry("throttled")
    if isinstance(exc, _UNAVAILABLE):
        return Retry("unavailable", ambiguous=committing)
    return exc


def pause(attempt: int) -> None:
    """Exponential backoff with full jitter: up to 10, 20, 40 ... ms, at most 1 s."""
    time.sleep(random.uniform(0, min(MAX_PAUSE_S, PAUSE_S * 2**attempt)))  # noqa: S311  # nosec B311 - jitter


def decoded(fields: Any, client: Any) -> Fields:
    """A document's fields as Python values (ints, floats, bytes, str, lists, maps, datetimes)."""
    values: Fields = _helpers.decode_dict(fields, client)  # type: ignore[assignment]
    return values


def timestamp(seconds: float) -> datetime:
    return datetime.fromtimestamp(seconds, tz=UTC)


class FirestoreRpc:
    """One database of one client: document names, reads, commits, transactions. Safe to share between threads
    (the client's gRPC channel is; nothing here is mutable after construction)."""

    def __init__(self, client: Any, timeout_s: float = 10.0, rounds: int = ROUNDS) -> None:
        self.client = client
        self.api: Any = client._firestore_api  # the GAPIC client the library itself calls
        self.database: str = client._database_string
        self.metadata: Sequence[tuple[str, str]] = client._rpc_metadata
        self.timeout_s = timeout_s
        self.rounds = rounds

    def name(self, path: str) -> str:
        return f"{self.database}/documents/{path}"

    def path(self, name: str) -> str:
        return name.split("/documents/", 1)[1]

    # -- calls -----------------------------------------------------------------------------------------

    def get(self, paths: Iterable[str], *, begin: bool = False, transaction: bytes | None = None) -> Any:
        """``BatchGetDocuments``: ({path: fields or None}, the transaction it began or None)."""
        request: dict[str, Any] = {"database": self.database, "documents": [self.name(p) for p in paths]}
        if begin:
            request["new_transaction"] = common.TransactionOptions(read_write=common.TransactionOptions.ReadWrite())
        elif transaction is not None:
            request["transaction"] = transaction
        found: dict[str, Fields | None] = {}
        began: bytes | None = None
        try:
            for answer in self.api.batch_get_documents(
                request=request, metadata=self.metadata, retry=None, timeout=self.timeout_s
            ):
                if answer.transaction:
                    began = answer.transaction
                if answer.found and answer.found.name:
                    found[self.path(answer.found.name)] = decoded(answer.found.fields, self.client)
                elif answer.missing:
                    found[self.path(answer.missing)] = None
        except gexc.GoogleAPICallError as exc:
            raise translated(exc, committing=False) from exc
        return found, began

    def get_with_time(self, path: str) -> tuple[Fields | None, Any]:
        """One document (or None) and its update time, for a precondition on it."""
        request = {"database": self.database, "documents": [self.name(path)]}
        try:
            for answer in self.api.batch_get_documents(
                request=request, metadata=self.metadata, retry=None, timeout=self.timeout_s
            ):
                if answer.found and answer.found.name:
                    return decoded(answer.found.fields, self.client), answer.found.update_time
        except gexc.GoogleAPICallError as exc:
            raise translated(exc, committing=False) from exc
        return None, None

    def commit(self, writes: Sequence[write.Write], transaction: bytes | None = None) -> list[Any]:
        """``Commit``: every write or none; the write results (update times, transform results)."""
        request: dict[str, Any] = {"database": self.database, "writes": list(writes)}
        if transaction is not None:
            request["transaction"] = transaction
        try:
            answer = self.api.commit(request=request, metadata=self.metadata, retry=None, timeout=self.timeout_s)
        except gexc.GoogleAPICallError as exc:
            raise translated(exc, committing=True) from exc
        return list(answer.write_results)

    def rollback(self, transaction: bytes) -> None:
        """Release a transaction's locks; a failure is ignored (the transaction times out on its own)."""
        with contextlib.suppress(gexc.GoogleAPICallError):
            self.api.rollback(
                request={"database": self.database, "transaction": transaction},
                metadata=self.metadata,
                retry=None,
                timeout=self.timeout_s,
            )

    def retried(self, attempt: Callable[[int, Retry | None], T]) -> T:
        """``attempt(round, what failed the round before)``, again on ``Retry`` with jittered backoff; then 503."""
        failed: Retry | None = None
        for round_ in range(self.rounds):
            try:
                return attempt(round_, failed)
            except Retry as exc:
                failed = exc if not (failed and failed.ambiguous) else Retry(exc.kind, ambiguous=True)
                if round_ + 1 < self.rounds:
                    pause(round_)
        if failed is not None and failed.kind in ("contention", "throttled"):
            raise StoreThrottled()
        raise store_unavailable()

    # -- writes ----------------------------------------------------------------------------------------

    def put(self, path: str, fields: Mapping[str, Any], *, exists: bool | None = None) -> write.Write:
        """The whole document becomes ``fields`` (``exists``: only if it does / does not exist)."""
        pb = write.Write(update=document.Document(name=self.name(path), fields=_helpers.encode_dict(dict(fields))))
        if exists is not None:
            pb.current_document = common.Precondition(exists=exists)
        return pb

    def merge(self, path: str, fields: Mapping[str, Any], increments: Mapping[str, int | float]) -> write.Write:
        """Set ``fields`` and add ``increments`` (server-side, no read): the document is created if absent."""
        doc = document.Document(name=self.name(path), fields=_helpers.encode_dict(dict(fields)))
        transforms = [
            write.DocumentTransform.FieldTransform(field_path=name, increment=_helpers.encode_value(value))
            for name, value in increments.items()
        ]
        return write.Write(
            update=doc, update_mask=common.DocumentMask(field_paths=list(fields)), update_transforms=transforms
        )

    def delete(self, path: str, *, exists: bool | None = None) -> write.Write:
        pb = write.Write(delete=self.name(path))
        if exists is not None:
            pb.current_document = common.Precondition(exists=exists)
        return pb

    # -- queries (listings: off the request path) ------------------------------------------------------

    def query(
        self, parent: str, collection: str, structured: Mapping[str, Any], *, all_descendants: bool = False
    ) -> list[Fields]:
        """``RunQuery`` of ``collection`` under ``parent`` (a document path, or "" for the root)."""
        structured_query = query.StructuredQuery(
            {"from_": [{"collection_id": collection, "all_descendants": all_descendants}], **structured}
        )
        parent_name = f"{self.database}/documents" + (f"/{parent}" if parent else "")
        found: list[Fields] = []
        try:
            for answer in self.api.run_query(
                request={"parent": parent_name, "structured_query": structured_query},
                metadata=self.metadata,
                retry=None,
                timeout=self.timeout_s,
            ):
                if answer.document and answer.document.name:
                    found.append(decoded(answer.document.fields, self.client))
        except gexc.GoogleAPICallError as exc:
            raise translated(exc, committing=False) from exc
        return found


def where(*filters: tuple[str, str, Any]) -> dict[str, Any]:
    """A query's ``where``: each (field, operator as in StructuredQuery.FieldFilter.Operator, value), all of them."""
    pbs = [
        {"field_filter": {"field": {"field_path": name}, "op": op, "value": _helpers.encode_value(value)}}
        for name, op, value in filters
    ]
    if len(pbs) == 1:
        return {"where": pbs[0]}
    return {"where": {"composite_filter": {"op": "AND", "filters": pbs}}}


def ordered(*names: str) -> dict[str, Any]:
    return {"order_by": [{"field": {"field_path": name}, "direction": "ASCENDING"} for name in names]}
