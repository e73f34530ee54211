"""A small Secret Manager v1 REST server on 127.0.0.1, for the Secret Manager adapters.

What it answers is what the real API answers, in its JSON shapes: secrets (create, get, patch of
``versionAliases`` / ``labels`` / ``annotations`` with the secret's ``etag``, delete), versions (addVersion
with the payload's CRC32C, get, access by number, ``latest`` or alias, destroy, disable, enable), errors as
``{"error": {"code", "message", "status"}}``. Names come back with the project NUMBER, as Google's do. Each
request is applied atomically. Etags: a secret's changes at every patch and only then (adding a version
does not change it, as documented); a stale one is refused 400 FAILED_PRECONDITION (what Secret Manager
documents), or 409 ABORTED with ``etag_status="ABORTED"`` (what AIP-154 prescribes). ``hooks`` run
before a call (``"addVersion"``, ``"patch"``, ``"access"``...), outside the lock: a test makes another
writer act at exactly that point; ``faults`` answer a call with an error status instead (``UNAVAILABLE``).
``calls`` lists what was asked, in order.
"""

from __future__ import annotations

import atexit
import base64
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

import google_crc32c

PROJECT_NUMBER = "123456789012"
_ALIAS = re.compile(r"^[a-z][a-z0-9_-]{0,62}$")
_ROUTES = [
    ("POST", re.compile(r"^/v1/projects/([^/]+)/secrets$"), "create"),
    ("GET", re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)$"), "get"),
    ("PATCH", re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)$"), "patch"),
    ("DELETE", re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)$"), "delete"),
    ("POST", re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+):addVersion$"), "addVersion"),
    ("GET", re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)/versions/([^/:]+):access$"), "access"),
    ("GET", re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)/versions/([^/:]+)$"), "getVersion"),
    (
        "POST",
        re.compile(r"^/v1/projects/([^/]+)/secrets/([^/:]+)/versions/([^/:]+):(destroy|disable|enable)$"),
        "state",
    ),
]
_HTTP = {"NOT_FOUND": 404, "ALREADY_EXISTS": 409, "ABORTED": 409, "FAILED_PRECONDITION": 400}
_HTTP |= {"INVALID_ARGUMENT": 400, "UNAUTHENTICATED": 401, "UNAVAILABLE": 503, "RESOURCE_EXHAUSTED": 429}


class ApiError(Exception):
    def __init__(self, status: str, message: str) -> None:
        super().__init__(message)
        self.status, self.message = status, message


@dataclass
class Version:
    number: int
    data: bytes | None  # None once destroyed
    state: str = "ENABLED"
    etag: str = ""
    created: str = ""
    checksum: bool = False


@dataclass
class Secret:
    id: str
    etag: str
    created: str
    aliases: dict[str, int] = field(default_factory=dict)
    labels: dict[str, str] = field(default_factory=dict)
    annotations: dict[str, str] = field(default_factory=dict)
    versions: dict[int, Version] = field(default_factory=dict)


class SecretManagerServer:
    """The state and the API's rules; ``handle(method, path, query, body, headers)`` -> (status, JSON)."""

    def __init__(self, *, token: str | None = None, etag_status: str = "FAILED_PRECONDITION") -> None:
        self.token = token  # when set, every call needs "Authorization: Bearer <token>"
        self.etag_status = etag_status
        self.secrets: dict[tuple[str, str], Secret] = {}
        self.hooks: dict[str, Callable[[], None]] = {}
        self.faults: dict[str, list[str]] = {}  # action -> statuses to answer (one per call) before serving it
        self.calls: list[str] = []
        self._lock = threading.Lock()
        self._etags = itertools.count(1)

    def handle(self, method: str, path: str, query: dict[str, list[str]], body: Any, headers: Any) -> tuple[int, Any]:
        for verb, pattern, action in _ROUTES:
            match = pattern.match(path) if verb == method else None
            if match is None:
                continue
            self.calls.append(f"{method} {action}")
            if (hook := self.hooks.get(action)) is not None:
                hook()
            try:
                if self.faults.get(action):
                    raise ApiError(self.faults[action].pop(0), "The service is currently unavailable.")
                if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
                    raise ApiError("UNAUTHENTICATED", "Request had invalid authentication credentials.")
                with self._lock:
                    return 200, getattr(self, f"_{action}".replace("V", "_v"))(*match.groups(), query, body)
            except ApiError as exc:
                return _HTTP[exc.status], {
                    "error": {"code": _HTTP[exc.status], "message": exc.message, "status": exc.status}
                }
        return 404, {"error": {"code": 404, "message": f"{method} {path} is not a method", "status": "NOT_FOUND"}}

    # -- secrets ---------------------------------------------------------------------------------------------

    def _create(self, project: str, query: dict[str, list[str]], body: Any) -> Any:
        secret_id = (query.get("secretId") or [""])[0]
        if (
            not re.fullmatch(r"[A-Za-z0-9_-]{1,255}", secret_id)
            or not isinstance(body, dict)
            or "replication" not in body
        ):
            raise ApiError("INVALID_ARGUMENT", "secretId and replication are required.")
        key = (_project(project), secret_id)
        if key in self.secrets:
            raise ApiError("ALREADY_EXISTS", f"Secret [{_name(*key)}] already exists.")
        self.secrets[key] = Secret(secret_id, self._etag(), _now())
        return self._secret_json(key)

    def _get(self, project: str, secret_id: str, query: Any, body: Any) -> Any:
        return self._secret_json(self._find(project, secret_id))

    def _patch(self, project: str, secret_id: str, query: dict[str, list[str]], body: Any) -> Any:
        key = self._find(project, secret_id)
        secret = self.secrets[key]
        mask = [p for p in (query.get("updateMask") or [""])[0].split(",") if p]
        if not mask or not isinstance(body, dict):
            raise ApiError("INVALID_ARGUMENT", "update_mask is required.")
        if body.get("etag") and body["etag"] != secret.etag:
            raise ApiError(
                self.etag_status, f"The etag provided in the request does not match the etag of [{_name(*key)}]."
            )
        for path in mask:
            if path == "versionAliases":
                aliases = {name: int(number) for name, number in (body.get("versionAliases") or {}).items()}
                for name, number in aliases.items():
                    if not _ALIAS.fullmatch(name) or name == "latest":
                        raise ApiError("INVALID_ARGUMENT", f"Invalid alias name: {name}.")
                    if number not in secret.versions or secret.versions[number].state == "DESTROYED":
                        raise ApiError("INVALID_ARGUMENT", f"Version {number} does not exist or is destroyed.")
                secret.aliases = aliases
            elif path in ("labels", "annotations"):
                setattr(secret, path, dict(body.get(path) or {}))
            else:
                raise ApiError("INVALID_ARGUMENT", f"Field [{path}] cannot be updated.")
        secret.etag = self._etag()
        return self._secret_json(key)

    def _delete(self, project: str, secret_id: str, query: dict[str, list[str]], body: Any) -> Any:
        key = self._find(project, secret_id)
        etag = (query.get("etag") or [None])[0]
        if etag and etag != self.secrets[key].etag:
            raise ApiError(self.etag_status, "The etag provided in the request does not match.")
        del self.secrets[key]
        return {}

    # -- versions --------------------------------------------------------------------------------------------

    def _add_version(self, project: str, secret_id: str, query: Any, body: Any) -> Any:
        key = self._find(project, secret_id)
        payload = body.get("payload") if isinstance(body, dict) else None
        if not isinstance(payload, dict):
            raise ApiError("INVALID_ARGUMENT", "payload is required.")
        data = base64.b64decode(payload.get("data") or "")
        checksum = payload.get("dataCrc32c")
        if checksum is not None and int(checksum) != google_crc32c.value(data):
            raise ApiError("INVALID_ARGUMENT", "Checksum mismatch: the payload's data_crc32c is not its CRC32C.")
        secret = self.secrets[key]
        number = max(secret.versions, default=0) + 1
        secret.versions[number] = Version(
            number, data, etag=self._etag(), created=_now(), checksum=checksum is not None
        )
        return self._version_json(key, secret.versions[number])

    def _access(self, project: str, secret_id: str, version: str, query: Any, body: Any) -> Any:
        key, found = self._version(project, secret_id, version)
        if found.state != "ENABLED" or found.data is None:
            raise ApiError("FAILED_PRECONDITION", f"{_name(*key)}/versions/{found.number} is in {found.state} state.")
        payload = {"data": base64.b64encode(found.data).decode(), "dataCrc32c": str(google_crc32c.value(found.data))}
        return {"name": f"{_name(*key)}/versions/{found.number}", "payload": payload}

    def _get_version(self, project: str, secret_id: str, version: str, query: Any, body: Any) -> Any:
        key, found = self._version(project, secret_id, version)
        return self._version_json(key, found)

    def _state(self, project: str, secret_id: str, version: str, verb: str, query: Any, body: Any) -> Any:
        key, found = self._version(project, secret_id, version)
        etag = body.get("etag") if isinstance(body, dict) else None
        if etag and etag != found.etag:
            raise ApiError(self.etag_status, "The etag provided in the request does not match.")
        if found.state == "DESTROYED":
            raise ApiError("FAILED_PRECONDITION", f"{_name(*key)}/versions/{found.number} is in DESTROYED state.")
        found.state = {"destroy": "DESTROYED", "disable": "DISABLED", "enable": "ENABLED"}[verb]
        if verb == "destroy":
            found.data = None
            secret = self.secrets[key]
            secret.aliases = {name: n for name, n in secret.aliases.items() if n != found.number}
        found.etag = self._etag()
        return self._version_json(key, found)

    # -- helpers ---------------------------------------------------------------------------------------------

    def _find(self, project: str, secret_id: str) -> tuple[str, str]:
        key = (_project(project), secret_id)
        if key not in self.secrets:
            raise ApiError("NOT_FOUND", f"Secret [{_name(*key)}] not found or has no versions.")
        return key

    def _version(self, project: str, secret_id: str, version: str) -> tuple[tuple[str, str], Version]:
        key = self._find(project, secret_id)
        secret = self.secrets[key]
        if version == "latest":
            number = max(secret.versions, default=None)
        elif version.isdigit():
            number = int(version)
        else:
            number = secret.aliases.get(version)
        if number is None or number not in secret.versions:
            raise ApiError("NOT_FOUND", f"Secret Version [{_name(*key)}/versions/{version}] not found.")
        return key, secret.versions[number]

    def _secret_json(self, key: tuple[str, str]) -> Any:
        secret = self.secrets[key]
        found: dict[str, Any] = {
            "name": _name(*key),
            "replication": {"automatic": {}},
            "createTime": secret.created,
            "etag": secret.etag,
        }
        if secret.aliases:  # proto3 JSON leaves empty maps out
            found["versionAliases"] = {name: str(number) for name, number in secret.aliases.items()}
        for attr in ("labels", "annotations"):
            if getattr(secret, attr):
                found[attr] = dict(getattr(secret, attr))
        return found

    def _version_json(self, key: tuple[str, str], version: Version) -> Any:
        found: dict[str, Any] = {
            "name": f"{_name(*key)}/versions/{version.number}",
            "createTime": version.created,
            "state": version.state,
            "replicationStatus": {"automatic": {}},
            "etag": version.etag,
            "clientSpecifiedPayloadChecksum": version.checksum,
        }
        if version.state == "DESTROYED":
            found["destroyTime"] = _now()
        return found

    def _etag(self) -> str:
        return f'"{time.time_ns():x}{next(self._etags):04x}"'  # quoted, as AIP-154 wants


def _project(project: str) -> str:
    return PROJECT_NUMBER if project in ("textnlp-test", PROJECT_NUMBER) else project


def _name(project: str, secret_id: str) -> str:
    return f"projects/{project}/secrets/{secret_id}"


def _now() -> str:
    return time.strftime("%Y-%m-%dT%H:%M:%S.000000Z", time.gmtime())


class _Handler(BaseHTTPRequestHandler):
    api: SecretManagerServer

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in self.headers.items()}
        status, answer = self.api.handle(self.command, parts.path, parse_qs(parts.query), body, headers)
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
def secret_manager_server(**options: Any) -> Iterator[tuple[str, SecretManagerServer]]:
    """A server on a free port of 127.0.0.1: its ``/v1`` base URL and its state; stopped on exit."""
    api = SecretManagerServer(**options)
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/v1", api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@functools.cache
def shared_secret_manager() -> tuple[str, SecretManagerServer]:
    """One server for the whole run (the contract suites), started on first use and stopped at exit;
    suites name their secrets uniquely."""
    context = secret_manager_server()
    started = context.__enter__()
    atexit.register(context.__exit__, None, None, None)
    return started
