"""Fixtures for the AWS adapters: an in-process moto server, reset per test, and boto3 clients on it."""

from __future__ import annotations

import os
import threading
from collections.abc import Iterator
from typing import TYPE_CHECKING, Any

import pytest

from tests.aws.runtime_server import RuntimeServer
from tests.aws.support import REGION, client_kwargs, post_json

if TYPE_CHECKING:
    from mypy_boto3_s3.client import S3Client
    from mypy_boto3_sagemaker_runtime.client import SageMakerRuntimeClient
    from mypy_boto3_secretsmanager.client import SecretsManagerClient


@pytest.fixture(scope="package", autouse=True)
def aws_env() -> Iterator[None]:
    """Fake credentials and a region, so nothing can reach a real account."""
    saved = {k: os.environ.get(k) for k in _ENV}
    os.environ.update(_ENV)
    for name in ("AWS_PROFILE", "AWS_SESSION_TOKEN", "AWS_SECURITY_TOKEN"):
        saved.setdefault(name, os.environ.pop(name, None))
    yield
    for name, value in saved.items():
        if value is None:
            os.environ.pop(name, None)
        else:
            os.environ[name] = value


_ENV = {
    "AWS_ACCESS_KEY_ID": "testing",
    "AWS_SECRET_ACCESS_KEY": "testing",
    "AWS_DEFAULT_REGION": REGION,
    "AWS_CONFIG_FILE": os.devnull,
    "AWS_SHARED_CREDENTIALS_FILE": os.devnull,
    "AWS_EC2_METADATA_DISABLED": "true",
}


@pytest.fixture(scope="package")
def moto_url(aws_env: None) -> Iterator[str]:
    from moto.server import ThreadedMotoServer

    server = ThreadedMotoServer(ip_address="127.0.0.1", port=0, verbose=False)
    server.start()
    host, port = server.get_host_and_port()
    yield f"http://{host}:{port}"
    server.stop()


class OneAtATime:
    """A WSGI app that lets one request in at a time.

    DynamoDB applies each call atomically; moto's backend takes no lock, so two conditional updates
    racing on moto's threaded server can both pass their check. Concurrency tests would then test moto.
    Every service is serialised, so a long-polling SQS receive would hold the server: poll with
    ``WaitTimeSeconds=0`` through this one.
    """

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        with self._lock:
            return list(self._app(environ, start_response))


@pytest.fixture(scope="package")
def atomic_moto_url(moto_url: str) -> Iterator[str]:
    """A second moto server (same in-process state as ``moto_url``) whose calls are atomic, like DynamoDB's."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = OneAtATime(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield f"http://127.0.0.1:{server.server_address[1]}"
    server.shutdown()
    thread.join()


@pytest.fixture
def moto(moto_url: str) -> str:
    """The moto server's URL, with every service's state reset before the test."""
    post_json(f"{moto_url}/moto-api/reset", None)
    return moto_url


@pytest.fixture
def s3(moto: str) -> S3Client:
    import boto3

    return boto3.client("s3", **client_kwargs(moto))


@pytest.fixture
def secretsmanager(moto: str) -> SecretsManagerClient:
    import boto3

    return boto3.client("secretsmanager", **client_kwargs(moto))


@pytest.fixture
def sagemaker_runtime(moto: str) -> SageMakerRuntimeClient:
    import boto3

    return boto3.client("sagemaker-runtime", **client_kwargs(moto))


@pytest.fixture(scope="package")
def runtime_server() -> Iterator[RuntimeServer]:
    server = RuntimeServer().start()
    yield server
    server.stop()


@pytest.fixture
def runtime(runtime_server: RuntimeServer) -> RuntimeServer:
    """A local SageMaker runtime (what moto lacks: response streams, errors), emptied before the test."""
    runtime_server.reset()
    return runtime_server


@pytest.fixture
def local_client(runtime: RuntimeServer) -> SageMakerRuntimeClient:
    """A sagemaker-runtime client on the local server, with short timeouts for the timeout tests."""
    import boto3

    return boto3.client("sagemaker-runtime", **client_kwargs(runtime.url, read_timeout=0.75, connect_timeout=1))
