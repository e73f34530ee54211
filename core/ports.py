"""Ports: what the core needs from the outside world, named by role. Adapters implement them."""

from __future__ import annotations

from collections.abc import AsyncIterator, Iterable, Mapping, Sequence
from typing import Any, Protocol, runtime_checkable

from core.domain import (
    ApiKeyRecord,
    CounterChange,
    Document,
    ModelSpec,
    SigningKey,
    Tenant,
    UsageAggregate,
    UsageRecord,
)
from core.fine_tuning.job import FineTuneJob, TunerStatus
from core.inference import Embeddings, Generation, GenerationParams, Prompt, StreamEvent


class TenantStore(Protocol):
    def put_tenant(self, tenant: Tenant) -> None: ...
    def get_tenant(self, tenant_id: str) -> Tenant | None: ...
    def list_tenants(self) -> list[Tenant]: ...


class KeyStore(Protocol):
    def put_key(self, key: ApiKeyRecord) -> None: ...
    def get_key(self, key_id: str) -> ApiKeyRecord | None: ...
    def list_keys(self, tenant_id: str) -> list[ApiKeyRecord]: ...


class CounterStore(Protocol):
    """Numeric counters grouped in items; the unit of atomicity is one item.

    ``try_add`` is the one conditional write of the limits: it adds every increment to its field
    if, and only if, every field named in ``limits`` stays at or below its limit afterwards.
    It returns the item's values after the write when it applied, or ``None`` and the values it
    saw when it refused. Every document database can do this on one item (DynamoDB UpdateItem with
    a ConditionExpression, a Firestore transaction, a Cosmos patch with a filter predicate).
    """

    def try_add(
        self,
        item: str,
        increments: Mapping[str, int],
        limits: Mapping[str, int],
        expires_at: float,
    ) -> tuple[bool, dict[str, int]]: ...

    def try_add_all(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        """``try_add`` over several items as ONE atomic write: all apply or none does.

        Returns the values of each item after the write, or as seen when refused. DynamoDB does it with
        TransactWriteItems, Firestore with a transaction; a store that cannot (Cosmos across partitions)
        adds one item after the other and undoes the first when the second refuses.
        """

    def add(self, item: str, deltas: Mapping[str, int], expires_at: float | None = None) -> None:
        """Unconditional add (settling a reservation, undoing one). Missing fields count as 0.

        An absent or expired item is created expiring at ``expires_at``, so settling after the
        window ended leaves nothing behind.
        """

    def read(self, item: str) -> dict[str, int]: ...

    def read_many(self, items: Sequence[str]) -> list[dict[str, int]]:
        """``read`` of each item, in order, in one call where the store can (BatchGetItem, Firestore's
        BatchGetDocuments): a refusal that looks at every shard of a window pays one round trip, not one each."""


class UsageStore(Protocol):
    def record_usage(self, record: UsageRecord, settle: Sequence[CounterChange] = ()) -> bool:
        """Write the record, add it to its daily aggregate and apply ``settle`` (unconditional counter adds)
        in one atomic write; False, and nothing written, if the request id exists.

        Settling with the record makes a request's charge final exactly once, whatever retries happen.
        """

    def get_usage(self, tenant_id: str, request_id: str) -> UsageRecord | None:
        """The tenant's record of one request; another tenant's record with that id is not found."""

    def list_usage(self, tenant_id: str | None, start: float, end: float, limit: int = 1000) -> list[UsageRecord]: ...

    def daily_usage(self, tenant_id: str | None, start_day: str, end_day: str) -> list[UsageAggregate]:
        """Aggregates per tenant, day and model, days given as ``YYYY-MM-DD`` (inclusive)."""


class CacheStore(Protocol):
    """A TTL cache of bytes, kept per tenant: no tenant can read another's entries whatever the key."""

    def cache_get(self, tenant_id: str, key: str, now: float) -> bytes | None: ...
    def cache_put(self, tenant_id: str, key: str, value: bytes, expires_at: float) -> None: ...


class ModelStore(Protocol):
    def put_model(self, spec: ModelSpec) -> None: ...
    def get_model(self, model_id: str) -> ModelSpec | None: ...
    def list_models(self) -> list[ModelSpec]: ...
    def delete_model(self, model_id: str) -> bool: ...


class SigningKeyStore(Protocol):
    def put_signing_key(self, key: SigningKey) -> None: ...
    def list_signing_keys(self) -> list[SigningKey]: ...


class DocumentStore(Protocol):
    """Versioned JSON documents in collections: files, batches, batch line results, fine-tune jobs.

    A document belongs to its owner (the tenant): it is named by (collection, owner, id), so the same id
    under two owners is two documents, and no call reaches another owner's document (get answers None,
    delete False, list leaves it out). Every key can thus begin with the tenant (DynamoDB partitions).

    Every write is on ONE document and may be conditional: ``if_absent`` (create only) or
    ``if_version`` (optimistic concurrency: replace only the version read). All three document
    databases do this natively (DynamoDB conditions, Firestore preconditions, Cosmos etags).
    Listing is of one owner's documents of a collection, ordered by document id, paged with ``after``.
    """

    def put_document(
        self,
        collection: str,
        doc: Document,
        *,
        if_absent: bool = False,
        if_version: int | None = None,
    ) -> Document | None:
        """Write ``doc`` under ``doc.owner`` (its version is ignored) and return it with its new version,
        or None if a condition failed."""

    def get_document(self, collection: str, owner: str, doc_id: str) -> Document | None: ...

    def list_documents(
        self, collection: str, owner: str, after: str | None = None, limit: int = 100
    ) -> list[Document]: ...

    def delete_document(self, collection: str, owner: str, doc_id: str) -> bool: ...


class Store(
    TenantStore, KeyStore, CounterStore, UsageStore, CacheStore, ModelStore, SigningKeyStore, DocumentStore, Protocol
):
    """Everything the gateway keeps. One adapter per database implements all roles."""


@runtime_checkable
class InferenceBackend(Protocol):
    """A way to reach models: local llama.cpp, an OpenAI-compatible server, SageMaker, Vertex, Azure ML.

    ``route`` is the model's ``backend`` entry from the registry (its type plus its own fields).
    Backends raise ``core.errors.BackendError`` (with ``retryable`` set for throttling and 5xx).
    """

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation: ...

    def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]: ...

    async def embed(self, route: Mapping[str, Any], inputs: list[str]) -> Embeddings: ...


class BackendResolver(Protocol):
    """Maps a registry route (``{"type": "openai", ...}``) to the backend that serves it
    (``core.backend_types.BackendCatalog`` over the types a runtime declares)."""

    def backend_for(self, route: Mapping[str, Any]) -> InferenceBackend: ...

    def check_route(self, route: Mapping[str, Any]) -> None:
        """Raise ``InvalidRequest`` for a route no backend here can serve (a model being registered)."""


class TokenCounter(Protocol):
    """Exact prompt token counts for a model, where the gateway has its tokenizer."""

    def count(self, route: Mapping[str, Any], prompt: Prompt) -> int | None: ...


class BlobStore(Protocol):
    """Objects in a bucket (or a folder): batch input and output files, uploaded files."""

    def read_lines(self, key: str, max_line_bytes: int | None = None) -> AsyncIterator[bytes]:
        """The object's lines without their newline, streamed (memory does not grow with the object).

        With ``max_line_bytes``, a longer line is yielded cut to ``max_line_bytes + 1`` bytes (so the
        reader can tell it was too long) and the rest of it is skipped, never held in memory.
        A missing object raises ``FileNotFoundError`` on first iteration.
        """

    def write_object(self, key: str, data: bytes) -> None: ...

    def write_lines(self, key: str, lines: Iterable[bytes]) -> int:
        """Write the lines (newline-terminated) as one object, streamed; returns the bytes written."""

    def read_object(self, key: str) -> bytes: ...

    def delete_object(self, key: str) -> bool: ...

    def object_version(self, key: str) -> str | None:
        """An identifier of the object's current content (S3 version id, GCS generation, etag), or None."""


class JobQueue(Protocol):
    """Runs long jobs (batches) outside the request that created them: an in-process task, SQS, Pub/Sub.

    ``submit`` only enqueues; the consumer calls ``Gateway.run_job(kind, tenant_id, job_id)`` (a job is
    a document of its tenant, found only by both). Delivery may be repeated, so jobs are idempotent (a
    batch resumes where it stopped and charges no line twice).
    """

    def submit(self, kind: str, tenant_id: str, job_id: str) -> None: ...


class FineTuner(Protocol):
    """Trains models away from the gateway: SageMaker training jobs (Vertex AI and Azure ML jobs to come).

    Calls are blocking control-plane calls (the service runs them in a thread). Errors are ``APIError``s
    (``BackendError`` for the backend's failures). ``training_key`` / ``validation_key`` are BlobStore keys.
    """

    @property
    def name(self) -> str:
        """Recorded on each job (``backend``): only the tuner of that name is asked about it."""

    def check(self, job: FineTuneJob) -> None:
        """Raise (``FineTuningUnavailable``, ``InvalidRequest``) if this tuner cannot train ``job``; nothing
        is recorded yet when this is called."""

    def start(self, job: FineTuneJob, training_key: str, validation_key: str | None) -> str:
        """Start training; returns the backend's id of the run. Starting the same job twice is harmless."""

    def status(self, job: FineTuneJob) -> TunerStatus: ...

    def cancel(self, job: FineTuneJob) -> None:
        """Stop the run; a run that already ended is no error."""


class Metrics(Protocol):
    def incr(self, name: str, value: float = 1.0, **dims: str) -> None: ...
    def observe(self, name: str, value: float, **dims: str) -> None: ...


class Clock(Protocol):
    def now(self) -> float: ...


@runtime_checkable
class LogProbScorer(Protocol):
    """An optional backend capability: the log-probability of each token of a text given its prefix."""

    async def token_logprobs(self, route: Mapping[str, Any], text: str) -> list[float]: ...
