"""The Event Grid subscription's stand-in: new blobs under ``batch-input/`` become BlobCreated events for ``batch``.

Polls the data container on Azurite every ``interval_s`` (Azurite sends no events) for blobs under
``batch-input/`` (batch files and job messages alike, as the subscription's subject filter delivers them); each
(name, etag) is delivered once, as the Event Grid schema's JSON decoded by the v2 model's own converter, to the
real ``batch`` function, awaited on the host's event loop (the worker's). A delivery whose invocation fails (a
batch another runner holds) is delivered again after ``retry_s``, as Event Grid's retry policy does. One delivery
at a time; the listing runs on a thread.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import logging
import uuid
from collections.abc import Awaitable, Callable
from datetime import UTC, datetime
from typing import Any

from azure.functions import meta
from azure.functions.eventgrid import EventGridEventInConverter

from functions.azure.blob_events import BLOB_CREATED, INPUT_PREFIX

log = logging.getLogger("textnlp.local.azure")


def blob_created(account_url: str, container: str, name: str, etag: str, size: int) -> dict[str, Any]:
    """The Event Grid schema's BlobCreated event of a blob (what the subscription posts, one array element)."""
    return {
        "id": str(uuid.uuid4()),
        "topic": "/subscriptions/00000000-0000-0000-0000-000000000000/resourceGroups/textnlp-local/providers/"
        "Microsoft.Storage/storageAccounts/devstoreaccount1",
        "subject": f"/blobServices/default/containers/{container}/blobs/{name}",
        "eventType": BLOB_CREATED,
        "eventTime": datetime.now(UTC).isoformat(),
        "data": {
            "api": "PutBlob",
            "eTag": etag.strip('"'),
            "contentType": "application/octet-stream",
            "contentLength": size,
            "blobType": "BlockBlob",
            "url": f"{account_url.rstrip('/')}/{container}/{name}",
        },
        "dataVersion": "",
        "metadataVersion": "1",
    }


class BlobTrigger:
    def __init__(
        self,
        container: Any,  # an azure.storage.blob ContainerClient on the data container
        batch: Callable[[Any], Awaitable[None]],  # the registered batch function's user function
        *,
        interval_s: float = 0.5,
        retry_s: float = 5.0,
    ) -> None:
        self._container = container
        self._batch = batch
        self._interval_s = interval_s
        self._retry_s = retry_s
        self._seen: set[tuple[str, str]] = set()
        self._retry_at: dict[tuple[str, str], float] = {}
        self._task: asyncio.Task[None] | None = None

    def start(self) -> BlobTrigger:
        """On the running loop (the host's lifespan)."""
        self._task = asyncio.get_running_loop().create_task(self._run(), name="textnlp-blob-trigger")
        return self

    async def stop(self) -> None:
        task, self._task = self._task, None
        if task is not None:
            task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await task

    async def _run(self) -> None:
        while True:
            try:
                await self.poll_once()
            except asyncio.CancelledError:
                raise
            except Exception:  # Azurite going away at shutdown, or a bug: logged, polling goes on
                log.exception("the blob trigger failed")
            await asyncio.sleep(self._interval_s)

    def _list(self) -> list[tuple[str, str, int]]:
        return [
            (b.name, str(b.etag), int(b.size or 0)) for b in self._container.list_blobs(name_starts_with=INPUT_PREFIX)
        ]

    async def poll_once(self) -> int:
        """Deliver the events of the blobs not yet delivered; how many were delivered."""
        delivered = 0
        loop = asyncio.get_running_loop()
        for name, etag, size in await asyncio.to_thread(self._list):
            seen = (name, etag)
            if seen in self._seen or self._retry_at.get(seen, 0.0) > loop.time():
                continue
            event = blob_created(
                self._container.url.rsplit("/", 1)[0], self._container.container_name, name, etag, size
            )
            decoded = EventGridEventInConverter.decode(
                meta.Datum(type="json", value=json.dumps(event)), trigger_metadata={}
            )
            delivered += 1
            try:
                await self._batch(decoded)
            except Exception as exc:
                log.warning("batch function failed for %s (%s); delivered again in %.0f s", name, exc, self._retry_s)
                self._retry_at[seen] = loop.time() + self._retry_s
                continue
            self._retry_at.pop(seen, None)
            self._seen.add(seen)
        return delivered
