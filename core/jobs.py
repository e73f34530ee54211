"""InProcessJobQueue: the JobQueue port as background tasks of the running event loop (local, tests)."""

from __future__ import annotations

import asyncio
import logging
from collections.abc import Awaitable, Callable

from core.observability import LOGGER_NAME

JobHandler = Callable[[str, str, str], Awaitable[object]]  # (kind, tenant_id, job_id)


class InProcessJobQueue:
    """``submit`` starts the job as a task of the current loop at once.

    The queue keeps a reference to every running task (the loop holds only weak ones, so an unreferenced
    task can be garbage-collected mid-run) and logs a job that fails. A job dies with its process; running
    it again resumes it.
    """

    def __init__(self, handler: JobHandler | None = None) -> None:
        self._handler = handler
        self._tasks: set[asyncio.Task[None]] = set()
        self._log = logging.getLogger(LOGGER_NAME)

    def bind(self, handler: JobHandler) -> None:
        """Set the consumer (the gateway's ``run_job``) if none was given."""
        if self._handler is None:
            self._handler = handler

    @property
    def running(self) -> int:
        return len(self._tasks)

    def submit(self, kind: str, tenant_id: str, job_id: str) -> None:
        if self._handler is None:
            raise RuntimeError("InProcessJobQueue has no handler")
        task = asyncio.get_running_loop().create_task(self._run(self._handler, kind, tenant_id, job_id))
        self._tasks.add(task)
        task.add_done_callback(self._tasks.discard)

    async def _run(self, handler: JobHandler, kind: str, tenant_id: str, job_id: str) -> None:
        try:
            await handler(kind, tenant_id, job_id)
        except Exception:
            fields = {"kind": kind, "tenant_id": tenant_id, "job_id": job_id}
            self._log.exception("job failed", extra={"fields": fields})

    async def join(self) -> None:
        """Wait until every submitted job (and any job those submit) has finished."""
        while self._tasks:
            await asyncio.gather(*list(self._tasks), return_exceptions=True)

    async def cancel_all(self) -> None:
        """Stop every job (at shutdown); each records where it stopped so it can resume."""
        tasks = list(self._tasks)
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)
