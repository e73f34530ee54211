"""A small Key Vault secrets REST server (api-version 7.4) on 127.0.0.1, for the Key Vault adapters.

What it answers is what Key Vault answers, in its JSON shapes: set (PUT ``/secrets/{name}``: a new version
with a 32-hex id, ``value``, ``contentType``, ``tags``, ``attributes``), get (``/secrets/{name}[/{version}]``;
the latest without a version), update (PATCH ``/secrets/{name}/{version}``: attributes, tags, content
type; the bundle without ``value``), list versions (``/secrets/{name}/versions``: items without values,
``maxresults`` up to 25, ``nextLink`` with a ``$skiptoken``). Errors as ``{"error": {"code", "message"
[, "innererror"]}}``: 404 ``SecretNotFound``, 403 ``Forbidden``/``SecretDisabled`` on reading a disabled
version, 401 ``Unauthorized`` with a ``WWW-Authenticate`` challenge, 400 ``BadParameter`` without an
``api-version``, 429 ``Throttled`` with ``Retry-After``. Nothing is conditional (Key Vault has no If-Match).
``hooks`` run before a call (``"set"``, ``"get"``, ``"list"``, ``"update"``), outside the lock; ``faults``
answer a call with an HTTP status instead; ``calls`` lists what was asked, in order.
"""

from __future__ import annotations

import atexit
import functools
import json
import re
import threading
import time
import uuid
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any
from urllib.parse import parse_qs, urlsplit

TOKEN = "kv-test-token"  # a fake bearer the fake server accepts
_ROUTES = [
    ("PUT", re.compile(r"^/secrets/([0-9A-Za-z-]+)$"), "set"),
    ("GET", re.compile(r"^/secrets/([0-9A-Za-z-]+)/versions$"), "list"),
    ("GET", re.compile(r"^/secrets/([0-9A-Za-z-]+)(?:/([0-9a-f]{32}))?$"), "get"),
    ("PATCH", re.compile(r"^/secrets/([0-9A-Za-z-]+)/([0-9a-f]{32})$"), "update"),
]
_CODES = {400: "BadParameter", 401: "Unauthorized", 403: "Forbidden", 404: "SecretNotFound", 429: "Throttled"}
_CODES |= {500: "InternalServerError", 503: "ServiceUnavailable"}


class ApiError(Exception):
    def __init__(self, status: int, message: str, inner: str = "") -> None:
        super().__init__(message)
        self.status, self.message, self.inner = status, message, inner


@dataclass
class Version:
    id: str
    value: str
    content_type: str | None
    tags: dict[str, str]
    enabled: bool = True
    created: int = field(default_factory=lambda: int(time.time()))
    updated: int = field(default_factory=lambda: int(time.time()))


class KeyVaultServer:
    """The state and the API's rules; ``handle(method, path, query, body, headers)`` -> (status, JSON, headers)."""

    def __init__(self, *, token: str | None = TOKEN) -> None:
        self.token = token
        self.base = ""  # the vault URL, set when the server starts
        self.secrets: dict[str, list[Version]] = {}  # versions oldest first
        self.hooks: dict[str, Callable[[], None]] = {}
        self.faults: dict[str, list[int]] = {}
        self.calls: list[str] = []
        self._lock = threading.Lock()

    def handle(
        self, method: str, path: str, query: dict[str, list[str]], body: Any, headers: dict[str, str]
    ) -> tuple[int, Any, dict[str, str]]:
        for verb, pattern, action in _ROUTES:
            match = pattern.match(path) if verb == method else None
            if match is None:
                continue
            self.calls.append(f"{method} {action}")
            if (hook := self.hooks.get(action)) is not None:
                hook()
            try:
                if self.faults.get(action):
                    status = self.faults[action].pop(0)
                    raise ApiError(status, "The service is busy; retry later." if status == 429 else "Failure.")
                if (query.get("api-version") or [""])[0] != "7.4":
                    raise ApiError(400, "The request URI contains an invalid or missing api-version.")
                if self.token is not None and headers.get("authorization") != f"Bearer {self.token}":
                    raise ApiError(401, "AKV10000: Request is missing a Bearer or PoP token.")
                with self._lock:
                    return 200, getattr(self, f"_{action}")(*match.groups(), query, body), {}
            except ApiError as exc:
                error: dict[str, Any] = {"code": _CODES.get(exc.status, "Error"), "message": exc.message}
                if exc.inner:
                    error["innererror"] = {"code": exc.inner}
                extra = {"retry-after": "0"} if exc.status == 429 else {}
                if exc.status == 401:
                    extra = {"www-authenticate": 'Bearer authorization="https://login.microsoftonline.com/t"'}
                return exc.status, {"error": error}, extra
        return 400, {"error": {"code": "BadParameter", "message": f"{method} {path}: no such operation"}}, {}

    def _set(self, name: str, query: Any, body: Any) -> Any:
        if not isinstance(body, dict) or not isinstance(body.get("value"), str):
            raise ApiError(400, "Property value is required.")
        tags = body.get("tags") or {}
        if len(tags) > 15:
            raise ApiError(400, "A secret can have at most 15 tags.")
        if len(body["value"].encode()) > 25 * 1024:
            raise ApiError(400, "The secret value is larger than 25 KB.")
        version = Version(uuid.uuid4().hex, body["value"], body.get("contentType"), dict(tags))
        version.enabled = bool((body.get("attributes") or {}).get("enabled", True))
        self.secrets.setdefault(name, []).append(version)
        return self._bundle(name, version, with_value=True)

    def _get(self, name: str, version_id: str | None, query: Any, body: Any) -> Any:
        version = self._find(name, version_id)
        if not version.enabled:
            raise ApiError(403, "Operation get is not allowed on a disabled secret.", "SecretDisabled")
        return self._bundle(name, version, with_value=True)

    def _update(self, name: str, version_id: str, query: Any, body: Any) -> Any:
        version = self._find(name, version_id)
        body = body if isinstance(body, dict) else {}
        if "enabled" in (body.get("attributes") or {}):
            version.enabled = bool(body["attributes"]["enabled"])
        if "tags" in body:
            version.tags = dict(body["tags"] or {})
        if "contentType" in body:
            version.content_type = body["contentType"]
        version.updated = int(time.time())
        return self._bundle(name, version, with_value=False)

    def _list(self, name: str, query: dict[str, list[str]], body: Any) -> Any:
        if name not in self.secrets:
            raise ApiError(404, f"A secret with (name/id) {name} was not found in this key vault.")
        size = int((query.get("maxresults") or ["25"])[0])
        if not 1 <= size <= 25:
            raise ApiError(400, "maxresults must be between 1 and 25.")
        start = int((query.get("$skiptoken") or ["0"])[0])
        versions = self.secrets[name]
        page = versions[start : start + size]
        items = [self._item(name, v) for v in page]
        more = start + size < len(versions)
        link = f"{self.base}/secrets/{name}/versions?api-version=7.4&maxresults={size}&$skiptoken={start + size}"
        return {"value": items, "nextLink": link if more else None}

    def _find(self, name: str, version_id: str | None) -> Version:
        versions = self.secrets.get(name) or []
        found = versions[-1:] if version_id is None else [v for v in versions if v.id == version_id]
        if not found:
            what = name if version_id is None else f"{name}/{version_id}"
            raise ApiError(404, f"A secret with (name/id) {what} was not found in this key vault.")
        return found[0]

    def _item(self, name: str, version: Version) -> Any:
        item: dict[str, Any] = {
            "id": f"{self.base}/secrets/{name}/{version.id}",
            "attributes": {
                "enabled": version.enabled,
                "created": version.created,
                "updated": version.updated,
                "recoveryLevel": "Recoverable+Purgeable",
                "recoverableDays": 90,
            },
        }
        if version.tags:
            item["tags"] = dict(version.tags)
        if version.content_type is not None:
            item["contentType"] = version.content_type
        return item

    def _bundle(self, name: str, version: Version, *, with_value: bool) -> Any:
        bundle = self._item(name, version)
        if with_value:
            bundle["value"] = version.value
        return bundle


class _Handler(BaseHTTPRequestHandler):
    api: KeyVaultServer

    def _serve(self) -> None:
        parts = urlsplit(self.path)
        length = int(self.headers.get("content-length") or 0)
        raw = self.rfile.read(length) if length else b""
        try:
            body = json.loads(raw) if raw else None
        except ValueError:
            body = None
        headers = {name.lower(): value for name, value in self.headers.items()}
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

    def do_PATCH(self) -> None:
        self._serve()

    def log_message(self, format: str, *args: Any) -> None:
        pass


@contextmanager
def keyvault_server(**options: Any) -> Iterator[tuple[str, KeyVaultServer]]:
    """A server on a free port of 127.0.0.1: its vault URL and its state; stopped on exit."""
    api = KeyVaultServer(**options)
    handler = type("Handler", (_Handler,), {"api": api})
    server = ThreadingHTTPServer(("127.0.0.1", 0), handler)
    server.daemon_threads = True
    api.base = f"http://127.0.0.1:{server.server_address[1]}"
    thread = threading.Thread(target=server.serve_forever, args=(0.02,), daemon=True)
    thread.start()
    try:
        yield api.base, api
    finally:
        server.shutdown()
        server.server_close()
        thread.join()


@functools.cache
def shared_keyvault() -> tuple[str, KeyVaultServer]:
    """One server for the whole run (the contract suites), started on first use and stopped at exit."""
    context = keyvault_server()
    started = context.__enter__()
    atexit.register(context.__exit__, None, None, None)
    return started
