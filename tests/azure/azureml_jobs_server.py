"""A small Azure Resource Manager server for Azure ML (``Microsoft.MachineLearningServices``, api-version
2024-04-01) on 127.0.0.1: the subset the fine-tuning adapter calls, in ARM's JSON shapes.

Under one workspace: the workspace (its ``location``), ``environments/{n}/versions/{v}`` (PUT, GET), ``jobs/{n}``
(PUT, GET; a Command job needs ``command``, ``environmentId`` of an existing environment, ``computeId`` of a known
compute; ``jobs/{n}/cancel``: 400 once the job ended), ``models/{n}/versions/{v}`` (PUT, GET, DELETE),
``onlineEndpoints/{e}`` (PUT, GET, PATCH of ``tags``, DELETE) and ``.../deployments/{d}`` (PUT, GET, DELETE; needs a
provisioned endpoint and an existing model version). Creates, updates and deletes of endpoints and deployments are
long-running: 201/202 with ``Azure-AsyncOperation`` (``{"status", "error"}``) and ``Location`` headers; the
resource reads ``provisioningState: Creating`` until its operation is done, which takes ``lro_ticks`` reads of the
operation or of the resource (0: done at once).

Every request needs ``Authorization: Bearer <token>`` (else 401 ``InvalidAuthenticationToken``) and the
api-version (else 400). With ``auto``, each read of a job moves it one status on (Queued, Starting, Running,
Finalizing, Completed; CancelRequested to Canceled). ``faults`` answers an action with an error instead
(``"createJob": [(429, "TooManyRequests", "...", {"retry-after": "0"})]``); ``deploy_errors`` makes the next
deployments fail; ``calls`` lists the actions asked.
"""

from __future__ import annotations

import atexit
import functools
import itertools
import json
import re
import threading
import time
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from types import SimpleNamespace
from typing import Any
from urllib.parse import parse_qs, urlsplit

API_VERSION = "2024-04-01"
TOKEN = "test-arm-token-7f3a"
SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE, LOCATION = "0000-sub", "rg-textnlp", "ws-textnlp", "westeurope"
PROVIDER = "/providers/Microsoft.MachineLearningServices"
WS = f"/subscriptions/{SUBSCRIPTION}/resourceGroups/{RESOURCE_GROUP}{PROVIDER}/workspaces/{WORKSPACE}"
PROGRESS = ["Queued", "Starting", "Running", "Finalizing", "Completed"]
ENDED = frozenset({"Completed", "Failed", "Canceled"})
_N = r"([A-Za-z0-9][A-Za-z0-9._-]*)"
_ROUTES = [
    ("GET", "", "getWorkspace"),
    ("GET", rf"/environments/{_N}/versions/{_N}", "getEnvironment"),
    ("PUT", rf"/environments/{_N}/versions/{_N}", "putEnvironment"),
    ("GET", rf"/jobs/{_N}", "getJob"),
    ("PUT", rf"/jobs/{_N}", "createJob"),
    ("POST", rf"/jobs/{_N}/cancel", "cancelJob"),
    ("GET", rf"/models/{_N}/versions/{_N}", "getModel"),
    ("PUT", rf"/models/{_N}/versions/{_N}", "putModel"),
    ("DELETE", rf"/models/{_N}/versions/{_N}", "deleteModel"),
    ("GET", rf"/onlineEndpoints/{_N}", "getEndpoint"),
    ("PUT", rf"/onlineEndpoints/{_N}", "putEndpoint"),
    ("PATCH", rf"/onlineEndpoints/{_N}", "patchEndpoint"),
    ("DELETE", rf"/onlineEndpoints/{_N}", "deleteEndpoint"),
    ("GET", rf"/onlineEndpoints/{_N}/deployments/{_N}", "getDeployment"),
    ("PUT", rf"/onlineEndpoints/{_N}/deployments/{_N}", "putDeployment"),
    ("DELETE", rf"/onlineEndpoints/{_N}/deployments/{_N}", "deleteDeployment"),
]
_OPS = re.compile(
    rf"^/subscriptions/{SUBSCRIPTION}{PROVIDER}/locations/{LOCATION}/(mfeOperationsStatus|mfeOperationResults)/(\d+)$"
)


class ArmFault(Exception):
    def __init__(self, status: int, code: str, message: str, headers: dict[str, str] | None = None) -> None:
        super().__init__(message)
        self.status, self.code, self.message, self.headers = status, code, message, headers or {}


@dataclass
class Operation:
    id: int
    resource: str  # the key of the resource in ``resources``
    apply: Callable[[], None]  # run when the operation succeeds
    ticks_left: int
    status: str = "InProgress"
    error: dict[str, Any] | None = None


@dataclass
class AzureMLJobsServer:
    """The state and the API's rules; ``handle(method, path, query, body, headers)`` -> (status, JSON, headers)."""

    auto: bool = False
    lro_ticks: int = 0
    token: str = TOKEN
    computes: set[str] = field(default_factory=lambda: {"gpu-cluster"})
    environments: dict[str, dict[str, Any]] = field(default_factory=dict)
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    resources: dict[str, dict[str, Any]] = field(default_factory=dict)  # endpoints and deployments by path
    operations: dict[int, Operation] = field(default_factory=dict)
    faults: dict[str, list[tuple[int, str, str, dict[str, str]]]] = field(default_factory=dict)
    deploy_errors: list[str] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    hooks: dict[str, Callable[[], None]] = field(default_factory=dict)  # run after an action is answered
    base_url: str = ""
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        try:
            if headers.get("authorization") != f"Bearer {self.token}":
                raise ArmFault(401, "InvalidAuthenticationToken", "The access token is invalid or has expired.")
            if query.get("api-version") != [API_VERSION]:
                raise ArmFault(
                    400, "InvalidApiVersionParameter", f"The api-version {query.get('api-version')} is invalid."
                )
            with self._lock:
                found = _OPS.match(path)
                if found is not None and method == "GET":
                    self.calls.append("operation")
                    action, answer = "operation", self._operation(found.group(1), int(found.group(2)))
                else:
                    action, args = self._route(method, path)
                    self.calls.append(action)
                    if self.faults.get(action):
                        raise ArmFault(*self.faults[action].pop(0))
                    answer = getattr(self, f"_{action}")(*args, body=body if isinstance(body, dict) else {})
            if (hook := self.hooks.pop(action, None)) is not None:
                hook()
            return answer if isinstance(answer, tuple) else (200, answer, {})
        except ArmFault as exc:
            return exc.status, {"error": {"code": exc.code, "message": exc.message}}, exc.headers

    def _route(self, method: str, path: str) -> tuple[str, tuple[str, ...]]:
        if path.startswith(WS):
            rest = path[len(WS) :]
            for verb, pattern, action in _ROUTES:
                found = re.fullmatch(pattern, rest)
                if found is not None and verb == method:
                    return action, found.groups()
        raise ArmFault(404, "NotFound", f"No route for {method} {path}.")

    # -- workspace, environments -----------------------------------------------------------------------------

    def _getWorkspace(self, body: Any) -> Any:
        return {"id": WS, "name": WORKSPACE, "location": LOCATION, "properties": {"provisioningState": "Succeeded"}}

    def _getEnvironment(self, name: str, version: str, body: Any) -> Any:
        return self._get(self.environments, f"{name}/{version}", "Environment")

    def _putEnvironment(self, name: str, version: str, body: dict[str, Any]) -> Any:
        if not (body.get("properties") or {}).get("image"):
            raise ArmFault(400, "UserError", "An environment needs properties.image.")
        self.environments[f"{name}/{version}"] = {"id": f"{WS}/environments/{name}/versions/{version}", **body}
        return 201, self.environments[f"{name}/{version}"], {}

    # -- jobs ------------------------------------------------------------------------------------------------

    def _getJob(self, name: str, body: Any) -> Any:
        job = self._get(self.jobs, name, "Job")
        answer = json.loads(json.dumps(job))
        status = job["properties"]["status"]
        if self.auto and status in PROGRESS[:-1]:
            job["properties"]["status"] = PROGRESS[PROGRESS.index(status) + 1]
        elif self.auto and status == "CancelRequested":
            job["properties"]["status"] = "Canceled"
        return answer

    def _createJob(self, name: str, body: dict[str, Any]) -> Any:
        props = body.get("properties") or {}
        if props.get("jobType") != "Command" or not props.get("command"):
            raise ArmFault(400, "UserError", "A Command job needs jobType Command and a command.")
        env = str(props.get("environmentId") or "")
        if (
            not env.startswith(f"{WS}/environments/")
            or env.split("/environments/")[1].replace("/versions/", "/") not in self.environments
        ):
            raise ArmFault(400, "UserError", f"Environment {env} was not found.")
        compute = str(props.get("computeId") or "").rsplit("/computes/", 1)[-1]
        if compute not in self.computes:
            raise ArmFault(400, "UserError", f"Compute {compute} was not found in the workspace.")
        for value in (props.get("inputs") or {}).values():
            if value.get("jobInputType") != "uri_file" or not str(value.get("uri", "")).startswith("azureml://"):
                raise ArmFault(400, "UserError", "Inputs must be uri_file URIs.")
        if name in self.jobs:
            raise ArmFault(409, "UserError", f"A job named {name} exists already.")
        studio = f"https://ml.azure.com/runs/{name}?wsid={WS}"
        status = {"status": "Queued", "services": {"Studio": {"endpoint": studio, "jobServiceType": "Studio"}}}
        self.jobs[name] = {"id": f"{WS}/jobs/{name}", "name": name, "properties": {**props, **status}}
        return 201, self.jobs[name], {}

    def _cancelJob(self, name: str, body: Any) -> Any:
        job = self._get(self.jobs, name, "Job")
        if job["properties"]["status"] in ENDED | {"CancelRequested"}:
            raise ArmFault(400, "UserError", f"Job {name} is in terminal state {job['properties']['status']}.")
        job["properties"]["status"] = "CancelRequested"
        return 202, {}, {"location": self._op_url("mfeOperationResults", self._start("", lambda: None))}

    def set_status(self, name: str, status: str) -> None:
        self.jobs[name]["properties"]["status"] = status

    # -- models ----------------------------------------------------------------------------------------------

    def _getModel(self, name: str, version: str, body: Any) -> Any:
        return self._get(self.models, f"{name}/{version}", "Model")

    def _putModel(self, name: str, version: str, body: dict[str, Any]) -> Any:
        props = body.get("properties") or {}
        if props.get("modelType") not in ("custom_model", "mlflow_model") or not props.get("modelUri"):
            raise ArmFault(400, "UserError", "A model version needs modelType and modelUri.")
        self.models[f"{name}/{version}"] = {"id": f"{WS}/models/{name}/versions/{version}", "name": version, **body}
        return 201, self.models[f"{name}/{version}"], {}

    def _deleteModel(self, name: str, version: str, body: Any) -> Any:
        self._get(self.models, f"{name}/{version}", "Model")
        if any(
            d["properties"].get("model", "").endswith(f"/models/{name}/versions/{version}") for d in self.deployments()
        ):
            raise ArmFault(409, "UserError", "The model version is used by a deployment.")
        del self.models[f"{name}/{version}"]
        return {}

    # -- endpoints and deployments ---------------------------------------------------------------------------

    def deployments(self) -> list[dict[str, Any]]:
        return [r for key, r in self.resources.items() if "/deployments/" in key]

    def _getEndpoint(self, name: str, body: Any) -> Any:
        return self._read(f"onlineEndpoints/{name}", "OnlineEndpoint")

    def _putEndpoint(self, name: str, body: dict[str, Any]) -> Any:
        if body.get("location") != LOCATION or (body.get("properties") or {}).get("authMode") not in (
            "AADToken",
            "Key",
        ):
            raise ArmFault(400, "UserError", "An endpoint needs the workspace's location and an authMode.")
        key = f"onlineEndpoints/{name}"
        self._not_busy(key)
        scoring = f"https://{name}.{LOCATION}.inference.ml.azure.com/score"
        made = {**body, "id": f"{WS}/{key}", "name": name}
        made["properties"] = {**body["properties"], "scoringUri": scoring, "provisioningState": "Creating"}
        return self._lro(key, made, "Succeeded")

    def _patchEndpoint(self, name: str, body: dict[str, Any]) -> Any:
        endpoint = self._read(f"onlineEndpoints/{name}", "OnlineEndpoint")
        if set(body) - {"tags"}:
            raise ArmFault(400, "UserError", "Only tags are patched here.")
        self.resources[f"onlineEndpoints/{name}"]["tags"] = dict(body.get("tags") or {})
        op = self._start("", lambda: None)
        return 202, endpoint, {"location": self._op_url("mfeOperationResults", op)}

    def _deleteEndpoint(self, name: str, body: Any) -> Any:
        return self._delete(f"onlineEndpoints/{name}", "OnlineEndpoint")

    def _getDeployment(self, endpoint: str, name: str, body: Any) -> Any:
        return self._read(f"onlineEndpoints/{endpoint}/deployments/{name}", "OnlineDeployment")

    def _putDeployment(self, endpoint: str, name: str, body: dict[str, Any]) -> Any:
        parent = self.resources.get(f"onlineEndpoints/{endpoint}")
        if parent is None or parent["properties"]["provisioningState"] != "Succeeded":
            raise ArmFault(404 if parent is None else 409, "UserError", f"Endpoint {endpoint} is not ready.")
        props = body.get("properties") or {}
        model = str(props.get("model") or "").split("/models/")[-1].replace("/versions/", "/")
        if model not in self.models:
            raise ArmFault(400, "UserError", f"Model {props.get('model')} was not found.")
        env = str(props.get("environmentId") or "").split("/environments/")[-1].replace("/versions/", "/")
        if (
            env not in self.environments
            or not props.get("instanceType")
            or (body.get("sku") or {}).get("capacity", 0) < 1
        ):
            raise ArmFault(400, "UserError", "A deployment needs an environment, an instanceType and a capacity.")
        key = f"onlineEndpoints/{endpoint}/deployments/{name}"
        self._not_busy(key)
        made = {**body, "id": f"{WS}/{key}", "name": name, "properties": {**props, "provisioningState": "Creating"}}
        failure = self.deploy_errors.pop(0) if self.deploy_errors else None
        return self._lro(key, made, "Failed" if failure else "Succeeded", failure)

    def _deleteDeployment(self, endpoint: str, name: str, body: Any) -> Any:
        return self._delete(f"onlineEndpoints/{endpoint}/deployments/{name}", "OnlineDeployment")

    # -- long-running operations -----------------------------------------------------------------------------

    def _lro(self, key: str, made: dict[str, Any], outcome: str, error: str | None = None) -> Any:
        existed = key in self.resources
        self.resources[key] = made

        def apply() -> None:
            if key in self.resources:
                self.resources[key]["properties"]["provisioningState"] = outcome

        op = self._start(key, apply, error)
        headers = {
            "azure-asyncoperation": self._op_url("mfeOperationsStatus", op),
            "location": self._op_url("mfeOperationResults", op),
        }
        return (200 if existed else 201), made, headers

    def _delete(self, key: str, kind: str) -> Any:
        resource = self._read(key, kind)
        resource["properties"]["provisioningState"] = "Deleting"

        def gone() -> None:
            self.resources.pop(key, None)

        op = self._start(key, gone)
        return 202, {}, {"location": self._op_url("mfeOperationResults", op)}

    def _start(self, key: str, apply: Callable[[], None], error: str | None = None) -> Operation:
        op = Operation(next(self._ids), key, apply, self.lro_ticks)
        if error is not None:
            op.error = {"code": "DeploymentFailed", "message": error}
        self.operations[op.id] = op
        if op.ticks_left <= 0:
            self.finish(op)
        return op

    def finish(self, op: Operation) -> None:
        if op.status != "InProgress":
            return
        op.status = "Failed" if op.error else "Succeeded"
        op.apply()

    def _tick(self, key: str) -> None:
        for op in list(self.operations.values()):
            if op.resource == key and op.status == "InProgress":
                op.ticks_left -= 1
                if op.ticks_left <= 0:
                    self.finish(op)

    def _operation(self, kind: str, op_id: int) -> Any:
        op = self.operations.get(op_id)
        if op is None:
            raise ArmFault(404, "NotFound", f"Operation {op_id} was not found.")
        op.ticks_left -= 1
        if op.ticks_left <= 0:
            self.finish(op)
        if kind == "mfeOperationResults":
            return (202, {}, {"location": self._op_url(kind, op)}) if op.status == "InProgress" else (200, {}, {})
        return {"id": str(op.id), "status": op.status, **({"error": op.error} if op.error else {})}

    def _op_url(self, kind: str, op: Operation) -> str:
        path = f"/subscriptions/{SUBSCRIPTION}{PROVIDER}/locations/{LOCATION}/{kind}/{op.id}"
        return f"{self.base_url}{path}?api-version={API_VERSION}"

    def pending(self) -> list[int]:
        return [op.id for op in self.operations.values() if op.status == "InProgress"]

    # -- helpers ---------------------------------------------------------------------------------------------

    def _read(self, key: str, kind: str) -> dict[str, Any]:
        self._tick(key)
        return self._get(self.resources, key, kind)

    def _not_busy(self, key: str) -> None:
        if any(op.resource == key and op.status == "InProgress" for op in self.operations.values()):
            raise ArmFault(409, "Conflict", f"An operation on {key} is in progress.")

    @staticmethod
    def _get(table: dict[str, dict[str, Any]], key: str, kind: str) -> dict[str, Any]:
        if key not in table:
            raise ArmFault(404, "UserError", f"{kind} {key} was not found.")
        return table[key]


class _Handler(BaseHTTPRequestHandler):
    api: AzureMLJobsServer

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {k.lower(): v for k, v in self.headers.items()}
        status, answer, extra = self.api.handle(self.command, parts.path, parse_qs(parts.query), body, headers)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=utf-8")
        self.send_header("content-length", str(len(data)))
        for name, value in extra.items():
            self.send_header(name, value)
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def azureml_jobs_server(**options: Any) -> Iterator[tuple[str, AzureMLJobsServer]]:
    """A server on a free port of 127.0.0.1: its base URL (the tuner's ``api_url``) and its state."""
    api = AzureMLJobsServer(**options)
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    api.base_url = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield api.base_url, api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@functools.cache
def shared_azureml_jobs_server() -> tuple[str, AzureMLJobsServer]:
    """One auto-advancing server for the whole run (the FineTuner contract suite), stopped at exit; jobs are
    told apart by their names."""
    context = azureml_jobs_server(auto=True)
    started = context.__enter__()
    atexit.register(context.__exit__, None, None, None)
    return started


@dataclass
class FakeCredential:
    """An azure-identity ``TokenCredential`` double: ``get_token(scope)`` -> ``.token``, ``.expires_on``."""

    token: str = TOKEN
    scopes: list[tuple[str, ...]] = field(default_factory=list)

    def get_token(self, *scopes: str) -> Any:
        self.scopes.append(scopes)
        return SimpleNamespace(token=self.token, expires_on=time.time() + 3600)


def tuner_kwargs(url: str, **overrides: Any) -> dict[str, Any]:
    """The keyword arguments of an ``AzureMLTrainingTuner`` on this server (positional ones: ``ARGS``)."""
    return {"credential": FakeCredential(), "api_url": url, "backoff_s": 0.0, **overrides}


ARGS = (SUBSCRIPTION, RESOURCE_GROUP, WORKSPACE, "gpu-cluster", "textnlpacr.azurecr.io/hf-trainer:1")
