"""LocalAws: moto with the stack's resources, the model server, the api containers, the batch consumer and
the HTTP front, started in that order and stopped in the reverse one."""

from __future__ import annotations

import contextlib
import logging
import os
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from functions.aws.local.consumer import QueueConsumer
from functions.aws.local.containers import Containers
from functions.aws.local.front import ApiGatewayServer
from functions.aws.local.stack import REGION, TABLE, AtomicMotoServer, LocalStack, client, deploy, use_fake_credentials
from functions.local.model_server import ModelServer, register

log = logging.getLogger("textnlp.local.aws")

API_TIMEOUT_S = 30.0  # the api function's timeout in the stack (API Gateway's integration timeout too)


@dataclass(frozen=True)
class Options:
    host: str
    port: int
    data_dir: Path
    admin_key: str
    workers: int = 4
    models: bool = True  # start the local model server and register its models
    batch: bool = True  # run the batch function on the queue's messages


class LocalAws:
    def __init__(self, options: Options) -> None:
        self.options = options
        self.stack: LocalStack | None = None
        self.model_ids: list[str] = []
        self._moto: AtomicMotoServer | None = None
        self._models: ModelServer | None = None
        self._containers: Containers | None = None
        self._consumer: QueueConsumer | None = None
        self._server: ApiGatewayServer | None = None

    @property
    def server(self) -> ApiGatewayServer:
        if self._server is None:
            raise RuntimeError("start() first")
        return self._server

    def start(self) -> LocalAws:
        """Everything up and bound; ``serve_forever`` then answers. On a failure, what started is stopped."""
        try:
            self._start()
        except BaseException:
            self.stop()
            raise
        return self

    def _start(self) -> None:
        opts = self.options
        self._server = ApiGatewayServer((opts.host, opts.port))
        use_fake_credentials()
        self._moto = AtomicMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
        self._moto.start()
        self.stack = stack = deploy(self._moto.url, opts.admin_key)
        os.environ.update(stack.env())
        if opts.models:
            self._models = ModelServer(opts.data_dir / "aws" / "models").start()
            self.model_ids = self._register(stack, self._models.specs())
        from functions.aws import api
        from functions.aws.bootstrap import AwsSettings, build_runtime

        self._containers = Containers(
            "textnlp-api", opts.workers, lambda: build_runtime(AwsSettings.from_env()), api.handle, API_TIMEOUT_S
        )
        if opts.batch:
            sqs = client("sqs", stack.endpoint_url)
            self._consumer = QueueConsumer(sqs, stack.queue_url, stack.queue_arn).start()
        self._server.containers = self._containers

    def _register(self, stack: LocalStack, specs: list[Any]) -> list[str]:
        from adapters.aws.dynamodb import DynamoDBStore
        from adapters.aws.dynamodb_table import connect

        store = DynamoDBStore(TABLE, connect(stack.endpoint_url, REGION))
        try:
            return register(store, specs)
        finally:
            store.close()

    def serve_forever(self) -> None:
        self.server.serve_forever(poll_interval=0.2)

    def shutdown(self) -> None:
        """Make ``serve_forever`` return (from another thread, or a signal handler's thread)."""
        if self._server is not None:
            self._server.shutdown()

    def stop(self) -> None:
        if self._server is not None:
            self._server.server_close()
            self._server = None
        if self._consumer is not None:
            self._consumer.stop()
            self._consumer = None
        if self._containers is not None:
            self._containers.close()
            self._containers = None
        from functions.aws import bootstrap

        if bootstrap.runtime.cache_info().currsize:  # the batch function's container
            with contextlib.suppress(Exception):
                bootstrap.runtime().close()
            bootstrap.runtime.cache_clear()
        if self._models is not None:
            self._models.stop()
            self._models = None
        if self._moto is not None:
            self._moto.stop()
            self._moto = None
