"""The emulated Azure deployment the function-app tests call: the v2 model's own function objects, one worker loop.

What ``terraform/azure`` deploys, emulated: a Cosmos DB database of its own (``adapters.azure.cosmos``) on the
session's Cosmos DB server, a data container of its own on the session's Azurite, the admin key
imported at the first invocation. The functions are the ones the Python worker indexes (``app.get_functions()``,
built ONCE per process), called as the worker calls them: on one event loop (``Worker``), with requests built
from the samples of ``events/azure`` (``http_*.json``, ``eventgrid_*.json``) and Event Grid events decoded by the
v2 model's own converter. Models are ``openai`` routes to the zero-latency fake OpenAI server.
"""

from __future__ import annotations

import asyncio
import copy
import json
import uuid
from collections.abc import Coroutine, Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any, TypeVar

import azure.functions as func
import pytest
from azure.functions import meta
from azure.functions.eventgrid import EventGridEventInConverter

from functions.azure import bootstrap
from functions.azure.function_app import app

EVENTS = Path(__file__).resolve().parents[2] / "events" / "azure"
ADMIN_KEY = "AzureAdminKeyFromKeyVault0123456789abcdefXYZ"
MODEL = "fake-chat"
FUNCTIONS = {f.get_function_name(): f for f in app.get_functions()}  # ONCE per process
T = TypeVar("T")


@dataclass(frozen=True)
class Context:
    """What the worker passes as ``context`` (azure.functions.Context's fields the function reads)."""

    invocation_id: str
    function_name: str = "api"
    function_directory: str = ""


class Worker:
    """The Python worker's one event loop: every invocation runs on it."""

    def __init__(self) -> None:
        self._runner = asyncio.Runner()

    def run(self, coro: Coroutine[Any, Any, T]) -> T:
        return self._runner.run(coro)

    def close(self) -> None:
        self._runner.close()


def http_request(name: str, key: str | None = None, **change: Any) -> func.HttpRequest:
    """The sample ``events/azure/http_<name>.json`` with ``change`` (path, body, params, headers, method)."""
    sample = json.loads((EVENTS / f"http_{name}.json").read_text())
    headers = {**sample["headers"], **change.get("headers", {})}
    headers.pop("authorization", None)
    if key is not None:
        headers["authorization"] = f"Bearer {key}"
    body = change.get("body", sample["body"])
    data = body if isinstance(body, bytes) else (body or "").encode() if isinstance(body, str) else json.dumps(body)
    url = sample["url"]
    if "path" in change:
        url = "https://textnlp-func.azurewebsites.net" + change["path"]
    params = change.get("params", {} if "path" in change else sample["params"])
    return func.HttpRequest(
        change.get("method", sample["method"]),
        url,
        headers=headers,
        params=params,
        route_params={"path": url.split(".net/", 1)[1].split("?")[0]},
        body=data if isinstance(data, bytes) else data.encode(),
    )


def event_grid(name: str, **data: Any) -> dict[str, Any]:
    """The sample ``events/azure/eventgrid_<name>.json``, its data updated with ``data`` (None removes a field);
    ``blob=`` (container, name) sets subject and url."""
    event: dict[str, Any] = copy.deepcopy(json.loads((EVENTS / f"eventgrid_{name}.json").read_text()))
    where = data.pop("blob", None)
    if where is not None:
        container, blob = where
        event["subject"] = f"/blobServices/default/containers/{container}/blobs/{blob}"
        data.setdefault("url", f"https://textnlpdata.blob.core.windows.net/{container}/{blob}")
    if isinstance(event.get("data"), dict):
        event["data"].update(data)
        event["data"] = {k: v for k, v in event["data"].items() if v is not None}
    event["id"] = str(uuid.uuid4())
    return event


def decoded(event: dict[str, Any]) -> Any:
    """What the worker hands the function: the v2 model's converter on the delivered JSON."""
    return EventGridEventInConverter.decode(meta.Datum(type="json", value=json.dumps(event)), trigger_metadata={})


@dataclass
class World:
    container: str
    blobs: Any  # the data container's ContainerClient
    fake_url: str
    worker: Worker

    def call(self, name: str, key: str | None = None, **change: Any) -> func.HttpResponse:
        req = http_request(name, key, **change)
        fn = FUNCTIONS["api"].get_user_function()
        answer: func.HttpResponse = self.worker.run(fn(req, Context(f"inv-{uuid.uuid4().hex[:12]}")))
        return answer

    def deliver(self, event: dict[str, Any]) -> None:
        """The batch function on the event (an exception: the invocation failed, Event Grid retries)."""
        self.worker.run(FUNCTIONS["batch"].get_user_function()(decoded(event)))

    def admin(self, method: str, path: str, body: Any) -> Any:
        answer = self.call("generate_ok", ADMIN_KEY, method=method, path=path, body=body)
        assert answer.status_code in (200, 201), answer.get_body()
        return json.loads(answer.get_body())

    def tenant(self, name: str) -> tuple[str, str]:
        created = self.call("admin_tenants_create", ADMIN_KEY, body={"name": name})
        assert created.status_code == 201, created.get_body()
        tenant_id: str = json.loads(created.get_body())["id"]
        body = {"name": "test", "scopes": ["generate", "embed", "batch"]}
        key: str = self.admin("POST", f"/_admin/tenants/{tenant_id}/keys", body)["key"]
        return tenant_id, key

    def model(self, model_id: str, upstream: str = "m", **fields: Any) -> None:
        backend = {"type": "openai", "base_url": self.fake_url, "model": upstream}
        spec = {"id": model_id, "kind": "generation", "backend": backend, "context_length": 4096}
        self.admin("POST", "/_admin/models", {"max_output_tokens": 64, "max_retries": 0, **spec, **fields})

    def put(self, name: str, data: bytes) -> str:
        """Upload a blob; its etag (without quotes, as Event Grid's eTag)."""
        self.blobs.upload_blob(name, data, overwrite=True)
        return str(self.blobs.get_blob_client(name).get_blob_properties().etag).strip('"')

    def created(self, name: str, etag: str, size: int, sample: str = "blob_created_batch_input") -> dict[str, Any]:
        return event_grid(sample, blob=(self.container, name), eTag=etag, contentLength=size)

    def get(self, name: str) -> bytes | None:
        from azure.core.exceptions import ResourceNotFoundError

        try:
            return bytes(self.blobs.download_blob(name).readall())
        except ResourceNotFoundError:
            return None


def _cosmos_env() -> dict[str, str]:
    """A database of its own on the session's Cosmos DB server (``tests/azure/cosmos_server.py``)."""
    from tests.azure.cosmos_server import KEY, cosmos_server, new_database

    return {
        "TEXTNLP_COSMOS_ENDPOINT": cosmos_server().endpoint,
        "TEXTNLP_COSMOS_KEY": KEY,
        "TEXTNLP_COSMOS_DATABASE": new_database(),
    }


@contextmanager
def azure_world(**extra_env: str) -> Iterator[World]:
    """The emulated deployment, its environment set and its runtime dropped again afterwards."""
    from bench.fake_openai_server import start_in_thread
    from tests.azure.azurite import connection_string, new_container

    blobs = new_container()
    fake_url, stop_fake = start_in_thread()
    env = {
        "TEXTNLP_STORAGE_CONNECTION_STRING": connection_string(),
        "TEXTNLP_BLOB_CONTAINER": blobs.container_name,
        "TEXTNLP_ADMIN_KEY": ADMIN_KEY,
        "TEXTNLP_TIMEOUT_S": "60",
        "TEXTNLP_LOG_LEVEL": "WARNING",
        **_cosmos_env(),
        **extra_env,
    }
    worker = Worker()
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            bootstrap.reset()
            yield World(blobs.container_name, blobs, fake_url, worker)
            bootstrap.reset()
    finally:
        worker.close()
        stop_fake()
