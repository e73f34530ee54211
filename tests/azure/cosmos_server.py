"""The Cosmos DB emulator (@vercel/cosmosdb-server): ONE per test session, in a process group of its own.

Plain functions, like ``tests/gcp/firestore_emulator.py``: the first caller starts
``tools/emulators/node_modules/.bin/cosmosdb-server --no-ssl --host 127.0.0.1 -p <free port>`` under a small bash
watchdog (``start_new_session``: its own process group) that kills the group once the test process is gone however
it died, and waits until it answers (about 1 s). Stopping kills the whole group: an ``atexit`` hook does it, and
so does the session fixture's finaliser in ``tests/azure/conftest.py``; whichever runs first wins.

``cosmos_store()`` is a CosmosStore on a database of its own on that server (nothing needs resetting);
``CosmosTransport`` the SDK's HTTP transport, recording every round trip (and its ``x-ms-request-charge``) and
injecting faults: a 429 answered without sending, an answer lost after the server applied the request.

Tests keep apart by database: ``new_database()`` names one of the test's own, so nothing needs resetting.
Quirks (/work/shared/EMULATORS.md section 5, and ``adapters/azure/cosmos.py``): a point read of a missing id is a
500; a partition-key query is not scoped to the partition; TTL is not enforced; the transactional batch is neither
atomic nor able to patch; items are keyed by the first partition key path only; patch filter predicates are
lowercased and checked against every item with the id; its SQL parser takes time exponential in nested parentheses
(a new predicate costs 10-500 ms to compile: keep a test's clock still where it can be); ``OFFSET LIMIT`` is not
supported (``TOP`` is); every answer says ``x-ms-request-charge: 1``.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.error
import urllib.request
import uuid
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

ROOT = Path(__file__).resolve().parents[2]
SERVER = ROOT / "tools/emulators/node_modules/.bin/cosmosdb-server"
KEY = "dGV4dG5scC1lbXVsYXRvci1rZXk="  # any base64 string is a key to the emulator
_WATCHDOG = """
"$2" --no-ssl --host 127.0.0.1 -p "$3" &
while kill -0 "$1" 2>/dev/null; do sleep 1; done
kill -KILL -- -$$
"""
READY_WITHIN_S = 30.0
STOP_WITHIN_S = 10.0


class CosmosServer:
    """One emulator process group; ``endpoint`` is its ``http://127.0.0.1:<port>/``."""

    def __init__(self, server: Path) -> None:
        self.port = _free_port()
        self.endpoint = f"http://127.0.0.1:{self.port}/"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self._process = subprocess.Popen(
            ["bash", "-c", _WATCHDOG, "cosmosdb-server", str(os.getpid()), str(server), str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the watchdog and node die together
        )
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def pgid(self) -> int:
        return self._process.pid

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"cosmosdb-server exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(self.endpoint, timeout=1):  # nosec B310 - the local emulator
                    return
            except urllib.error.HTTPError:
                return  # it answers (401 without a signature): ready
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"cosmosdb-server did not answer within {READY_WITHIN_S} s:\n{self.output()}")

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        """Kill the process group (TERM, then KILL); idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            for sig in (signal.SIGTERM, signal.SIGKILL):
                try:
                    os.killpg(self.pgid, sig)
                except ProcessLookupError:
                    break
                if self._group_gone(STOP_WITHIN_S):
                    break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1)
            self._log.close()

    def _group_gone(self, within_s: float) -> bool:
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            self._process.poll()
            try:
                os.killpg(self.pgid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


_server: CosmosServer | None = None
_start_lock = threading.Lock()


def cosmos_server() -> CosmosServer:
    """The session's emulator, started on first use and stopped at exit."""
    global _server
    with _start_lock:
        if _server is None:
            if not SERVER.exists():
                raise RuntimeError(f"{SERVER} is missing: run `make` (npm ci in tools/emulators)")
            server = CosmosServer(SERVER)
            atexit.register(server.stop)  # registered before waiting: a failed start is cleaned up too
            server.wait_ready()
            _server = server
        return _server


def stop_cosmos_server() -> None:
    global _server
    with _start_lock:
        server, _server = _server, None
    if server is not None:
        server.stop()


def new_database() -> str:
    """A database of its own for one test: the emulator keeps databases apart."""
    return f"textnlp-{uuid.uuid4().hex[:12]}"


@dataclass
class Trip:
    """One HTTP round trip of the SDK: method, path, status, request charge (RU) and the operation's kind."""

    method: str
    path: str
    status: int
    charge: float | None
    kind: str
    item: str = ""  # the item's id (from the path, or a create's or upsert's body)


def kind_of(request: Any) -> str:
    """What an SDK request does: read, query, create, upsert, replace, patch, delete, or meta (account, containers)."""
    headers = {k.lower(): v for k, v in request.headers.items()}
    path = request.url.split("?")[0]
    if "/docs" not in path:
        return "meta"
    if request.method == "GET":
        return "read"
    if request.method == "POST":
        if headers.get("x-ms-documentdb-isquery") == "True" or "query" in headers.get("content-type", ""):
            return "query"
        return "upsert" if headers.get("x-ms-documentdb-is-upsert") == "True" else "create"
    method = str(request.method)
    return {"PUT": "replace", "PATCH": "patch", "DELETE": "delete"}.get(method, method.lower())


@dataclass
class Fault:
    """``when(kind)`` picks the request; ``what``: "throttle" (a 429 with ``retry_after_ms``, not sent), "lost"
    (sent and applied, the answer replaced by a dropped connection), "unsent" (no connection: not sent)."""

    when: Callable[[str], bool]
    what: str
    retry_after_ms: int = 5
    times: int = 1


class CosmosTransport:
    """The SDK's transport (``RequestsTransport``) with every round trip recorded in ``trips`` and ``faults``."""

    def __init__(self) -> None:
        from azure.core.pipeline.transport import RequestsTransport

        self._inner = RequestsTransport()
        self.trips: list[Trip] = []
        self.faults: list[Fault] = []
        self._lock = threading.Lock()

    def __enter__(self) -> CosmosTransport:
        self._inner.__enter__()
        return self

    def __exit__(self, *args: Any) -> None:
        self._inner.__exit__(*args)

    def open(self) -> None:
        self._inner.open()

    def close(self) -> None:
        self._inner.close()

    def sleep(self, duration: float) -> None:
        self._inner.sleep(duration)

    def _fault(self, kind: str) -> Fault | None:
        with self._lock:
            for fault in self.faults:
                if fault.times > 0 and fault.when(kind):
                    fault.times -= 1
                    return fault
        return None

    def send(self, request: Any, **kwargs: Any) -> Any:
        from azure.core.exceptions import ServiceRequestError, ServiceResponseError

        kind = kind_of(request)
        fault = self._fault(kind)
        if fault is not None and fault.what == "unsent":
            raise ServiceRequestError("injected: no connection")
        if fault is not None and fault.what == "throttle":
            response = _throttled(request, fault.retry_after_ms)
        else:
            response = self._inner.send(request, **kwargs)
        charge = response.headers.get("x-ms-request-charge")
        path = request.url.split("?")[0]
        trip = Trip(request.method, path, response.status_code, float(charge) if charge else None, kind, _item(request))
        with self._lock:
            self.trips.append(trip)
        if fault is not None and fault.what == "lost":
            raise ServiceResponseError("injected: the answer was lost")
        return response


def _item(request: Any) -> str:
    import json
    from urllib.parse import unquote

    path = request.url.split("?")[0].rstrip("/")
    if "/docs/" in path + "/" and not path.endswith("/docs"):
        return str(unquote(path.rsplit("/", 1)[1]))
    try:
        body = json.loads(request.body or b"{}")
    except (TypeError, ValueError):
        return ""
    return str(body.get("id", "")) if isinstance(body, dict) else ""


def _throttled(request: Any, retry_after_ms: int) -> Any:
    import requests
    from azure.core.pipeline.transport import RequestsTransportResponse

    raw = requests.Response()
    raw.status_code = 429
    raw.reason = "Too Many Requests"
    raw.headers.update({"x-ms-retry-after-ms": str(retry_after_ms), "content-type": "application/json"})
    raw._content = b'{"code": "TooManyRequests", "message": "Request rate is large"}'
    raw.url = request.url
    return RequestsTransportResponse(request, raw)


def cosmos_store(
    clock: Callable[[], float] | None = None, *, transport: CosmosTransport | None = None, **kwargs: Any
) -> Any:
    """A CosmosStore on a database of its own on the session's emulator (created with its containers)."""
    from adapters.azure.cosmos import CosmosStore, cosmos_client

    server = cosmos_server()
    extra = {"transport": transport} if transport is not None else {}
    client = cosmos_client(server.endpoint, key=KEY, **extra)
    return CosmosStore(client, database=new_database(), clock=clock or time.time, create=True, **kwargs)
