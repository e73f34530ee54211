"""The local bucket trigger: JSONL files dropped in ``<data_dir>/batch-input/<tenant>/`` run as batches."""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import logging
import os
from pathlib import Path

from adapters.local.blobs import FileBlobStore
from core.app import Gateway
from core.batch.objects import object_batch
from core.batch.records import BATCHES, BatchJob, iter_documents
from core.batch.runner import BatchRunner
from core.observability import LOGGER_NAME, log_event

INPUT_DIR = "batch-input"
OUTPUT_DIR = "batch-output"
LOCK_FILE = "batch-trigger.lock"


def output_keys(tenant_id: str, name: str) -> tuple[str, str]:
    """Where the results of ``batch-input/<tenant>/<name>`` go: ``<stem>.jsonl`` and ``<stem>.errors.jsonl``."""
    stem = name.removesuffix(".jsonl")
    return f"{OUTPUT_DIR}/{tenant_id}/{stem}.jsonl", f"{OUTPUT_DIR}/{tenant_id}/{stem}.errors.jsonl"


class BatchTrigger:
    """Polls the input folders as a bucket notification would fire, in one process only.

    A file counts once it is complete: the same size and modification time on two polls in a row. It then
    runs as the batch of its version (size, mtime and SHA-256): a re-drop of the same version, or a restart
    mid-batch, resumes that batch instead of charging its lines again. The folder names the tenant, which
    must exist. Only the process holding the lock file polls; the others keep trying, so one takes over
    when the holder exits. The holder also restarts API batches whose runner died (their lease expired).
    """

    def __init__(
        self,
        gateway: Gateway,
        data_dir: Path,
        *,
        poll_s: float = 2.0,
        recover_every_s: float = 60.0,
        runner: BatchRunner | None = None,
    ) -> None:
        self._gateway = gateway
        self._data_dir = Path(data_dir)
        self._blobs = FileBlobStore(self._data_dir)
        self._runner = runner or gateway.batch_runner(self._blobs)
        self._poll_s = poll_s
        self._recover_every_s = recover_every_s
        self._last_recovery: float | None = None
        self._sizes: dict[Path, tuple[int, int]] = {}  # (size, mtime) at the last poll
        self._finished: dict[Path, tuple[int, int]] = {}  # versions whose batch has ended
        self._running: dict[str, asyncio.Task[None]] = {}
        self._active: dict[Path, tuple[int, int]] = {}  # versions whose batch runs now
        self._lock_fd: int | None = None
        self._unknown_tenants: set[str] = set()
        self._log = logging.getLogger(LOGGER_NAME)

    @property
    def running(self) -> list[str]:
        return sorted(self._running)

    def try_lock(self) -> bool:
        """Hold the poller lock (an ``fcntl`` lock on a file in the data directory), if free."""
        if self._lock_fd is not None:
            return True
        self._data_dir.mkdir(parents=True, exist_ok=True)
        fd = os.open(self._data_dir / LOCK_FILE, os.O_RDWR | os.O_CREAT, 0o600)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        self._lock_fd = fd
        return True

    def start(self) -> asyncio.Task[None]:
        """Poll in the background of the running loop until ``stop``."""
        self._task = asyncio.get_running_loop().create_task(self.run_forever())
        return self._task

    async def run_forever(self) -> None:
        while True:
            if self.try_lock():
                try:
                    await self.poll_once()
                except Exception:  # a bad poll (a file vanished, a store hiccup) must not end the trigger
                    self._log.exception("batch trigger poll failed")
            await asyncio.sleep(self._poll_s)

    async def stop(self) -> None:
        """Stop polling and the batches it runs (each records where it stopped), then release the lock."""
        tasks = [t for t in (getattr(self, "_task", None), *self._running.values()) if t is not None]
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
        if self._lock_fd is not None:
            os.close(self._lock_fd)
            self._lock_fd = None

    async def poll_once(self) -> list[str]:
        """One look at the input folders; returns the ids of the batches it started."""
        now = self._gateway.clock.now()
        if self._last_recovery is None or now - self._last_recovery >= self._recover_every_s:
            self._last_recovery = now
            for tenant_id, batch_id in await asyncio.to_thread(self._abandoned, now):
                log_event(self._log, "resuming an abandoned batch", tenant_id=tenant_id, batch_id=batch_id)
                self._gateway.jobs.submit("batch", tenant_id, batch_id)
        started: list[str] = []
        present: dict[Path, tuple[int, int]] = {}
        root = self._data_dir / INPUT_DIR
        for tenant_dir in sorted(root.iterdir()) if root.is_dir() else ():
            if not tenant_dir.is_dir() or not self._tenant_exists(tenant_dir.name):
                continue
            for path in sorted(tenant_dir.glob("*.jsonl")):
                with contextlib.suppress(FileNotFoundError):
                    stat = path.stat()
                    present[path] = (stat.st_size, stat.st_mtime_ns)
                    if self._sizes.get(path) == present[path] and self._finished.get(path) != present[path]:
                        new_id = await self._consider(tenant_dir.name, path, present[path])
                        if new_id is not None:
                            started.append(new_id)
        self._sizes = present
        self._finished = {p: v for p, v in self._finished.items() if p in present}
        return started

    def _tenant_exists(self, tenant_id: str) -> bool:
        if self._gateway.store.get_tenant(tenant_id) is not None:
            self._unknown_tenants.discard(tenant_id)
            return True
        if tenant_id not in self._unknown_tenants:
            self._unknown_tenants.add(tenant_id)
            log_event(self._log, "batch input folder names no tenant", logging.WARNING, tenant_id=tenant_id)
        return False

    async def _consider(self, tenant_id: str, path: Path, seen: tuple[int, int]) -> str | None:
        """Start the batch of this file's version unless it has ended or is running already."""
        if self._active.get(path) == seen:
            return None
        key = f"{INPUT_DIR}/{tenant_id}/{path.name}"
        output_key, error_key = output_keys(tenant_id, path.name)
        try:
            job = await asyncio.to_thread(
                object_batch,
                self._gateway.store,
                self._blobs,
                tenant_id=tenant_id,
                input_key=key,
                output_key=output_key,
                error_key=error_key,
                now=self._gateway.clock.now(),
                source="bucket",
            )
        except ValueError:  # a name no blob key can have
            log_event(self._log, "batch input file skipped", logging.WARNING, path=str(path))
            self._finished[path] = seen
            return None
        if job is None or job.id in self._running:
            return None
        if job.terminal:
            self._finished[path] = seen
            return None
        self._active[path] = seen
        self._running[job.id] = asyncio.get_running_loop().create_task(self._run(job, path, seen))
        return job.id

    async def _run(self, job: BatchJob, path: Path, seen: tuple[int, int]) -> None:
        try:
            done = await self._runner.run(job.tenant_id, job.id)
            if done is not None and done.terminal:
                self._finished[path] = seen
                log_event(self._log, "batch finished", batch_id=job.id, status=done.status, path=str(path))
        except Exception:
            self._log.exception("batch from the input folder failed", extra={"fields": {"batch_id": job.id}})
        finally:
            self._running.pop(job.id, None)
            self._active.pop(path, None)

    def _abandoned(self, now: float) -> list[tuple[str, str]]:
        """(tenant, batch id) of the API batches that have not ended and that no runner holds (it died, or
        never started). Batches are kept per tenant, so each tenant's are read in turn."""
        found = []
        for tenant in self._gateway.store.list_tenants():
            for doc in iter_documents(self._gateway.store, BATCHES, tenant.id):
                job = BatchJob.from_document(doc)
                if job.source == "api" and not job.terminal and job.lease_until <= now:
                    found.append((job.tenant_id, job.id))
        return found


def start_batch_trigger(gateway: Gateway, data_dir: Path, poll_s: float = 2.0) -> BatchTrigger:
    """Create the trigger and start polling in the running loop (call it from the ASGI lifespan startup)."""
    trigger = BatchTrigger(gateway, data_dir, poll_s=poll_s)
    trigger.start()
    return trigger
