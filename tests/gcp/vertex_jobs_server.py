"""A small Vertex AI v1 REST server on 127.0.0.1 for the fine-tuning adapter: custom jobs, the Model Registry,
endpoints and their long-running operations, in the API's JSON shapes.

``customJobs`` (create, get, list with a ``labels.k="v"`` filter, cancel: FAILED_PRECONDITION once ended),
``models:upload`` (an operation under ``models/<id>``; ALREADY_EXISTS for a taken id), ``models`` get and
delete (FAILED_PRECONDITION while deployed), ``endpoints`` create (``?endpointId``; an operation), get, patch of
``labels``, ``:deployModel`` and ``:undeployModel`` (operations under the endpoint), ``<resource>/operations``
(list), operations get and ``:cancel`` (the operation ends with code 1 CANCELLED, its effect never applied).
Errors are ``{"error": {"code", "message", "status"}}``; names come back with the project NUMBER, as Google's do.

An operation is done after ``lro_gets`` reads of it (0: done in the answer that starts it); ``finish`` ends one
at once. With ``auto``, each read of a custom job moves it one state on (QUEUED, PENDING, RUNNING, SUCCEEDED).
``faults`` answers an action with an error instead (``"create": [("RESOURCE_EXHAUSTED", "...")]``);
``deploy_errors`` makes the next deployments end with an operation error; ``calls`` lists what was asked.
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
from typing import Any
from urllib.parse import parse_qs, urlsplit

PROJECT_NUMBER = "123456789012"
TYPE = "type.googleapis.com/google.cloud.aiplatform.v1."
_HTTP = {"NOT_FOUND": 404, "ALREADY_EXISTS": 409, "FAILED_PRECONDITION": 400, "INVALID_ARGUMENT": 400}
_HTTP |= {"RESOURCE_EXHAUSTED": 429, "UNAVAILABLE": 503, "PERMISSION_DENIED": 403, "INTERNAL": 500}
_CODES = {"CANCELLED": 1, "RESOURCE_EXHAUSTED": 8, "FAILED_PRECONDITION": 9, "INTERNAL": 13, "UNAVAILABLE": 14}
_LOC = r"^/v1/projects/([^/]+)/locations/([^/]+)"
_ROUTES = [
    ("POST", re.compile(_LOC + r"/customJobs$"), "create"),
    ("GET", re.compile(_LOC + r"/customJobs$"), "list"),
    ("GET", re.compile(_LOC + r"/customJobs/([^/:]+)$"), "get"),
    ("POST", re.compile(_LOC + r"/customJobs/([^/:]+):cancel$"), "cancel"),
    ("POST", re.compile(_LOC + r"/models:upload$"), "upload"),
    ("GET", re.compile(_LOC + r"/(models|endpoints)/([^/:]+)/operations$"), "operations"),
    ("GET", re.compile(_LOC + r"/(models|endpoints|customJobs)/([^/:]+)/operations/([^/:]+)$"), "operation"),
    ("POST", re.compile(_LOC + r"/(models|endpoints|customJobs)/([^/:]+)/operations/([^/:]+):cancel$"), "opCancel"),
    ("GET", re.compile(_LOC + r"/models/([^/:]+)$"), "getModel"),
    ("DELETE", re.compile(_LOC + r"/models/([^/:]+)$"), "deleteModel"),
    ("POST", re.compile(_LOC + r"/endpoints$"), "createEndpoint"),
    ("GET", re.compile(_LOC + r"/endpoints/([^/:]+)$"), "getEndpoint"),
    ("PATCH", re.compile(_LOC + r"/endpoints/([^/:]+)$"), "patchEndpoint"),
    ("POST", re.compile(_LOC + r"/endpoints/([^/:]+):deployModel$"), "deployModel"),
    ("POST", re.compile(_LOC + r"/endpoints/([^/:]+):undeployModel$"), "undeployModel"),
]
_ENDPOINT_ID = re.compile(r"^[a-z][a-z0-9-]{0,62}$")
_MODEL_ID = re.compile(r"^[a-z_][a-z0-9_-]{0,62}$")
_PROGRESS = ["JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", "JOB_STATE_SUCCEEDED"]
ENDED = frozenset({"JOB_STATE_SUCCEEDED", "JOB_STATE_FAILED", "JOB_STATE_CANCELLED", "JOB_STATE_EXPIRED"})


class ApiError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Operation:
    name: str
    kind: str  # DeployModel, UploadModel, CreateEndpoint, UndeployModel, Delete
    apply: Callable[[], dict[str, Any]]  # the effect, run when the operation succeeds: its response
    gets_left: int
    created: str
    done: bool = False
    error: dict[str, Any] | None = None
    response: dict[str, Any] | None = None

    def json(self) -> dict[str, Any]:
        metadata = {"@type": f"{TYPE}{self.kind}OperationMetadata", "genericMetadata": {"createTime": self.created}}
        found: dict[str, Any] = {"name": self.name, "metadata": metadata}
        if self.done:
            found["done"] = True
            if self.error is not None:
                found["error"] = self.error
            else:
                found["response"] = self.response or {}
        return found


@dataclass
class VertexJobsServer:
    """The state and the API's rules; ``handle(method, path, query, body)`` -> (status, JSON)."""

    auto: bool = False
    lro_gets: int = 0
    jobs: dict[str, dict[str, Any]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    endpoints: dict[str, dict[str, Any]] = field(default_factory=dict)
    operations: dict[str, Operation] = field(default_factory=dict)
    faults: dict[str, list[tuple[str, str]]] = field(default_factory=dict)
    deploy_errors: list[tuple[str, str]] = field(default_factory=list)
    calls: list[str] = field(default_factory=list)
    hooks: dict[str, Callable[[], None]] = field(default_factory=dict)  # run after an action is answered
    _ids: Iterator[int] = field(default_factory=lambda: itertools.count(1000))
    _lock: threading.RLock = field(default_factory=threading.RLock)

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any) -> tuple[int, Any]:
        for verb, pattern, action in _ROUTES:
            match = pattern.match(path) if verb == method else None
            if match is None:
                continue
            self.calls.append(action)
            try:
                if self.faults.get(action):
                    raise ApiError(*self.faults[action].pop(0))
                with self._lock:
                    project, location, *rest = match.groups()
                    parent = f"projects/{_number(project)}/locations/{location}"
                    answer = getattr(self, f"_{action}")(parent, *rest, query, body if isinstance(body, dict) else {})
            except ApiError as exc:
                code = _HTTP[exc.status]
                return code, {"error": {"code": code, "message": exc.message, "status": exc.status}}
            if (hook := self.hooks.pop(action, None)) is not None:
                hook()
            return 200, answer
        return 404, {"error": {"code": 404, "message": f"{method} {path} is not a method", "status": "NOT_FOUND"}}

    # -- custom jobs -----------------------------------------------------------------------------------------

    def _create(self, parent: str, query: Any, body: dict[str, Any]) -> Any:
        pools = (body.get("jobSpec") or {}).get("workerPoolSpecs") or []
        if not body.get("displayName") or not pools:
            raise ApiError("INVALID_ARGUMENT", "display_name and job_spec.worker_pool_specs are required.")
        for pool in pools:
            if not (pool.get("machineSpec") or {}).get("machineType") or not (pool.get("containerSpec") or {}).get(
                "imageUri"
            ):
                raise ApiError("INVALID_ARGUMENT", "Each worker pool needs machine_spec.machine_type and an image.")
        name = f"{parent}/customJobs/{next(self._ids)}"
        job = {**body, "name": name, "state": "JOB_STATE_QUEUED", "createTime": _now(), "updateTime": _now()}
        self.jobs[name] = job
        return job

    def _list(self, parent: str, query: dict[str, list[str]], body: Any) -> Any:
        wanted = dict(re.findall(r'labels\.([a-z0-9_-]+)\s*=\s*"([^"]*)"', (query.get("filter") or [""])[0]))
        found = [
            self._read(job)
            for name, job in sorted(self.jobs.items(), reverse=True)
            if name.startswith(parent) and all((job.get("labels") or {}).get(k) == v for k, v in wanted.items())
        ]
        return {"customJobs": found} if found else {}

    def _get(self, parent: str, job_id: str, query: Any, body: Any) -> Any:
        return self._read(self._job(parent, job_id))

    def _read(self, job: dict[str, Any]) -> dict[str, Any]:
        """The job as it is; with ``auto``, it moves on one state after it is read."""
        answer = dict(job)
        if self.auto and job["state"] in _PROGRESS[:-1]:
            self.set_state(job["name"], _PROGRESS[_PROGRESS.index(job["state"]) + 1])
        elif self.auto and job["state"] == "JOB_STATE_CANCELLING":
            self.set_state(job["name"], "JOB_STATE_CANCELLED")
        return answer

    def _cancel(self, parent: str, job_id: str, query: Any, body: Any) -> Any:
        job = self._job(parent, job_id)
        if job["state"] in ENDED or job["state"] == "JOB_STATE_CANCELLING":
            raise ApiError("FAILED_PRECONDITION", f"Cannot cancel CustomJob {job['name']} in state {job['state']}.")
        self.set_state(job["name"], "JOB_STATE_CANCELLING")
        return {}

    def set_state(self, name: str, state: str, error: tuple[str, str] | None = None) -> None:
        job = self.jobs[name]
        job.update(state=state, updateTime=_now())
        if state != "JOB_STATE_QUEUED":
            job.setdefault("startTime", _now())
        if state in ENDED:
            job["endTime"] = _now()
        if error is not None:
            job["error"] = {"code": _CODES[error[0]], "message": error[1]}

    def _job(self, parent: str, job_id: str) -> dict[str, Any]:
        job = self.jobs.get(f"{parent}/customJobs/{job_id}")
        if job is None:
            raise ApiError("NOT_FOUND", f'The CustomJob "{parent}/customJobs/{job_id}" does not exist.')
        return job

    # -- models ----------------------------------------------------------------------------------------------

    def _upload(self, parent: str, query: Any, body: dict[str, Any]) -> Any:
        model_id, model = body.get("modelId") or str(next(self._ids)), body.get("model") or {}
        if not _MODEL_ID.match(model_id) or not model.get("displayName"):
            raise ApiError("INVALID_ARGUMENT", "model_id or model.display_name is invalid.")
        if not (model.get("containerSpec") or {}).get("imageUri"):
            raise ApiError("INVALID_ARGUMENT", "model.container_spec.image_uri is required.")
        name = f"{parent}/models/{model_id}"
        if name in self.models or self._pending(name, "UploadModel"):
            raise ApiError("ALREADY_EXISTS", f"Model {name} already exists.")

        def apply() -> dict[str, Any]:
            self.models[name] = {**model, "name": name, "versionId": "1", "createTime": _now()}
            return {"@type": f"{TYPE}UploadModelResponse", "model": name, "modelVersionId": "1"}

        return self._start(name, "UploadModel", apply)

    def _getModel(self, parent: str, model_id: str, query: Any, body: Any) -> Any:
        name = f"{parent}/models/{model_id}"
        if name not in self.models:
            raise ApiError("NOT_FOUND", f"The Model does not exist: {name}")
        return self.models[name]

    def _deleteModel(self, parent: str, model_id: str, query: Any, body: Any) -> Any:
        name = self._getModel(parent, model_id, query, body)["name"]
        if any(d["model"] == name for e in self.endpoints.values() for d in e.get("deployedModels", [])):
            raise ApiError("FAILED_PRECONDITION", f"The Model {name} is deployed or being deployed.")
        return self._start(name, "Delete", lambda: self.models.pop(name) and {})

    # -- endpoints -------------------------------------------------------------------------------------------

    def _createEndpoint(self, parent: str, query: dict[str, list[str]], body: dict[str, Any]) -> Any:
        endpoint_id = (query.get("endpointId") or [str(next(self._ids))])[0]
        if not (_ENDPOINT_ID.match(endpoint_id) or endpoint_id.isdigit()) or not body.get("displayName"):
            raise ApiError("INVALID_ARGUMENT", "endpoint_id or display_name is invalid.")
        name = f"{parent}/endpoints/{endpoint_id}"
        if name in self.endpoints or self._pending(name, "CreateEndpoint"):
            raise ApiError("ALREADY_EXISTS", f"Endpoint {name} already exists.")

        def apply() -> dict[str, Any]:
            self.endpoints[name] = {**body, "name": name, "createTime": _now(), "etag": _now()}
            return {"@type": f"{TYPE}Endpoint", **self.endpoints[name]}

        return self._start(name, "CreateEndpoint", apply)

    def _getEndpoint(self, parent: str, endpoint_id: str, query: Any, body: Any) -> Any:
        name = f"{parent}/endpoints/{endpoint_id}"
        if name not in self.endpoints:
            raise ApiError("NOT_FOUND", f"Endpoint {name} not found.")
        return self.endpoints[name]

    def _patchEndpoint(self, parent: str, endpoint_id: str, query: dict[str, list[str]], body: Any) -> Any:
        endpoint = self._getEndpoint(parent, endpoint_id, query, body)
        mask = (query.get("updateMask") or [""])[0].split(",")
        if mask != ["labels"]:
            raise ApiError("INVALID_ARGUMENT", "update_mask must name labels.")
        endpoint["labels"] = dict(body.get("labels") or {})
        return endpoint

    def _deployModel(self, parent: str, endpoint_id: str, query: Any, body: dict[str, Any]) -> Any:
        endpoint = self._getEndpoint(parent, endpoint_id, query, body)
        deployed = body.get("deployedModel") or {}
        spec = (deployed.get("dedicatedResources") or {}).get("machineSpec") or {}
        if not spec.get("machineType") or deployed.get("dedicatedResources", {}).get("minReplicaCount", 0) < 1:
            raise ApiError("INVALID_ARGUMENT", "dedicated_resources.machine_spec and min_replica_count are required.")
        model = str(deployed.get("model", "")).replace("/textnlp-test/", f"/{PROJECT_NUMBER}/")
        if model not in self.models:
            raise ApiError("NOT_FOUND", f"The Model does not exist: {model}")
        failure = self.deploy_errors.pop(0) if self.deploy_errors else None

        def apply() -> dict[str, Any]:
            if failure is not None:
                raise ApiError(*failure)
            made = {**deployed, "model": model, "id": str(next(self._ids)), "createTime": _now()}
            endpoint.setdefault("deployedModels", []).append(made)
            endpoint["trafficSplit"] = {made["id"]: 100}
            return {"@type": f"{TYPE}DeployModelResponse", "deployedModel": made}

        return self._start(f"{endpoint['name']}", "DeployModel", apply)

    def _undeployModel(self, parent: str, endpoint_id: str, query: Any, body: dict[str, Any]) -> Any:
        endpoint = self._getEndpoint(parent, endpoint_id, query, body)
        kept = [d for d in endpoint.get("deployedModels", []) if d["id"] != body.get("deployedModelId")]
        if len(kept) == len(endpoint.get("deployedModels", [])):
            raise ApiError("NOT_FOUND", f"Deployed model {body.get('deployedModelId')} not found.")

        def apply() -> dict[str, Any]:
            endpoint["deployedModels"] = kept
            endpoint.pop("trafficSplit", None)
            return {"@type": f"{TYPE}UndeployModelResponse"}

        return self._start(endpoint["name"], "UndeployModel", apply)

    # -- operations ------------------------------------------------------------------------------------------

    def _start(self, resource: str, kind: str, apply: Callable[[], dict[str, Any]]) -> Any:
        name = f"{resource}/operations/{next(self._ids)}"
        op = self.operations[name] = Operation(name, kind, apply, self.lro_gets, f"{time.time_ns():020d}")
        if op.gets_left <= 0:
            self.finish(name)
        return op.json()

    def finish(self, name: str, error: tuple[str, str] | None = None) -> None:
        """End an operation now: its effect applied, or ``error`` (a canonical status and a message)."""
        with self._lock:
            op = self.operations[name]
            if op.done:
                return
            op.done = True
            if error is not None:
                op.error = {"code": _CODES[error[0]], "message": error[1]}
                return
            try:
                op.response = op.apply()
            except ApiError as exc:
                op.error = {"code": _CODES.get(exc.status, 2), "message": exc.message}

    def pending(self) -> list[str]:
        return [name for name, op in self.operations.items() if not op.done]

    def _pending(self, resource: str, kind: str) -> bool:
        return any(
            op.kind == kind and not op.done and n.startswith(resource + "/") for n, op in self.operations.items()
        )

    def _operations(self, parent: str, kind: str, rid: str, query: Any, body: Any) -> Any:
        prefix = f"{parent}/{kind}/{rid}/operations/"
        found = [op.json() for name, op in reversed(self.operations.items()) if name.startswith(prefix)]
        return {"operations": found} if found else {}

    def _operation(self, parent: str, kind: str, rid: str, op_id: str, query: Any, body: Any) -> Any:
        name = f"{parent}/{kind}/{rid}/operations/{op_id}"
        op = self.operations.get(name)
        if op is None:
            raise ApiError("NOT_FOUND", f"Operation {name} not found.")
        op.gets_left -= 1
        if op.gets_left <= 0:
            self.finish(name)
        return op.json()

    def _opCancel(self, parent: str, kind: str, rid: str, op_id: str, query: Any, body: Any) -> Any:
        name = f"{parent}/{kind}/{rid}/operations/{op_id}"
        if name not in self.operations:
            raise ApiError("NOT_FOUND", f"Operation {name} not found.")
        self.finish(name, ("CANCELLED", "Operation was cancelled."))
        return {}


def _number(project: str) -> str:
    return PROJECT_NUMBER if project in ("textnlp-test", PROJECT_NUMBER) else project


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


class _Handler(BaseHTTPRequestHandler):
    api: VertexJobsServer

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        status, answer = self.api.handle(self.command, parts.path, parse_qs(parts.query), body)
        data = json.dumps(answer).encode()
        self.send_response(status)
        self.send_header("content-type", "application/json; charset=UTF-8")
        self.send_header("content-length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self) -> None:
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
def vertex_jobs_server(**options: Any) -> Iterator[tuple[str, VertexJobsServer]]:
    """A server on a free port of 127.0.0.1: its base URL (the ``api_url`` of the tuner) and its state."""
    api = VertexJobsServer(**options)
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}", api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@functools.cache
def shared_vertex_jobs_server() -> tuple[str, VertexJobsServer]:
    """One auto-advancing server for the whole run (the FineTuner contract suite), stopped at exit; jobs are
    told apart by their labels."""
    context = vertex_jobs_server(auto=True)
    started = context.__enter__()
    atexit.register(context.__exit__, None, None, None)
    return started
