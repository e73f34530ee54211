"""The Firestore emulator: ONE per test session, in a process group of its own, always stopped at exit.

Plain functions (no fixtures), like ``gcs_emulator``: the first caller starts the emulator's launcher
(``platform/cloud-firestore-emulator/cloud_firestore_emulator`` of the Cloud SDK; not ``gcloud``, whose
process would leave the launcher and its ``java`` behind) with ``start_new_session``, so that the launcher and
the JVM it starts share one process group of their own, on a free port of 127.0.0.1, and waits until it answers
(about 3 s).
Stopping kills the whole group (SIGTERM, then SIGKILL): an ``atexit`` hook does it, and so does the session
fixture's finaliser in ``tests/gcp/conftest.py``; whichever runs first wins, the other does nothing. The group's
leader is a small bash watchdog that kills the group when the test process is gone however it died.

Tests keep apart by project: ``new_project()`` names a project of the test's own (the emulator keeps each
project's data apart), so nothing needs resetting; ``reset(project)`` empties one anyway.

Quirks (docs: /work/shared/EMULATORS.md section 3): transactions contending for one document wait for the
emulator's lock timeout and end ABORTED (409), seconds later: keep races small. It enforces no indexes, no TTL
policy and no write rate per document.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import shutil
import signal
import socket
import subprocess
import tempfile
import threading
import time
import urllib.request
import uuid
from pathlib import Path
from typing import Any

#: The group's leader: starts the launcher, and kills the whole group once the test process is gone, so that even
#: a test run killed outright (SIGKILL, pytest-timeout's ``os._exit``) leaves no ``java`` behind.
_WATCHDOG = """
"$2" start --host=127.0.0.1 --port="$3" &
while kill -0 "$1" 2>/dev/null; do sleep 1; done
kill -KILL -- -$$
"""
LAUNCHER = Path("platform/cloud-firestore-emulator/cloud_firestore_emulator")
READY_WITHIN_S = 60.0
STOP_WITHIN_S = 10.0


class FirestoreEmulator:
    """One emulator process group: ``host`` is ``127.0.0.1:<port>``, what FIRESTORE_EMULATOR_HOST takes."""

    def __init__(self, launcher: Path) -> None:
        self.port = _free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._log = tempfile.TemporaryFile()  # noqa: SIM115 - closed by stop()
        self._process = subprocess.Popen(
            ["bash", "-c", _WATCHDOG, "firestore-emulator", str(os.getpid()), str(launcher), str(self.port)],
            stdin=subprocess.DEVNULL,
            stdout=self._log,
            stderr=subprocess.STDOUT,
            start_new_session=True,  # its own process group: the launcher and its java child die together
        )
        self._lock = threading.Lock()
        self._stopped = False

    @property
    def pgid(self) -> int:
        return self._process.pid  # a session leader: its pid is the group's id

    def wait_ready(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            if self._process.poll() is not None:
                raise RuntimeError(f"the Firestore emulator exited early:\n{self.output()}")
            try:
                with urllib.request.urlopen(f"http://{self.host}/", timeout=1) as answer:  # nosec B310
                    if answer.status == 200:
                        return
            except OSError:
                time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the Firestore emulator did not answer within {READY_WITHIN_S} s:\n{self.output()}")

    def _group_gone(self, within_s: float) -> bool:
        """Whether every process of the group is gone (the launcher reaped: a zombie still counts as one)."""
        deadline = time.monotonic() + within_s
        while time.monotonic() < deadline:
            self._process.poll()  # reap the launcher once it exits
            try:
                os.killpg(self.pgid, 0)
            except ProcessLookupError:
                return True
            time.sleep(0.05)
        return False

    def output(self) -> str:
        self._log.seek(0)
        return self._log.read().decode(errors="replace")[-4000:]

    def stop(self) -> None:
        """Kill the process group (TERM, then KILL after a while); idempotent."""
        with self._lock:
            if self._stopped:
                return
            self._stopped = True
            for sig, wait_s in ((signal.SIGTERM, STOP_WITHIN_S), (signal.SIGKILL, STOP_WITHIN_S)):
                try:
                    os.killpg(self.pgid, sig)
                except ProcessLookupError:
                    break
                if self._group_gone(wait_s):
                    break
            with contextlib.suppress(subprocess.TimeoutExpired):
                self._process.wait(timeout=1)
            self._log.close()


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def launcher() -> Path:
    """The emulator's launcher: ``$FIRESTORE_EMULATOR_LAUNCHER``, else under the Cloud SDK of ``gcloud``."""
    given = os.environ.get("FIRESTORE_EMULATOR_LAUNCHER")
    if given:
        return Path(given)
    roots = [os.environ.get("CLOUDSDK_ROOT_DIR", "")]
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.append(str(Path(gcloud).resolve().parent.parent))  # <sdk>/bin/gcloud
    for root in filter(None, roots):
        if (Path(root) / LAUNCHER).exists():
            return Path(root) / LAUNCHER
    raise RuntimeError("the Firestore emulator is not installed (gcloud components install cloud-firestore-emulator)")


_emulator: FirestoreEmulator | None = None
_start_lock = threading.Lock()


def firestore_emulator() -> FirestoreEmulator:
    """The session's emulator, started on first use and stopped at exit."""
    global _emulator
    with _start_lock:
        if _emulator is None:
            emulator = FirestoreEmulator(launcher())
            atexit.register(emulator.stop)  # registered before waiting: a failed start is cleaned up too
            emulator.wait_ready()
            _emulator = emulator
        return _emulator


def stop_firestore_emulator() -> None:
    """Stop the session's emulator if one was started (the session fixture's finaliser)."""
    global _emulator
    with _start_lock:
        emulator, _emulator = _emulator, None
    if emulator is not None:
        emulator.stop()


def new_project() -> str:
    """A project of its own for one test: the emulator keeps projects apart."""
    return f"textnlp-{uuid.uuid4().hex[:12]}"


def firestore_client(project: str | None = None) -> Any:
    """A client on the session's emulator (anonymous: nothing can reach a real project)."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore

    emulator = firestore_emulator()
    os.environ["FIRESTORE_EMULATOR_HOST"] = emulator.host  # the client library reads it
    return firestore.Client(project=project or new_project(), credentials=AnonymousCredentials())


def reset(project: str) -> None:
    """Delete every document of ``project`` on the emulator."""
    emulator = firestore_emulator()
    url = f"http://{emulator.host}/emulator/v1/projects/{project}/databases/(default)/documents"
    request = urllib.request.Request(url, method="DELETE")  # nosec B310 - the local emulator
    with urllib.request.urlopen(request, timeout=10):  # nosec B310
        pass
