"""The batch function's work: one Event Grid BlobCreated event, one batch (or one job message).

Runs on the worker's event loop (the trigger is async); its store and blob calls go to core's offload threads.

Idempotent by blob name and etag: the batch id derives from the tenant, ``azblob://<container>/<name>`` and the
event's eTag (``core.batch.objects.object_batch``), every line is stored once and metered under
``<batch id>:<line>``, so the same blob delivered twice (Event Grid delivers at least once, and retries) is one
batch, one output and one charge; a finished batch is answered from its record. Resumable: a batch that would
run past the function's timeout stops ``SAFETY_MARGIN_S`` before it (the runner records where it is) and writes
its continuation (``batch-input/.jobs/<tenant>/<batch id>.json``: a new blob, a new event), which resumes it; an
invocation killed outright fails, Event Grid delivers the event again, and that retry resumes the batch once the
dead runner's lease has lapsed (until then the event fails and comes back later).

Bad input: an event that is not a BlobCreated one, a blob in another container or outside
``batch-input/<tenant>/<name>.jsonl``, an empty or missing blob (or an etag already overwritten), a tenant that
does not exist: logged and acknowledged (retrying cannot fix them). Bad lines are the runner's: each reported in
the errors file with its line number, the others processed.
"""

from __future__ import annotations

import asyncio
import json
import logging
import time
from dataclasses import dataclass

from core.batch.objects import object_batch
from core.batch.records import load_batch
from core.observability import LOGGER_NAME, log_event
from functions.azure.blob_events import BadEvent, BlobCreated, normal_etag, parse_event
from functions.azure.bootstrap import Runtime

#: Seconds kept free before the function's timeout: the runner's last checkpoint and the continuation.
SAFETY_MARGIN_S = 30.0

log = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True, slots=True)
class Outcome:
    batch_id: str | None
    status: str


class BatchBusy(RuntimeError):
    """Another runner holds the batch's lease: the invocation fails and Event Grid delivers the event again
    later (its retry policy), when that runner has finished or its lease has lapsed."""


def budget_of(timeout_s: float) -> float:
    """How long a batch may run in an invocation: the timeout less the margin (a quarter of a short timeout)."""
    return max(1.0, timeout_s - min(SAFETY_MARGIN_S, timeout_s / 4))


async def handle_event(rt: Runtime, event: object, budget_s: float | None = None) -> Outcome:
    """One event on one runtime; ``budget_s``: how long the batch may run (the function's timeout less the margin)."""
    try:
        blob = parse_event(event)
    except BadEvent as exc:
        log_event(log, "batch event ignored", logging.ERROR, reason=str(exc))
        return Outcome(None, "ignored")
    if rt.settings.blob_container and blob.container != rt.settings.blob_container:
        log_event(log, "blob in another container ignored", logging.WARNING, container=blob.container)
        return Outcome(None, "ignored")
    if not blob.complete:
        log_event(log, "blob not written yet ignored (its content has an event of its own)", name=blob.name)
        return Outcome(None, "ignored")
    deadline = time.monotonic() + (budget_s if budget_s is not None else budget_of(rt.settings.timeout_s))
    if blob.job_message() is not None:
        return await _job_message(rt, blob, deadline)
    return await _batch_input(rt, blob, deadline)


async def _batch_input(rt: Runtime, blob: BlobCreated, deadline: float) -> Outcome:
    parts = blob.batch_input()
    if parts is None:
        log_event(log, "blob outside batch-input/<tenant>/<name>.jsonl ignored", name=blob.name)
        return Outcome(None, "ignored")
    tenant_id, name = parts
    if blob.size == 0:
        log_event(log, "empty batch input ignored", logging.WARNING, name=blob.name, etag=blob.etag)
        return Outcome(None, "empty")
    gateway = rt.gateway
    offload = gateway.offload.call
    if await offload(gateway.store.get_tenant, tenant_id) is None:
        log_event(log, "batch input for a tenant that does not exist", logging.ERROR, tenant_id=tenant_id)
        return Outcome(None, "unknown_tenant")
    blobs = gateway.require_blobs()
    current = normal_etag(await offload(blobs.object_version, blob.name))
    if current is None:
        log_event(log, "batch input blob is gone", logging.WARNING, name=blob.name, etag=blob.etag)
        return Outcome(None, "missing")
    if current != blob.etag:
        # Overwritten since: that content is gone, and the new one has its own event.
        log_event(log, "batch input etag superseded", name=blob.name, etag=blob.etag)
        return Outcome(None, "superseded")

    def create() -> object:
        return object_batch(
            gateway.store,
            blobs,
            tenant_id=tenant_id,
            input_key=blob.name,
            output_key=f"batch-output/{tenant_id}/{name}.jsonl",
            error_key=f"batch-output/{tenant_id}/{name}.errors.jsonl",
            now=gateway.clock.now(),
            source="bucket",
            version=blob.etag,
            identity=blob.identity,
        )

    job = await offload(create)
    batch_id = getattr(job, "id", None)
    if not isinstance(batch_id, str):  # pragma: no cover - the version is given: object_batch always has one
        return Outcome(None, "missing")
    return await run_batch(rt, tenant_id, batch_id, deadline)


async def _job_message(rt: Runtime, blob: BlobCreated, deadline: float) -> Outcome:
    """``{"kind": "batch", "tenant_id", "job_id"}`` in ``batch-input/.jobs/<tenant>/<job id>.json``."""
    tenant_id, job_id = blob.job_message() or ("", "")
    try:
        raw = await rt.gateway.offload.call(rt.gateway.require_blobs().read_object, blob.name)
        message = json.loads(raw)
    except FileNotFoundError:
        log_event(log, "job message is gone", logging.WARNING, name=blob.name)
        return Outcome(None, "missing")
    except ValueError:
        message = None
    if not (
        isinstance(message, dict)
        and message.get("kind") == "batch"
        and message.get("tenant_id") == tenant_id
        and message.get("job_id") == job_id
    ):
        log_event(log, "job message ignored: not a batch job of its path", logging.ERROR, name=blob.name)
        return Outcome(None, "ignored")
    return await run_batch(rt, tenant_id, job_id, deadline)


async def run_batch(rt: Runtime, tenant_id: str, batch_id: str, deadline: float) -> Outcome:
    """Run until done or the deadline; then the batch records its place and its continuation is written."""
    runner = rt.gateway.batch_runner()
    budget = max(0.5, deadline - time.monotonic())
    try:
        job = await asyncio.wait_for(runner.run(tenant_id, batch_id), timeout=budget)
    except TimeoutError:
        await asyncio.to_thread(_continue, rt, tenant_id, batch_id)
        log_event(log, "batch continues in another invocation", tenant_id=tenant_id, batch_id=batch_id)
        return Outcome(batch_id, "continued")
    status = getattr(job, "status", None)
    if isinstance(status, str):
        return Outcome(batch_id, status)
    if await rt.gateway.offload.call(load_batch, rt.gateway.store, tenant_id, batch_id) is None:
        log_event(log, "a job message for a batch that does not exist", logging.ERROR, batch_id=batch_id)
        return Outcome(batch_id, "missing")
    raise BatchBusy(f"batch {batch_id} is being run elsewhere; Event Grid delivers the event again")


def _continue(rt: Runtime, tenant_id: str, batch_id: str) -> None:
    if rt.jobs is not None:
        rt.jobs.submit_now("batch", tenant_id, batch_id)
    else:  # pragma: no cover - a runtime with blobs always has its job queue
        rt.gateway.jobs.submit("batch", tenant_id, batch_id)
