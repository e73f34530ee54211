"""LocalGcp: the emulators, the model server, the api function's HTTP server and the bucket trigger, started in
that order and stopped in the reverse one."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from functions.gcp.local.emulators import FirestoreEmulator, StorageEmulator
from functions.gcp.local.trigger import BucketTrigger

log = logging.getLogger("textnlp.local.gcp")

PROJECT = "textnlp-local"
BUCKET = "textnlp-local"
MAIN = str(Path(__file__).resolve().parents[1] / "main.py")
API_TIMEOUT_S = 300.0  # the api function's timeout (Cloud Run functions allow up to 60 minutes)


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    data_dir: Path
    admin_key: str
    threads: int = 16
    models: bool = True  # start the local model server and register its models
    batch: bool = True  # deliver the bucket's batch objects to the batch function


def _not_ready(environ: Any, start_response: Any) -> list[bytes]:  # pragma: no cover - never reached
    start_response("503 Service Unavailable", [("content-type", "text/plain")])
    return [b"starting"]


class LocalGcp:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.model_ids: list[str] = []
        self._server: Any = None
        self._firestore: FirestoreEmulator | None = None
        self._storage: StorageEmulator | None = None
        self._models: Any = None
        self._trigger: BucketTrigger | None = None

    def start(self) -> LocalGcp:
        """Everything up and bound; ``serve_forever`` then answers. On a failure, what started is stopped."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        from functions_framework import create_app
        from werkzeug.serving import make_server

        opts = self.options
        self._server = make_server(opts.host, opts.port, _not_ready, threaded=True)  # the port first: fail fast
        self._firestore = FirestoreEmulator(opts.data_dir / "gcp" / "firestore-emulator.log").start()
        self._storage = StorageEmulator().start()
        storage = self._storage_client()
        storage.create_bucket(BUCKET)
        os.environ.update(
            {
                "FIRESTORE_EMULATOR_HOST": self._firestore.host,
                "STORAGE_EMULATOR_HOST": self._storage.url,
                "TEXTNLP_GCP_PROJECT": PROJECT,
                "TEXTNLP_BUCKET": BUCKET,
                "TEXTNLP_ADMIN_KEY": opts.admin_key,
                "TEXTNLP_TIMEOUT_S": str(API_TIMEOUT_S),
            }
        )
        from functions.gcp import bootstrap

        bootstrap.reset()
        rt = bootstrap.runtime()  # built now: the admin key imported, the models registered below
        if opts.models:
            from functions.local.model_server import ModelServer, register

            self._models = ModelServer(opts.data_dir / "gcp" / "models").start()
            self.model_ids = register(rt.gateway.store, self._models.specs())
        self._server.app = create_app("api", MAIN)  # type: ignore[no-untyped-call]
        if opts.batch:
            batch = create_app("batch", MAIN, "cloudevent").test_client()  # type: ignore[no-untyped-call]

            def deliver(headers: dict[str, str], body: bytes) -> int:
                return int(batch.post("/", headers=headers, data=body).status_code)

            self._trigger = BucketTrigger(storage, BUCKET, deliver).start()

    def _storage_client(self) -> Any:
        from google.auth.credentials import AnonymousCredentials
        from google.cloud import storage  # type: ignore[attr-defined,unused-ignore]

        assert self._storage is not None  # nosec B101 - started just before
        return storage.Client(
            project=PROJECT,
            credentials=AnonymousCredentials(),  # type: ignore[no-untyped-call]
            client_options={"api_endpoint": self._storage.url},
        )

    def serve_forever(self) -> None:
        self._server.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Make ``serve_forever`` return (from another thread, or a signal handler's thread)."""
        if self._server is not None:
            self._server.shutdown()

    def stop(self) -> None:
        if self._server is not None:
            self._server.server_close()
            self._server = None
        if self._trigger is not None:
            self._trigger.stop()
            self._trigger = None
        from functions.gcp import bootstrap

        with contextlib.suppress(Exception):
            bootstrap.reset()
        if self._models is not None:
            self._models.stop()
            self._models = None
        if self._storage is not None:
            self._storage.stop()
            self._storage = None
        if self._firestore is not None:
            self._firestore.stop()
            self._firestore = None
