"""The emulators ``make serve CLOUD=gcp`` runs: Firestore (a child process group) and Cloud Storage (in process)."""

from __future__ import annotations

import contextlib
import logging
import os
import shutil
import signal
import socket
import subprocess  # nosec B404 - the Cloud SDK's launcher, fixed arguments
import time
import urllib.request
from pathlib import Path
from typing import Any

LAUNCHER = Path("platform/cloud-firestore-emulator/cloud_firestore_emulator")
READY_WITHIN_S = 60.0
STOP_WITHIN_S = 10.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def firestore_launcher() -> Path:
    """``$FIRESTORE_EMULATOR_LAUNCHER``, else the launcher in the Cloud SDK of ``gcloud`` (not ``gcloud`` itself:
    killing it leaves the launcher and its java behind)."""
    given = os.environ.get("FIRESTORE_EMULATOR_LAUNCHER")
    if given:
        return Path(given)
    roots = [os.environ.get("CLOUDSDK_ROOT_DIR", "")]
    gcloud = shutil.which("gcloud")
    if gcloud:
        roots.append(str(Path(gcloud).resolve().parent.parent))
    for root in filter(None, roots):
        if (Path(root) / LAUNCHER).exists():
            return Path(root) / LAUNCHER
    raise RuntimeError("the Firestore emulator is not installed (gcloud components install cloud-firestore-emulator)")


class FirestoreEmulator:
    """The emulator in a new session (its own process group): ``stop`` kills the launcher and its JVM together."""

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self.host = f"127.0.0.1:{self.port}"
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    @property
    def pid(self) -> int:
        """The launcher's pid (its process group's id); 0 when not running."""
        return self._process.pid if self._process is not None else 0

    def start(self) -> FirestoreEmulator:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        argv = [str(firestore_launcher()), "start", "--host=127.0.0.1", f"--port={self.port}"]
        with self._log_path.open("ab") as out:
            self._process = subprocess.Popen(  # noqa: S603  # nosec B603 - the SDK's launcher, fixed arguments
                argv, stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
            )
        try:
            self._wait()
        except BaseException:
            self.stop()
            raise
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + READY_WITHIN_S
        while time.monotonic() < deadline:
            if self._process is not None and self._process.poll() is not None:
                raise RuntimeError(f"the Firestore emulator exited; see {self._log_path}")
            with contextlib.suppress(OSError), urllib.request.urlopen(f"http://{self.host}/", timeout=1) as ok:  # nosec B310
                if ok.status == 200:
                    return
            time.sleep(0.1)
        raise RuntimeError(f"the Firestore emulator did not answer in {READY_WITHIN_S:.0f} s; see {self._log_path}")

    def stop(self) -> None:
        """TERM to the whole group, then KILL; idempotent."""
        process, self._process = self._process, None
        if process is None:
            return
        for sig in (signal.SIGTERM, signal.SIGKILL):
            try:
                os.killpg(process.pid, sig)
            except ProcessLookupError:
                break
            if _group_gone(process, STOP_WITHIN_S):
                break
        with contextlib.suppress(subprocess.TimeoutExpired):
            process.wait(timeout=1)


def _group_gone(process: subprocess.Popen[bytes], within_s: float) -> bool:
    """True once no process of the group is left (the launcher reaped: a zombie leader still counts)."""
    deadline = time.monotonic() + within_s
    while time.monotonic() < deadline:
        process.poll()
        try:
            os.killpg(process.pid, 0)
        except ProcessLookupError:
            return True
        time.sleep(0.05)
    return False


class StorageEmulator:
    """gcp-storage-emulator in this process (in memory), on a free port of 127.0.0.1."""

    def __init__(self) -> None:
        self.url = ""
        self._server: Any = None

    def start(self) -> StorageEmulator:
        from gcp_storage_emulator.server import create_server  # type: ignore[import-untyped]

        logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # it logs every request
        self._server = create_server("127.0.0.1", 0, in_memory=True)
        self._server._api.daemon = True  # never keeps the interpreter alive
        self._server.start()
        host, port = self._server._api._httpd.server_address[:2]
        self.url = f"http://{host}:{port}"
        return self

    def stop(self) -> None:
        server, self._server = self._server, None
        if server is not None:
            server.stop()
