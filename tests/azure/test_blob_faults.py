"""AzureBlobStore when Blob Storage fails: the client's retry policy first, then the core errors (503
``store_unavailable``), on Azurite behind a transport that answers some requests with a fault of its own; how
``open_blob_store`` builds its client; the error translation itself."""

from __future__ import annotations

import asyncio
import io
import subprocess
import sys
import threading
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import requests
from azure.core.credentials import AzureNamedKeyCredential
from azure.core.exceptions import (
    HttpResponseError,
    ResourceExistsError,
    ResourceModifiedError,
    ResourceNotFoundError,
)
from azure.core.pipeline.transport import RequestsTransport
from azure.storage.blob import ExponentialRetry
from requests.adapters import HTTPAdapter
from urllib3 import HTTPResponse

from adapters.azure.blob import AzureBlobStore, default_retry, open_blob_store
from adapters.azure.blob_errors import BlobChanged, translated
from core.errors import ServiceUnavailable, StoreThrottled
from tests.azure.azurite import ACCOUNT, KEY, Azurite, azurite  # noqa: F401 - the fixture

pytestmark = pytest.mark.azure

Fault = tuple[int, str] | Exception  # a status and an x-ms-error-code, or an exception to raise


class FaultyAdapter(HTTPAdapter):
    """Sends to Azurite, except that the next requests get ``faults`` first, one each, in order (under the
    client's transport: the client's retry policy and error handling see them as the service's answers)."""

    def __init__(self) -> None:
        super().__init__()
        self.faults: list[Fault] = []
        self.sent = 0
        self._lock = threading.Lock()

    def send(self, request: requests.PreparedRequest, *args: Any, **kwargs: Any) -> requests.Response:
        with self._lock:
            self.sent += 1
            fault = self.faults.pop(0) if self.faults else None
        if fault is None:
            return super().send(request, *args, **kwargs)
        if isinstance(fault, Exception):
            raise fault
        status, code = fault
        raw = HTTPResponse(
            body=io.BytesIO(b""),
            headers={"x-ms-error-code": code, "Content-Length": "0"},
            status=status,
            preload_content=False,
        )
        return self.build_response(request, raw)


def no_wait(retries: int = 2) -> ExponentialRetry:
    return ExponentialRetry(initial_backoff=0, increment_base=0, retry_total=retries, random_jitter_range=0)


@pytest.fixture
def faulty(azurite: Azurite) -> Iterator[tuple[AzureBlobStore, FaultyAdapter]]:  # noqa: F811 - the fixture
    adapter = FaultyAdapter()
    session = requests.Session()
    session.mount("http://", adapter)
    store = open_blob_store(
        connection_string=azurite.connection_string,
        container="faults",
        create=True,
        transport=RequestsTransport(session=session, session_owner=False),
        retry_policy=no_wait(),
    )
    adapter.sent = 0
    yield store, adapter
    session.close()


def test_transient_faults_are_retried_by_the_client(faulty: tuple[AzureBlobStore, FaultyAdapter]) -> None:
    store, adapter = faulty
    adapter.faults = [(503, "ServerBusy"), (500, "OperationTimedOut")]
    store.write_object("k", b"x\n")
    assert adapter.sent == 3
    adapter.sent = 0
    adapter.faults = [requests.ConnectionError("connection refused")]
    assert store.read_object("k") == b"x\n"
    assert adapter.sent == 2


@pytest.mark.parametrize(
    ("fault", "error"),
    [
        ((503, "ServerBusy"), StoreThrottled),
        ((500, "InternalError"), ServiceUnavailable),
        ((500, "OperationTimedOut"), ServiceUnavailable),
        (requests.ConnectionError("connection refused"), ServiceUnavailable),
    ],
)
def test_faults_past_the_retries_are_503s(
    faulty: tuple[AzureBlobStore, FaultyAdapter], fault: Fault, error: type[ServiceUnavailable]
) -> None:
    store, adapter = faulty
    store.write_object("k", b"x\n")
    calls = [
        lambda: store.write_object("k", b"y\n"),
        lambda: store.write_lines("k", [b"y"]),
        lambda: store.read_object("k"),
        lambda: asyncio.run(_first_line(store, "k")),
        lambda: store.object_version("k"),
        lambda: store.delete_object("k"),
        lambda: list(store.list_keys()),
    ]
    for call in calls:
        adapter.sent = 0
        adapter.faults = [fault] * 3
        with pytest.raises(error) as raised:
            call()
        assert adapter.sent == 3  # the first try and the policy's two retries
        assert (raised.value.status, raised.value.code) == (503, "store_unavailable")
        assert raised.value.headers == {"retry-after": "1"}
        assert type(raised.value) is error
    assert store.read_object("k") == b"x\n"  # nothing was written by the failed calls


async def _first_line(store: AzureBlobStore, key: str) -> bytes:
    return await anext(store.read_lines(key))


def test_a_fault_in_the_middle_of_a_read(faulty: tuple[AzureBlobStore, FaultyAdapter]) -> None:
    store, adapter = faulty
    store = AzureBlobStore(store.container_client, read_chunk=10)
    store.write_object("in", b"line\n" * 10)

    async def read() -> list[bytes]:
        got: list[bytes] = []
        async for line in store.read_lines("in"):
            got.append(line)
            adapter.faults = [(503, "ServerBusy")] * 3
        return got

    with pytest.raises(StoreThrottled):
        asyncio.run(read())


def test_open_blob_store_with_a_credential_and_the_default_retry(azurite: Azurite) -> None:  # noqa: F811
    store = open_blob_store(
        azurite.blob_endpoint, credential=AzureNamedKeyCredential(ACCOUNT, KEY), container="bykey", create=True
    )
    again = open_blob_store(azurite.blob_endpoint, credential=AzureNamedKeyCredential(ACCOUNT, KEY), container="bykey")
    store.write_object("k", b"v")
    assert again.read_object("k") == b"v"
    retry = store.container_client._config.retry_policy
    assert isinstance(retry, ExponentialRetry)
    assert (retry.initial_backoff, retry.increment_base, retry.total_retries) == (1, 2, 4)
    assert default_retry().total_retries == 4
    with pytest.raises(ValueError, match="account URL or a connection string"):
        open_blob_store(container="x")


def test_azure_identity_is_imported_only_to_build_a_credential() -> None:
    script = """
import sys
from azure.core.credentials import AzureNamedKeyCredential
import adapters.azure.blob as blob
assert "azure.identity" not in sys.modules, "imported at module load"
key = AzureNamedKeyCredential("acct", "a2V5")
blob.open_blob_store("http://127.0.0.1:9/acct", credential=key, container="c")
assert "azure.identity" not in sys.modules, "imported with a credential given"
store = blob.open_blob_store("https://127.0.0.1:9/acct", container="c")
assert "azure.identity" in sys.modules
assert type(store.container_client.credential).__name__ == "DefaultAzureCredential"
"""
    root = Path(__file__).resolve().parents[2]
    done = subprocess.run(
        [sys.executable, "-c", script], capture_output=True, text=True, timeout=60, check=False, cwd=root
    )
    assert done.returncode == 0, done.stderr


def _http_error(cls: type[HttpResponseError], status: int, code: str) -> HttpResponseError:
    error = cls(message=code)
    error.status_code = status
    error.error_code = code  # type: ignore[attr-defined]  # set by the storage client on its errors
    return error


@pytest.mark.parametrize(
    ("error", "create_only", "expected"),
    [
        (_http_error(ResourceNotFoundError, 404, "BlobNotFound"), False, FileNotFoundError),
        (_http_error(ResourceModifiedError, 412, "ConditionNotMet"), False, BlobChanged),
        (_http_error(ResourceModifiedError, 412, "ConditionNotMet"), True, FileExistsError),
        (_http_error(ResourceExistsError, 409, "BlobAlreadyExists"), True, FileExistsError),
        (_http_error(HttpResponseError, 429, "TooManyRequests"), False, StoreThrottled),
        (_http_error(HttpResponseError, 502, "BadGateway"), False, ServiceUnavailable),
        (_http_error(HttpResponseError, 408, "RequestTimeout"), False, ServiceUnavailable),
    ],
)
def test_translation(error: HttpResponseError, create_only: bool, expected: type[Exception]) -> None:
    assert type(translated(error, "k", create_only=create_only)) is expected


@pytest.mark.parametrize(
    ("status", "code"),
    [
        (404, "ContainerNotFound"),
        (403, "AuthorizationPermissionMismatch"),
        (409, "ContainerBeingDeleted"),
        (501, "NotImplemented"),
    ],
)
def test_deployment_errors_are_raised_as_they_are(status: int, code: str) -> None:
    error = _http_error(ResourceNotFoundError if status == 404 else HttpResponseError, status, code)
    assert translated(error, "k") is error
