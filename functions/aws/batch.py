"""Lambda handler of the batch queue: S3 uploads under ``batch-input/<tenant>/`` (and continuations) run as batches.

Each SQS record is one unit: a failed record is reported alone (partial batch response) and retried
by SQS, then dead-lettered. The same object version delivered twice is one batch and one charge: the
batch id derives from tenant, key and version, every line is stored once, and Powertools Idempotency
(on DynamoDB) skips an object version already done. A file too big for one invocation stops before the
Lambda time limit, records where it is, and queues a continuation; the next invocation resumes it.
"""

from __future__ import annotations

import asyncio
import time
from collections.abc import Callable
from dataclasses import dataclass
from functools import cache
from typing import Any

from aws_lambda_powertools import Logger
from aws_lambda_powertools.utilities.batch import BatchProcessor, EventType, process_partial_response
from aws_lambda_powertools.utilities.data_classes.sqs_event import SQSRecord

from adapters.aws.tracing import make_tracer
from core.batch.objects import object_batch
from core.batch.records import load_batch
from functions.aws.bootstrap import Runtime, runtime
from functions.aws.s3_events import JobMessage, ObjectCreated, UnknownMessage, parse_body

logger = Logger(service="textnlp")
tracer = make_tracer("textnlp")
processor = BatchProcessor(event_type=EventType.SQS)
#: Seconds kept free before the Lambda time limit: the runner's last checkpoint and the continuation.
SAFETY_MARGIN_S = 45.0


@dataclass(frozen=True, slots=True)
class Outcome:
    batch_id: str | None
    status: str


class BatchBusy(RuntimeError):
    """Another runner holds the batch's lease: the record fails, and SQS brings it back after the
    visibility timeout (the lease has expired by then, or the batch is finished)."""


@dataclass(frozen=True)
class _Once:
    """``_object`` behind Powertools Idempotency (or not, without an idempotency table)."""

    call: Callable[..., Outcome]
    config: Any = None  # IdempotencyConfig: it is told each invocation's Lambda context


@tracer.capture_lambda_handler(capture_response=False)
def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
    rt = runtime()
    try:
        result = process_partial_response(event=event, record_handler=_record, processor=processor, context=context)
        return dict(result)
    finally:
        rt.metrics.flush()


def _record(record: SQSRecord, lambda_context: Any = None) -> list[Outcome]:
    rt = runtime()
    deadline = time.monotonic() + _budget_s(lambda_context)
    try:
        items = parse_body(record.body)
    except UnknownMessage as exc:
        # Retrying cannot fix a message we do not understand: report it and let it go.
        logger.error("unknown message on the batch queue", extra={"reason": str(exc), "message_id": record.message_id})
        return [Outcome(None, "ignored")]
    once = _object_once(rt)
    if once.config is not None and lambda_context is not None:
        # An INPROGRESS record then expires with this invocation: a retry after a crash or a timeout runs,
        # instead of being refused as "in progress" until the record's 7-day expiry (and dead-lettered).
        once.config.register_lambda_context(lambda_context)
    outcomes = []
    for item in items:
        if isinstance(item, JobMessage):
            if item.kind == "batch":
                outcomes.append(_run_batch(rt, item.tenant_id, item.job_id, deadline))
            else:
                fields = {"kind": item.kind, "tenant_id": item.tenant_id, "job_id": item.job_id}
                logger.error("unknown job kind on the batch queue", extra=fields)
                outcomes.append(Outcome(None, "ignored"))
        else:
            outcomes.append(once.call(obj=_object_dict(item), deadline=deadline))
    return outcomes


def _budget_s(context: Any) -> float:
    remaining_ms = context.get_remaining_time_in_millis() if context is not None else 900_000
    return max(1.0, remaining_ms / 1000 - SAFETY_MARGIN_S)


def _object_dict(obj: ObjectCreated) -> dict[str, Any]:
    return {"bucket": obj.bucket, "key": obj.key, "version": obj.version, "size": obj.size}


@cache
def _object_once(rt: Runtime) -> _Once:
    """``_object`` wrapped in Powertools Idempotency keyed by bucket, key and version (built once per runtime)."""
    if not rt.settings.idempotency_table:
        return _Once(_object)
    import boto3
    from aws_lambda_powertools.utilities.idempotency import (
        DynamoDBPersistenceLayer,
        IdempotencyConfig,
        idempotent_function,
    )

    client = boto3.client("dynamodb", region_name=rt.settings.region, endpoint_url=rt.settings.endpoint_url)
    persistence = DynamoDBPersistenceLayer(table_name=rt.settings.idempotency_table, boto3_client=client)
    config = IdempotencyConfig(event_key_jmespath='["bucket", "key", "version"]', expires_after_seconds=7 * 86_400)
    wrapped = idempotent_function(
        data_keyword_argument="obj", persistence_store=persistence, config=config, output_serializer=None
    )(_object_as_dict)

    def call(*, obj: dict[str, Any], deadline: float) -> Outcome:
        return Outcome(**wrapped(obj=obj, deadline=deadline))

    return _Once(call, config)


def _object_as_dict(*, obj: dict[str, Any], deadline: float) -> dict[str, Any]:
    outcome = _object(obj=obj, deadline=deadline)
    return {"batch_id": outcome.batch_id, "status": outcome.status}


def _object(*, obj: dict[str, Any], deadline: float) -> Outcome:
    rt = runtime()
    created = ObjectCreated(obj["bucket"], obj["key"], obj.get("version"), int(obj.get("size") or 0))
    if rt.settings.bucket and created.bucket != rt.settings.bucket:
        logger.warning("object in another bucket ignored", extra={"bucket": created.bucket})
        return Outcome(None, "ignored")
    parts = created.batch_input()
    if parts is None:
        logger.warning("object outside batch-input/<tenant>/<name>.jsonl ignored", extra={"key": created.key})
        return Outcome(None, "ignored")
    tenant_id, name = parts
    if rt.gateway.store.get_tenant(tenant_id) is None:
        logger.error("batch input for a tenant that does not exist", extra={"tenant_id": tenant_id})
        return Outcome(None, "unknown_tenant")
    job = object_batch(
        rt.gateway.store,
        rt.gateway.require_blobs(),
        tenant_id=tenant_id,
        input_key=created.key,
        output_key=f"batch-output/{tenant_id}/{name}.jsonl",
        error_key=f"batch-output/{tenant_id}/{name}.errors.jsonl",
        now=rt.gateway.clock.now(),
        source="bucket",
        version=created.version,
    )
    if job is None:
        logger.warning("batch input object is gone", extra={"key": created.key})
        return Outcome(None, "missing")
    return _run_batch(rt, tenant_id, job.id, deadline)


def _run_batch(rt: Runtime, tenant_id: str, batch_id: str, deadline: float) -> Outcome:
    """Run until done or until the deadline; then the batch records its place and a continuation is queued."""
    runner = rt.gateway.batch_runner()
    budget = max(0.5, deadline - time.monotonic())
    try:
        job = rt.loop.run_until_complete(asyncio.wait_for(runner.run(tenant_id, batch_id), timeout=budget))
    except TimeoutError:
        rt.gateway.jobs.submit("batch", tenant_id, batch_id)
        logger.info("batch continues in another invocation", extra={"tenant_id": tenant_id, "batch_id": batch_id})
        return Outcome(batch_id, "continued")
    if job is not None:
        return Outcome(batch_id, job.status)
    if load_batch(rt.gateway.store, tenant_id, batch_id) is None:
        fields = {"tenant_id": tenant_id, "batch_id": batch_id}
        logger.error("a job message for a batch that does not exist", extra=fields)
        return Outcome(batch_id, "missing")
    # Another runner holds the lease. Letting the message go would strand the batch if that runner
    # died (a continuation that arrived before the lease lapsed): the record fails and comes back.
    raise BatchBusy(f"batch {batch_id} is being run elsewhere; retried after the visibility timeout")
