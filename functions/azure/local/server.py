"""LocalAzure: the emulators, the model server, the Functions host's stand-in and the blob trigger, started in that
order and stopped in the reverse one."""

from __future__ import annotations

import asyncio
import contextlib
import logging
import os
import socket
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from functions.azure.local.emulators import Azurite, CosmosServer

log = logging.getLogger("textnlp.local.azure")

CONTAINER = "textnlp-local"
DATABASE = "textnlp"
API_TIMEOUT_S = 600.0  # host.json's functionTimeout


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    data_dir: Path
    admin_key: str
    models: bool = True  # start the local model server and register its models
    batch: bool = True  # deliver the container's batch-input/ blobs to the batch function


class LocalAzure:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.model_ids: list[str] = []
        self.azurite: Azurite | None = None
        self.cosmos: CosmosServer | None = None
        self._socket: socket.socket | None = None
        self._server: Any = None
        self._models: Any = None
        self._trigger: Any = None

    def start(self) -> LocalAzure:
        """Everything up and the port bound; ``serve_forever`` then answers. On a failure, what started is stopped."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        opts = self.options
        self._socket = _bind(opts.host, opts.port)  # the port first: fail fast
        logs = opts.data_dir / "azure"
        self.azurite = Azurite(logs / "azurite.log").start()
        self.cosmos = CosmosServer(logs / "cosmosdb-server.log").start()
        os.environ.update(
            {
                "TEXTNLP_COSMOS_ENDPOINT": self.cosmos.endpoint,
                "TEXTNLP_COSMOS_KEY": self.cosmos.key,
                "TEXTNLP_COSMOS_DATABASE": DATABASE,
                "TEXTNLP_STORAGE_CONNECTION_STRING": self.azurite.connection_string,
                "TEXTNLP_BLOB_CONTAINER": CONTAINER,
                "TEXTNLP_ADMIN_KEY": opts.admin_key,
                "TEXTNLP_TIMEOUT_S": str(API_TIMEOUT_S),
            }
        )
        from functions.azure import bootstrap

        bootstrap.reset()
        rt = bootstrap.runtime()  # built now: the database, container and admin key there before the first request
        if opts.models:
            from functions.local.model_server import ModelServer, register

            self._models = ModelServer(opts.data_dir / "azure" / "models").start()
            self.model_ids = register(rt.gateway.store, self._models.specs())
        self._server = self._uvicorn()

    def _uvicorn(self) -> Any:
        import uvicorn

        from functions.azure.function_app import app
        from functions.azure.local.host import FunctionsHost

        functions = {f.get_function_name(): f for f in app.get_functions()}  # what the worker indexes
        batch = functions["batch"].get_user_function()

        async def on_start() -> None:
            if self.options.batch:
                from functions.azure.local.trigger import BlobTrigger

                self._trigger = BlobTrigger(self._container(), batch).start()

        async def on_stop() -> None:
            if self._trigger is not None:
                await self._trigger.stop()
                self._trigger = None

        host = FunctionsHost(functions["api"].get_user_function(), on_start, on_stop)
        config = uvicorn.Config(host, lifespan="on", log_level="warning", access_log=False, timeout_graceful_shutdown=5)
        return uvicorn.Server(config)

    def _container(self) -> Any:
        from azure.storage.blob import ContainerClient

        assert self.azurite is not None  # nosec B101 - started before
        return ContainerClient.from_connection_string(self.azurite.connection_string, CONTAINER)

    def serve_forever(self) -> None:
        """Until SIGINT or SIGTERM (uvicorn's handlers), or ``shutdown``."""
        if self._server is None or self._socket is None:
            raise RuntimeError("LocalAzure.serve_forever before start")
        asyncio.run(self._server.serve(sockets=[self._socket]))

    def shutdown(self) -> None:
        if self._server is not None:
            self._server.should_exit = True

    def stop(self) -> None:
        from functions.azure import bootstrap

        with contextlib.suppress(Exception):
            bootstrap.reset()  # the budget slices given back while the Cosmos DB server is still there
        if self._models is not None:
            self._models.stop()
            self._models = None
        for emulator in (self.cosmos, self.azurite):
            if emulator is not None:
                emulator.stop()
        self.cosmos = self.azurite = None
        if self._socket is not None:
            self._socket.close()
            self._socket = None
        self._server = None


def _bind(host: str, port: int) -> socket.socket:
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family, socket.SOCK_STREAM)
    sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
    try:
        sock.bind((host, port))
    except OSError:
        sock.close()
        raise
    sock.listen(2048)
    return sock
