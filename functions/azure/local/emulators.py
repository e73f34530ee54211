"""The emulators ``make serve CLOUD=azure`` runs: Azurite (blob service) and a Cosmos DB server, from tools/emulators.

Both are npm packages (``make emulators`` installs them: tools/emulators/package-lock.json), started here as child
processes, each in a process group of its own on a free port of 127.0.0.1, in memory, and killed whole on
``stop``. Flags as /work/shared/EMULATORS.md sections 5 and 6 say: Azurite needs ``--skipApiVersionCheck`` (the
SDK's API version is newer than Azurite's) and ``--disableTelemetry``; the Cosmos DB server runs ``--no-ssl``
(any base64 string is its key).
"""

from __future__ import annotations

import base64
import contextlib
import os
import signal
import socket
import subprocess  # nosec B404 - the emulators' own launchers, fixed arguments
import time
import urllib.error
import urllib.request
from pathlib import Path
from typing import Self

BIN = Path(__file__).resolve().parents[3] / "tools" / "emulators" / "node_modules" / ".bin"
READY_WITHIN_S = 60.0
STOP_WITHIN_S = 10.0
ACCOUNT = "devstoreaccount1"
# Azurite's well-known development key (public, documented by Microsoft): it opens nothing but the emulator.
AZURITE_KEY = "Eby8vdM02xNOcqFlqUwJPLlmEtlCDXJ1OUzFT50uSRZ6IFsuFq2UVErCz4I6tq/K1SZFPTOtr/KBHBeksoGMGw=="
COSMOS_KEY = base64.b64encode(b"textnlp-local-cosmos-key").decode()  # any base64 string opens the server


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


def executable(name: str, env_var: str) -> Path:
    """``$<env_var>``, else tools/emulators' ``node_modules/.bin/<name>``."""
    found = Path(os.environ.get(env_var) or BIN / name)
    if not found.exists():
        raise RuntimeError(f"{name} is not installed: run `make emulators` (npm ci in tools/emulators)")
    return found


class NodeEmulator:
    """One emulator process in a new session (its own process group): ``stop`` kills the group."""

    name = "emulator"

    def __init__(self, log_path: Path) -> None:
        self.port = free_port()
        self._log_path = log_path
        self._process: subprocess.Popen[bytes] | None = None

    def argv(self) -> list[str]:  # pragma: no cover - each emulator says
        raise NotImplementedError

    def probe_url(self) -> str:  # pragma: no cover - each emulator says
        raise NotImplementedError

    @property
    def pid(self) -> int:
        return self._process.pid if self._process is not None else 0

    def start(self) -> Self:
        self._log_path.parent.mkdir(parents=True, exist_ok=True)
        with self._log_path.open("ab") as out:
            self._process = subprocess.Popen(  # noqa: S603  # nosec B603 - the emulator's launcher, fixed arguments
                self.argv(), stdin=subprocess.DEVNULL, stdout=out, stderr=subprocess.STDOUT, start_new_session=True
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
                raise RuntimeError(f"{self.name} exited; see {self._log_path}")
            try:
                with urllib.request.urlopen(self.probe_url(), timeout=1):  # noqa: S310  # nosec B310 - loopback
                    return
            except urllib.error.HTTPError:
                return  # it answers (an unsigned request is refused): it is up
            except OSError:
                time.sleep(0.1)
        raise RuntimeError(f"{self.name} did not answer in {READY_WITHIN_S:.0f} s; see {self._log_path}")

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
            with contextlib.suppress(subprocess.TimeoutExpired):
                process.wait(timeout=STOP_WITHIN_S)
                break


class Azurite(NodeEmulator):
    """Azurite's blob service, in memory."""

    name = "Azurite"

    @property
    def blob_endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/{ACCOUNT}"

    @property
    def connection_string(self) -> str:
        return (
            f"DefaultEndpointsProtocol=http;AccountName={ACCOUNT};AccountKey={AZURITE_KEY};"
            f"BlobEndpoint={self.blob_endpoint};"
        )

    def argv(self) -> list[str]:
        return [
            str(executable("azurite-blob", "AZURITE_BLOB")),
            *("--blobHost", "127.0.0.1", "--blobPort", str(self.port)),
            *("--silent", "--inMemoryPersistence", "--disableTelemetry", "--skipApiVersionCheck"),
        ]

    def probe_url(self) -> str:
        return f"{self.blob_endpoint}?comp=list"


class CosmosServer(NodeEmulator):
    """The Cosmos DB server (@vercel/cosmosdb-server), plain HTTP, in memory."""

    name = "the Cosmos DB server"
    key = COSMOS_KEY

    @property
    def endpoint(self) -> str:
        return f"http://127.0.0.1:{self.port}/"

    def argv(self) -> list[str]:
        server = executable("cosmosdb-server", "COSMOSDB_SERVER")
        return [str(server), "--host", "127.0.0.1", "--port", str(self.port), "--no-ssl"]

    def probe_url(self) -> str:
        return self.endpoint
