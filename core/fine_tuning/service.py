"""FineTuningService: create a job (files checked, tuner started), refresh it from its tuner, cancel it."""

from __future__ import annotations

import asyncio
import logging
import secrets
from dataclasses import replace
from typing import Any

from core.batch.records import FileRecord
from core.cache import TTLCache
from core.domain import ModelSpec, Principal
from core.errors import APIError, Conflict, ServiceUnavailable
from core.fine_tuning.job import FineTuneJob, FineTuningUnavailable, TunerStatus, new_job_id
from core.fine_tuning.models import fine_tuned_model_id, fine_tuned_spec
from core.fine_tuning.records import Event, advance, create_job, update_job
from core.fine_tuning.states import STATES, is_terminal, path
from core.fine_tuning.training_files import MIN_TRAINING_EXAMPLES, MIN_VALIDATION_EXAMPLES, check_training_file
from core.observability import LOGGER_NAME, log_event
from core.offload import Offload
from core.ports import BlobStore, Clock, DocumentStore, FineTuner
from core.registry import ModelRegistry

NOT_CONFIGURED = "fine-tuning is not configured on this deployment (no fine-tuning backend)"


class _NotCancellable(Exception):
    def __init__(self, status: str) -> None:
        self.status = status


class FineTuningService:
    """The jobs' life: records in the document store, training on the ``FineTuner``, models in the registry.

    Status is pulled: reading a job that is not finished asks its tuner, at most once per
    ``refresh_interval_s`` per job and process, and moves the record along the state machine.
    """

    def __init__(
        self,
        store: DocumentStore,
        registry: ModelRegistry,
        clock: Clock,
        tuner: FineTuner | None,
        *,
        refresh_interval_s: float = 5.0,
        start_grace_s: float = 600.0,
        offload: Offload | None = None,
    ) -> None:
        self.store = store
        self.registry = registry
        self.clock = clock
        self.tuner = tuner
        self.refresh_interval_s = refresh_interval_s
        self.start_grace_s = start_grace_s
        self._polled: TTLCache[str, bool] = TTLCache(4096, refresh_interval_s, clock)
        self.log = logging.getLogger(LOGGER_NAME)
        # Store writes run off the event loop (core.offload); the tuner's control-plane calls in asyncio's threads.
        self._offload = offload or Offload(0)

    def require_tuner(self) -> FineTuner:
        if self.tuner is None:
            raise FineTuningUnavailable(NOT_CONFIGURED)
        return self.tuner

    async def create(
        self,
        principal: Principal,
        base: ModelSpec,
        training: FileRecord,
        validation: FileRecord | None,
        blobs: BlobStore,
        *,
        hyperparameters: dict[str, Any],
        suffix: str | None,
        seed: int | None,
        metadata: dict[str, str] | None,
    ) -> FineTuneJob:
        """Check everything, record the job, start it; errors before the record is written are plain 4xx."""
        tuner = self.require_tuner()
        await check_training_file(blobs, training, "training_file", MIN_TRAINING_EXAMPLES)
        if validation is not None:
            await check_training_file(blobs, validation, "validation_file", MIN_VALIDATION_EXAMPLES)
        now = self.clock.now()
        job = FineTuneJob(
            id=new_job_id(now),
            tenant_id=principal.tenant_id,
            key_id=principal.key_id,
            model=base.id,
            training_file=training.id,
            training_key=training.blob_key,
            created_at=now,
            seed=seed if seed is not None else secrets.randbelow(2**31),
            hyperparameters=hyperparameters,
            base_model_ref=str(base.metadata.get("hf_model_id") or base.id),
            validation_file=validation.id if validation else None,
            validation_key=validation.blob_key if validation else None,
            suffix=suffix,
            metadata=metadata,
            backend=tuner.name,
        )
        await asyncio.to_thread(tuner.check, job)  # a tuner that cannot train this says so before any record exists
        events = [Event(f"Validating training file: {training.id}")]
        if validation is not None:
            events.append(Event(f"Validating validation file: {validation.id}"))
        if await self._offload.call(create_job, self.store, job, events, now) is None:
            raise Conflict("a fine-tuning job with this id exists; retry")
        job = await self._offload.call(update_job, self.store, job, lambda j: advance(j, "queued", now), now)
        return await self._start(tuner, job)

    async def _start(self, tuner: FineTuner, job: FineTuneJob) -> FineTuneJob:
        try:
            external_id = await asyncio.to_thread(tuner.start, job, job.training_key, job.validation_key)
        except APIError as exc:
            message = f"the training job did not start: {exc}"
            return await self._offload.call(self._fail, job, exc.code or "training_start_failed", message)
        except Exception:
            self.log.exception("fine-tuning start failed", extra={"fields": {"job_id": job.id}})
            message = "the training job did not start (internal error)"
            return await self._offload.call(self._fail, job, "training_start_failed", message)

        def started(j: FineTuneJob) -> list[Event]:
            j.external_id = external_id
            return [Event(f"Training job submitted to {tuner.name}")]

        job = await self._offload.call(update_job, self.store, job, started, self.clock.now())
        if job.status == "cancelled":  # cancelled while it was starting: stop what was just started
            try:
                await asyncio.to_thread(tuner.cancel, job)
            except APIError as exc:
                self.log.warning("fine-tuning stop failed", extra={"fields": {"job_id": job.id, "error": str(exc)}})
        log_event(self.log, "fine_tuning_started", job_id=job.id, tenant_id=job.tenant_id, backend=tuner.name)
        return job

    def _fail(self, job: FineTuneJob, code: str, message: str, param: str | None = None) -> FineTuneJob:
        now = self.clock.now()

        def failed(j: FineTuneJob) -> list[Event]:
            if j.terminal:
                return []
            j.error = {"code": code, "message": message[:1000], "param": param}
            return advance(j, "failed", now)

        return update_job(self.store, job, failed, now)

    async def refresh(self, job: FineTuneJob) -> FineTuneJob:
        """The job brought up to date with its tuner (throttled); a tuner that cannot answer leaves it as is."""
        tuner = self.tuner
        if job.terminal or tuner is None or job.backend != tuner.name:
            return job
        now = self.clock.now()
        if job.external_id is None:
            if now - job.created_at > self.start_grace_s:  # the process that was starting it died
                message = "the training job was never started; create it again"
                return await self._offload.call(self._fail, job, "training_start_lost", message)
            return job
        polled, _ = self._polled.lookup(job.id)
        if polled:
            return job
        self._polled.put(job.id, True, self.refresh_interval_s)
        try:
            status = await asyncio.to_thread(tuner.status, job)
        except APIError as exc:
            self.log.warning("fine-tuning status unavailable", extra={"fields": {"job_id": job.id, "error": str(exc)}})
            return job
        return await self._offload.call(self.apply, job, status)

    def apply(self, job: FineTuneJob, status: TunerStatus) -> FineTuneJob:
        """Record what the tuner reported: new events, the state it reached, on success the registered model."""
        target = status.state
        if target not in STATES or (target != job.status and not path(job.status, target)):
            target = job.status  # an unknown or backwards state (a late answer): keep the events only
        if target == job.status and len(status.events) <= job.backend_events:
            return job
        now = self.clock.now()
        spec: ModelSpec | None = None
        if target == "succeeded":
            if status.fine_tuned_model_route is None:
                target, status = "failed", replace(status, error="the backend reported success but no model to serve")
            else:
                spec = self._register(job, status, now)

        def change(j: FineTuneJob) -> list[Event]:
            if j.terminal:
                return []
            events = [Event(message) for message in status.events[j.backend_events :]]
            j.backend_events = max(j.backend_events, len(status.events))
            if target == j.status or not path(j.status, target):
                return events
            if target == "failed":
                reason = status.error or "the training job failed"
                j.error = {"code": "training_failed", "message": reason, "param": None}
            steps = advance(j, target, now)  # the states passed on the way, then the backend's news, then the end
            final = [steps.pop()] if is_terminal(target) else []
            if spec is not None:
                j.fine_tuned_model, j.trained_tokens = spec.id, status.trained_tokens
                final.insert(0, Event(f"New fine-tuned model created: {spec.id}"))
            return steps + events + final

        job = update_job(self.store, job, change, now)
        if spec is not None and job.fine_tuned_model != spec.id:  # cancelled meanwhile: no model after all
            self.registry.delete(spec.id)
        return job

    def _register(self, job: FineTuneJob, status: TunerStatus, now: float) -> ModelSpec:
        model_id = fine_tuned_model_id(job)
        existing = self.registry.find(model_id)
        if existing is not None and existing.metadata.get("fine_tuning_job") != job.id:
            model_id = fine_tuned_model_id(job, full=True)  # another job's model has this short name
        spec = fine_tuned_spec(model_id, job, self.registry.find(job.model), status, now)
        self.registry.put(spec)
        return spec

    async def cancel(self, job: FineTuneJob) -> FineTuneJob:
        """Stop the training (tuner first, so a failure leaves the job as it was), then record ``cancelled``."""
        if job.status == "cancelled":
            return job
        if job.terminal:
            raise _not_cancellable(job.status)
        if job.external_id is not None:
            if self.tuner is None or self.tuner.name != job.backend:
                raise ServiceUnavailable(f"the backend running this job ({job.backend}) is not configured here")
            await asyncio.to_thread(self.tuner.cancel, job)
        now = self.clock.now()

        def cancelled(j: FineTuneJob) -> list[Event]:
            if j.status == "cancelled":
                return []
            if j.terminal:
                raise _NotCancellable(j.status)
            return advance(j, "cancelled", now)

        try:
            return await self._offload.call(update_job, self.store, job, cancelled, now)
        except _NotCancellable as exc:
            raise _not_cancellable(exc.status) from None


def _not_cancellable(status: str) -> Conflict:
    return Conflict(f"a {status} fine-tuning job cannot be cancelled", code="fine_tuning_job_not_cancellable")
