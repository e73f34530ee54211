"""The batch function's work: one Cloud Storage "object finalized" event, one batch (or one job message).

Idempotent by bucket, name and generation: the batch id derives from the tenant, ``gs://<bucket>/<name>`` and
the generation (``core.batch.objects.object_batch``), every line is stored once and metered under
``<batch id>:<line>``, so the same generation delivered twice (Eventarc delivers at least once, and retries)
is one batch, one output and one charge; a finished batch is answered from its record. Resumable: a batch
that would run past the function's timeout stops ``SAFETY_MARGIN_S`` before it (the runner records where it
is) and writes its continuation (``batch-jobs/<tenant>/<batch id>.json``: a new generation, a new event),
which resumes it; an invocation killed outright is retried by Eventarc, and the retry resumes it too once
the dead runner's lease has lapsed (until then the event fails and comes back later).

Bad input: an event that is not an object-finalized one, an object in another bucket or outside
``batch-input/<tenant>/<name>.jsonl``, an empty or missing object (or a generation already overwritten), a
tenant that does not exist: logged and acknowledged (retrying cannot fix them). Bad lines are the runner's:
each reported in the errors file with its line number, the others processed.
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
from functions.gcp.bootstrap import Runtime
from functions.gcp.storage_events import BadEvent, ObjectFinalized, parse_event

#: Seconds kept free before the function's timeout: the runner's last checkpoint and the continuation.
SAFETY_MARGIN_S = 30.0

log = logging.getLogger(LOGGER_NAME)


@dataclass(frozen=True, slots=True)
class Outcome:
    batch_id: str | None
    status: str


class BatchBusy(RuntimeError):
    """Another runner holds the batch's lease: the event fails (HTTP 500) and Eventarc delivers it again later,
    when that runner has finished or its lease has lapsed."""


def budget_of(timeout_s: float) -> float:
    """How long a batch may run in an invocation: the timeout less the margin (a quarter of a short timeout)."""
    return max(1.0, timeout_s - min(SAFETY_MARGIN_S, timeout_s / 4))


def handle_event(rt: Runtime, event: object, budget_s: float | None = None) -> Outcome:
    """One event on one runtime; ``budget_s``: how long the batch may run (the function's timeout less the margin)."""
    try:
        obj = parse_event(event)
    except BadEvent as exc:
        log_event(log, "batch event ignored", logging.ERROR, reason=str(exc))
        return Outcome(None, "ignored")
    watched = rt.settings.input_bucket or rt.settings.bucket
    if watched and obj.bucket != watched:
        log_event(log, "object in another bucket ignored", logging.WARNING, bucket=obj.bucket)
        return Outcome(None, "ignored")
    budget = budget_s if budget_s is not None else budget_of(rt.settings.timeout_s)
    deadline = time.monotonic() + budget
    job = obj.job_message()
    if job is not None:
        return _job_message(rt, obj, deadline)
    return _batch_input(rt, obj, deadline)


def _batch_input(rt: Runtime, obj: ObjectFinalized, deadline: float) -> Outcome:
    parts = obj.batch_input()
    if parts is None:
        log_event(log, "object outside batch-input/<tenant>/<name>.jsonl ignored", name=obj.name)
        return Outcome(None, "ignored")
    tenant_id, name = parts
    if obj.size == 0:
        log_event(log, "empty batch input ignored", logging.WARNING, name=obj.name, generation=obj.generation)
        return Outcome(None, "empty")
    gateway = rt.gateway
    if gateway.store.get_tenant(tenant_id) is None:
        log_event(log, "batch input for a tenant that does not exist", logging.ERROR, tenant_id=tenant_id)
        return Outcome(None, "unknown_tenant")
    blobs = gateway.require_blobs()
    current = blobs.object_version(obj.name)
    if current is None:
        log_event(log, "batch input object is gone", logging.WARNING, name=obj.name, generation=obj.generation)
        return Outcome(None, "missing")
    if current != obj.generation:
        # Overwritten since: that generation's content is gone, and the new one has its own event.
        log_event(log, "batch input generation superseded", name=obj.name, generation=obj.generation)
        return Outcome(None, "superseded")
    job = object_batch(
        gateway.store,
        blobs,
        tenant_id=tenant_id,
        input_key=obj.name,
        output_key=f"batch-output/{tenant_id}/{name}.jsonl",
        error_key=f"batch-output/{tenant_id}/{name}.errors.jsonl",
        now=gateway.clock.now(),
        source="bucket",
        version=obj.generation,
        identity=obj.identity,
    )
    if job is None:  # pragma: no cover - the version is given: object_batch always has one
        return Outcome(None, "missing")
    return run_batch(rt, tenant_id, job.id, deadline)


def _job_message(rt: Runtime, obj: ObjectFinalized, deadline: float) -> Outcome:
    """``{"kind": "batch", "tenant_id", "job_id"}`` in ``batch-jobs/<tenant>/<job id>.json``."""
    tenant_id, job_id = obj.job_message() or ("", "")
    try:
        message = json.loads(rt.gateway.require_blobs().read_object(obj.name))
    except FileNotFoundError:
        log_event(log, "job message is gone", logging.WARNING, name=obj.name)
        return Outcome(None, "missing")
    except ValueError:
        message = None
    if not (
        isinstance(message, dict)
        and message.get("kind") == "batch"
        and message.get("tenant_id") == tenant_id
        and message.get("job_id") == job_id
    ):
        log_event(log, "job message ignored: not a batch job of its path", logging.ERROR, name=obj.name)
        return Outcome(None, "ignored")
    return run_batch(rt, tenant_id, job_id, deadline)


def run_batch(rt: Runtime, tenant_id: str, batch_id: str, deadline: float) -> Outcome:
    """Run until done or the deadline; then the batch records its place and its continuation is written."""
    runner = rt.gateway.batch_runner()
    budget = max(0.5, deadline - time.monotonic())

    async def run() -> object:
        return await asyncio.wait_for(runner.run(tenant_id, batch_id), timeout=budget)

    try:
        job = rt.loop.run(run(), budget + SAFETY_MARGIN_S)
    except TimeoutError:
        rt.gateway.jobs.submit("batch", tenant_id, batch_id)
        log_event(log, "batch continues in another invocation", tenant_id=tenant_id, batch_id=batch_id)
        return Outcome(batch_id, "continued")
    status = getattr(job, "status", None)
    if isinstance(status, str):
        return Outcome(batch_id, status)
    if load_batch(rt.gateway.store, tenant_id, batch_id) is None:
        log_event(log, "a job message for a batch that does not exist", logging.ERROR, batch_id=batch_id)
        return Outcome(batch_id, "missing")
    raise BatchBusy(f"batch {batch_id} is being run elsewhere; Eventarc delivers the event again")
