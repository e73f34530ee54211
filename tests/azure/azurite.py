"""Azurite (blob service only): ONE per test session, in a process group of its own, always stopped at exit.

Plain functions for the contract suites (``connection_string()``, ``container_client()``, ``new_container()``)
and pytest fixtures for the Azure tests, which import them explicitly (``from tests.azure.azurite import
azurite, container``). The first caller starts ``azurite-blob`` from tools/emulators (``make emulators``
installs it; ``$AZURITE_BLOB`` overrides the path) on a free port of 127.0.0.1, in memory, with a bash watchdog
as the group's leader that kills the group once the test process is gone however it died, and waits until it
answers (about 1 s). Stopping kills the whole group (SIGTERM, then SIGKILL): the session fixture's finaliser
or the ``atexit`` hook, whichever runs first.

Flags (/work/shared/EMULATORS.md section 6): ``--skipApiVersionCheck`` (azure-storage-blob 12.31 sends an API
version Azurite 3.35 does not know), ``--disableTelemetry`` (it would call applicationinsights.azure.com),
``--inMemoryPersistence``, ``--silent``. Tests keep apart by container (``new_container()``), so nothing needs
resetting. Quirks met: container names must be 3-63 characters; Azurite keeps no blob versions (``x-ms-version-id``
never comes back), so reads are pinned by ``If-Match`` there.
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
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft): it opens nothing but the emulator.
KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
AZURITE_BLOB = Path(__file__).resolve().parents[2] / "tools/emulators/node_modules/.bin/azurite-blob"
READY_WITHIN_S = 30.0
STOP_WITHIN_S = 10.0

#: The group's leader: starts Azurite, and kills the whole group once the test process is gone.
_WATCHDOG = """
"$2" --blobHost 127.0.0.1 --blobPort "$3" --silent --inMemoryPersistence --disableTelemetry --skipApiVersionCheck &
while kill -0 "$1" 2>/dev/null; do sleep 1; done
kill -KILL -- -$$
"""


class Azurite:
    """One Azurite process group; ``blob_endpoint`` is ``http://127.0.0.1:<port>/devstoreaccount1``."""

    def __init__(self, executable: Path) -> None:
        self.port = _free_port()
        self.blob_endpoint = f"http://127.0.0.1:{self.port}/{ACCOUNT}"
        self.connection_string = (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={KEY};BlobEndpoint={self.blob_endpoint};"
        )
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self._process = subprocess.Popen(
            ["bash", "-c", _WATCHDOG, "azurite", str(os.getpid()), str(executable), str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the watchdog and node die together
        )
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def pgid(self) -> int:
        return self._process.pid  # a session leader: its pid is the group's id

    def wait_ready(self) -> None:
        """Until the blob service answers HTTP at all (an unsigned request gets 400/403: it is up)."""
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"Azurite exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"{self.blob_endpoint}?comp=list", timeout=1):  # nosec B310
                    return
            except urllib.error.HTTPError:
                return
            except OSError:
                time.sleep(0.05)
        self.stop()
        raise RuntimeError(f"Azurite did not answer within {READY_WITHIN_S} s:\n{self.output()}")

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        """Kill the process group (TERM, then KILL after a while); idempotent."""
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
            self._process.poll()  # reap the watchdog once it exits
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


def executable() -> Path:
    path = Path(os.environ.get("AZURITE_BLOB") or AZURITE_BLOB)
    if not path.exists():
        raise RuntimeError(f"Azurite is not installed at {path} (make emulators)")
    return path


_azurite: Azurite | None = None
_start_lock = threading.Lock()


def azurite_server() -> Azurite:
    """The session's Azurite, started on first use and stopped at exit."""
    global _azurite
    with _start_lock:
        if _azurite is None:
            server = Azurite(executable())
            atexit.register(server.stop)  # registered before waiting: a failed start is cleaned up too
            server.wait_ready()
            _azurite = server
        return _azurite


def stop_azurite() -> None:
    """Stop the session's Azurite if one was started (the session fixture's finaliser)."""
    global _azurite
    with _start_lock:
        server, _azurite = _azurite, None
    if server is not None:
        server.stop()


def connection_string() -> str:
    return azurite_server().connection_string


def new_container(**client_options: Any) -> Any:
    """A new container of its own for one test: its ``ContainerClient`` (``client_options`` as for
    ``ContainerClient.from_connection_string``: a ``raw_request_hook``, a ``transport``, a ``retry_policy``)."""
    from azure.storage.blob import ContainerClient

    client = ContainerClient.from_connection_string(connection_string(), f"t{uuid.uuid4().hex}", **client_options)
    client.create_container()
    return client


@pytest.fixture(scope="session")
def azurite() -> Iterator[Azurite]:
    """The session's Azurite; its whole process group is killed when the session ends (and at exit)."""
    yield azurite_server()
    stop_azurite()


@pytest.fixture
def container(azurite: Azurite) -> Any:
    """A ``ContainerClient`` on a new container of the test's own."""
    return new_container()
