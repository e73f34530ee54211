"""BatchRunner: one batch streamed from its input object through bounded workers into stored line results."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import logging
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any, Protocol

from core.batch import output
from core.batch.execute import Dispatch, LineExecutor, LineJob, Pacing, Sleep
from core.batch.lines import MAX_LINE_BYTES, is_blank
from core.batch.records import (
    BatchJob,
    DoneLines,
    line_doc_id,
    lines_collection,
    load_batch,
    update_batch,
)
from core.clock import new_id
from core.domain import Document, Principal
from core.observability import LOGGER_NAME, NullMetrics
from core.offload import Offload
from core.ports import BlobStore, Clock, DocumentStore, Metrics, UsageStore

Progress = Callable[[BatchJob], None]


class BatchStore(DocumentStore, UsageStore, Protocol):
    """What a batch needs from the store: its documents, and usage records to tell what was charged."""


@dataclass(frozen=True, slots=True)
class RunnerSettings:
    concurrency: int = 16
    queue_size: int = 0  # lines read ahead of the workers; 0 means twice the concurrency
    flush_interval_s: float = 1.0  # the status record is written this often, or every ``flush_every`` lines
    flush_every: int = 500
    lease_s: float = 60.0  # a runner that stops renewing its lease for this long is presumed dead
    max_rate_waits: int = 30  # consecutive rate-limit waits one line may sit out before it fails
    page: int = 500


@dataclass
class _Run:
    job: BatchJob
    principal: Principal
    queue: asyncio.Queue[tuple[int, bytes, Document | None] | None]
    progress: Progress | None = None
    stop: bool = False
    lease_lost: bool = False
    completed: int = 0
    failed: int = 0
    deferred: int = 0
    since_flush: int = 0
    pacing: Pacing = field(default_factory=Pacing)
    flushing: asyncio.Lock = field(default_factory=asyncio.Lock)  # one status write at a time

    def counts(self) -> tuple[int, int, int]:
        """Completed, failed, deferred: read on the loop, so a status write off it gets one consistent set."""
        return self.completed, self.failed, self.deferred


class _Busy(Exception):
    """Another runner holds the batch's lease, or it is already finished."""


class _LeaseLost(Exception):
    """Another runner took the batch over (this one stalled past its lease)."""


class BatchRunner:
    """Runs (or resumes) a batch: reader -> bounded queue -> N workers -> one stored result per line.

    Each line is metered under ``<batch id>:<line>`` and its result stored (create-only) as soon as it is
    done, so running the batch again skips finished lines and charges none of them twice. The status
    record is written every ``flush_interval_s`` or ``flush_every`` lines; that is also when a cancel is seen.
    Every store call goes through ``offload`` (``core.offload``: the store blocks, the event loop must not);
    without one, they run inline.
    """

    def __init__(
        self,
        store: BatchStore,
        blobs: BlobStore,
        dispatch: Dispatch,
        *,
        clock: Clock,
        metrics: Metrics | None = None,
        settings: RunnerSettings | None = None,
        sleep: Sleep = asyncio.sleep,
        owner: str | None = None,
        offload: Offload | None = None,
    ) -> None:
        self._store = store
        self._offload = offload or Offload(0)
        self._blobs = blobs
        self._dispatch = dispatch
        self._clock = clock
        self._metrics = metrics or NullMetrics()
        self._settings = settings or RunnerSettings()
        self._execute = LineExecutor(
            store,
            dispatch,
            clock,
            self._metrics,
            sleep=sleep,
            max_rate_waits=self._settings.max_rate_waits,
            offload=self._offload,
        )
        self.owner = owner or new_id("runner", 8)
        self._log = logging.getLogger(LOGGER_NAME)

    # -- the batch -------------------------------------------------------------------------------------

    async def run(self, tenant_id: str, batch_id: str, progress: Progress | None = None) -> BatchJob | None:
        """Run the tenant's batch to its end; None when it does not exist or another runner is on it."""
        job = await self._offload.call(load_batch, self._store, tenant_id, batch_id)
        if job is None or job.terminal:
            return job
        try:
            job = await self._offload.call(update_batch, self._store, job, self._claim)
        except _Busy:
            fresh = await self._offload.call(load_batch, self._store, tenant_id, batch_id)
            return fresh if fresh is not None and fresh.terminal else None
        size = self._settings.queue_size or 2 * self._settings.concurrency
        run = _Run(job, job.principal(), asyncio.Queue(size), progress)
        try:
            return await self._run(run)
        except _LeaseLost:
            return None
        except asyncio.CancelledError:
            counts = run.counts()
            with contextlib.suppress(Exception):
                await self._update(run, lambda j: self._checkpoint(run, j, counts, release=True))
            raise
        except Exception as exc:  # an I/O or store failure ends the batch, visibly, rather than leaving it stuck
            self._log.exception("batch failed", extra={"fields": {"batch_id": batch_id}})
            return await self._fail(run, "batch_error", f"the batch stopped: {exc}")

    def _claim(self, job: BatchJob) -> None:
        now = self._clock.now()
        if job.terminal or job.leased_by_other(self.owner, now):
            raise _Busy
        job.lease_owner, job.lease_until = self.owner, now + self._settings.lease_s
        job.attempts += 1

    async def _run(self, run: _Run) -> BatchJob:
        if run.job.status == "cancelling":
            return await self._finalize(run)
        version = await self._offload.call(self._blobs.object_version, run.job.input_key)
        if version is None:
            return await self._fail(run, "input_missing", "the input file does not exist (was it deleted?)")
        if run.job.input_version is not None and version != run.job.input_version:
            return await self._fail(run, "input_changed", "the input file changed after the batch was created")
        total, run.completed, run.failed = await self._count(run.job)
        now = self._clock.now()
        counts = run.counts()

        def start(job: BatchJob) -> None:
            self._checkpoint(run, job, counts)
            job.total, job.input_version = total, version
            if job.status == "validating":
                job.status, job.in_progress_at = "in_progress", now

        await self._update(run, start)
        if not run.stop:
            await self._process(run)
        if run.lease_lost:
            raise _LeaseLost
        return await self._finalize(run)

    async def _count(self, job: BatchJob) -> tuple[int, int, int]:
        """Lines in the input, and how many of them an earlier run finished (ok, failed)."""
        done = DoneLines(self._store, job.id, job.tenant_id, self._settings.page, offload=self._offload)
        total = ok = failed = line_no = 0
        async for raw in self._blobs.read_lines(job.input_key, MAX_LINE_BYTES):
            line_no += 1
            if is_blank(raw):
                continue
            total += 1
            doc = await done.get(line_no)
            if doc is not None and not doc.body.get("retry"):
                ok, failed = (ok + 1, failed) if doc.body.get("ok") else (ok, failed + 1)
        return total, ok, failed

    async def _process(self, run: _Run) -> None:
        monitor = asyncio.create_task(self._monitor(run))
        try:
            async with asyncio.TaskGroup() as group:
                group.create_task(self._read(run))
                for _ in range(self._settings.concurrency):
                    group.create_task(self._work(run))
        finally:
            monitor.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await monitor

    async def _monitor(self, run: _Run) -> None:
        while True:
            await asyncio.sleep(self._settings.flush_interval_s)
            await self._flush(run)

    async def _read(self, run: _Run) -> None:
        """Queue the lines that have no final result yet; the bounded queue paces the reading."""
        done = DoneLines(self._store, run.job.id, run.job.tenant_id, self._settings.page, offload=self._offload)
        line_no = 0
        async for raw in self._blobs.read_lines(run.job.input_key, MAX_LINE_BYTES):
            line_no += 1
            if run.stop:
                break
            if is_blank(raw):
                continue
            previous = await done.get(line_no)
            if previous is None or previous.body.get("retry"):
                await run.queue.put((line_no, raw, previous))
        for _ in range(self._settings.concurrency):
            await run.queue.put(None)

    async def _work(self, run: _Run) -> None:
        while (item := await run.queue.get()) is not None:
            if run.stop:
                continue  # cancelled: lines not yet started are left for no one
            line_no, raw, previous = item
            line = LineJob(run.job.id, run.job.endpoint, run.principal, run.job.attempts, line_no, raw)
            result = await self._execute.run(line, run.pacing)
            await self._store_result(run, line_no, result, previous)
            if result["ok"]:
                run.completed += 1
            else:
                run.failed += 1
                run.deferred += bool(result.get("retry"))
            self._metrics.incr("batch_lines_total", status="ok" if result["ok"] else "error")
            run.since_flush += 1
            if run.since_flush >= self._settings.flush_every:
                await self._flush(run)

    async def _store_result(self, run: _Run, line_no: int, result: dict[str, Any], previous: Document | None) -> None:
        doc = Document(line_doc_id(line_no), run.job.tenant_id, result)
        collection = lines_collection(run.job.id)
        put = self._store.put_document
        if previous is None:
            written = await self._offload.call(functools.partial(put, if_absent=True), collection, doc)
        else:
            written = await self._offload.call(functools.partial(put, if_version=previous.version), collection, doc)
        if written is None:
            self._log.warning("line result already stored", extra={"fields": {"batch_id": run.job.id, "line": line_no}})

    # -- the status record -------------------------------------------------------------------------------

    async def _update(self, run: _Run, change: Callable[[BatchJob], None]) -> BatchJob:
        """``update_batch`` of the run's status record (off the loop: ``change`` runs on the store's thread)."""
        run.job = await self._offload.call(update_batch, self._store, run.job, change)
        return run.job

    def _checkpoint(self, run: _Run, job: BatchJob, counts: tuple[int, int, int], *, release: bool = False) -> None:
        """``counts`` (``run.counts()``) and lease into ``job`` (a fresh copy); notices a cancel and a lost lease."""
        if job.lease_owner != self.owner:
            run.stop = run.lease_lost = True
            raise _LeaseLost
        job.completed, job.failed, job.deferred = counts
        job.lease_owner = None if release else self.owner
        job.lease_until = 0.0 if release else self._clock.now() + self._settings.lease_s
        if job.status == "cancelling":
            run.stop = True

    async def _flush(self, run: _Run) -> None:
        run.since_flush = 0
        async with run.flushing:  # the monitor and a worker may both flush: one write after the other
            counts = run.counts()
            try:
                await self._update(run, lambda j: self._checkpoint(run, j, counts))
            except _LeaseLost:
                return
        if run.progress is not None:
            run.progress(run.job)

    async def _finalize(self, run: _Run) -> BatchJob:
        """Write the output and error files from the stored results; then completed (or cancelled)."""
        now = self._clock.now()
        counts = run.counts()

        def finalizing(job: BatchJob) -> None:
            self._checkpoint(run, job, counts)
            if job.status != "cancelling":
                job.status, job.finalizing_at = "finalizing", now

        job = await self._update(run, finalizing)
        out_id, err_id = await output.finish(
            self._store, self._blobs, job, self._clock.now(), self._settings.page, offload=self._offload
        )
        done_at = self._clock.now()

        def finished(j: BatchJob) -> None:
            self._checkpoint(run, j, counts, release=True)
            j.output_file_id, j.error_file_id = out_id, err_id
            if j.status == "cancelling":
                j.status, j.cancelled_at = "cancelled", done_at
            else:
                j.status, j.completed_at = "completed", done_at

        await self._update(run, finished)
        if run.progress is not None:
            run.progress(run.job)
        return run.job

    async def _fail(self, run: _Run, code: str, message: str) -> BatchJob:
        now = self._clock.now()

        def failed(job: BatchJob) -> None:
            job.status, job.failed_at = "failed", now
            job.errors = [{"code": code, "message": message, "line": None, "param": None}]
            job.lease_owner, job.lease_until = None, 0.0

        return await self._update(run, failed)
