"""Batches started by an object in a bucket (an upload trigger, the CLI): one batch per object version."""

from __future__ import annotations

from core.batch.records import BATCHES, BatchJob, derived_batch_id, load_batch
from core.generation_service import system_principal
from core.ports import BlobStore, DocumentStore


def object_batch(
    store: DocumentStore,
    blobs: BlobStore,
    *,
    tenant_id: str,
    input_key: str,
    output_key: str,
    error_key: str,
    now: float,
    source: str = "bucket",
    version: str | None = None,
    identity: str | None = None,
) -> BatchJob | None:
    """The batch of this object's current version, created on first sight; None if the object is gone.

    The id is derived from tenant, ``identity`` (the object's key by default) and version, so the same
    upload seen again (a repeated event, a re-drop, a restart) is the same batch: it resumes, never
    starting over or charging a line twice. A new version of the object is a new batch. Each line runs
    under the tenant's limits as ``system:<source>``, a principal no API key stands behind.
    """
    version = version or blobs.object_version(input_key)
    if version is None:
        return None
    batch_id = derived_batch_id(tenant_id, identity or input_key, version)
    existing = load_batch(store, tenant_id, batch_id)
    if existing is not None:
        return existing
    principal = system_principal(tenant_id, source)
    job = BatchJob(
        id=batch_id,
        tenant_id=tenant_id,
        input_key=input_key,
        output_key=output_key,
        error_key=error_key,
        created_at=now,
        key_id=principal.key_id,
        scopes=sorted(principal.scopes),
        input_version=version,
        source=source,
    )
    written = store.put_document(BATCHES, job.to_document(), if_absent=True)
    if written is None:  # another process created it a moment ago
        return load_batch(store, tenant_id, batch_id)
    job.version = written.version
    return job
