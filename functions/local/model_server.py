"""The models ``make serve CLOUD=aws|gcp`` answers with: the local runtime's own, behind its OpenAI-compatible API.

A cloud's function code cannot load llama.cpp or ONNX (it has no ``local`` backend), and SageMaker or Vertex
AI endpoints do not exist on the emulators. So the local runtime (``textnlp serve``: SmolLM2 on llama.cpp, MiniLM on
ONNX) runs as a child process on a free loopback port with a data directory of its own, and the default
models are registered on the cloud's side with ``{"type": "openai", "base_url": ...}`` routes to it: the same
as an on-prem OpenAI-compatible server (vLLM, llama.cpp), a supported deployment. The cloud's code path is
the real one, the adapter included. The child's admin key is random, kept beside its database (0600) and given
to the adapter through this process's environment (the route's ``api_key_env``), never printed; the child
answers on 127.0.0.1 only.
"""

from __future__ import annotations

import contextlib
import os
import secrets
import socket
import subprocess  # nosec B404 - our own Python, fixed arguments
import sys
import time
import urllib.error
import urllib.request
from dataclasses import replace
from pathlib import Path
from typing import Any

from core.auth import api_keys
from core.clock import SystemClock
from core.domain import ALL_SCOPES

#: The environment variable the registered routes read the model server's key from.
KEY_ENV = "TEXTNLP_LOCAL_MODELS_KEY"
START_TIMEOUT_S = 60.0


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind((host, 0))
        return int(sock.getsockname()[1])


class ModelServer:
    """``textnlp serve`` as a child process: the local models over an OpenAI-compatible API."""

    def __init__(self, data_dir: Path) -> None:
        self.data_dir = data_dir
        self.port = free_port()
        self.base_url = f"http://127.0.0.1:{self.port}/v1"
        self.key = ""
        self._proc: subprocess.Popen[bytes] | None = None

    def start(self) -> ModelServer:
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.key = _kept_key(self.data_dir / "admin-key")
        env = {**os.environ, "TEXTNLP_ADMIN_KEY": self.key, "TEXTNLP_DATA_DIR": str(self.data_dir)}
        argv = [sys.executable, "-m", "functions.local.cli", "--data-dir", str(self.data_dir), "serve"]
        argv += ["--host", "127.0.0.1", "--port", str(self.port)]
        with (self.data_dir / "server.log").open("ab") as out:
            self._proc = subprocess.Popen(  # noqa: S603  # nosec B603 - sys.executable and fixed arguments
                argv, env=env, stdout=out, stderr=subprocess.STDOUT, stdin=subprocess.DEVNULL, start_new_session=True
            )
        self._wait()
        os.environ[KEY_ENV] = self.key  # read by the OpenAI-compatible adapter on each call
        return self

    def _wait(self) -> None:
        deadline = time.monotonic() + START_TIMEOUT_S
        while time.monotonic() < deadline:
            if self._proc is not None and self._proc.poll() is not None:
                raise RuntimeError(f"the local model server exited; see {self.data_dir / 'server.log'}")
            health = f"http://127.0.0.1:{self.port}/health"
            with contextlib.suppress(OSError, urllib.error.URLError), urllib.request.urlopen(health, timeout=1) as ok:  # nosec B310
                if ok.status == 200:
                    return
            time.sleep(0.1)
        self.stop()
        raise RuntimeError(f"the local model server did not start in {START_TIMEOUT_S:.0f} s")

    def stop(self) -> None:
        proc, self._proc = self._proc, None
        if proc is None or proc.poll() is not None:
            return
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait(timeout=10)

    def specs(self) -> list[Any]:
        """The local runtime's default models, each routed to this server by the same id."""
        from functions.local.bootstrap import DEFAULT_MODELS

        now = SystemClock().now()
        return [
            replace(
                spec,
                backend={"type": "openai", "base_url": self.base_url, "model": spec.id, "api_key_env": KEY_ENV},
                created_at=now,
                metadata={**spec.metadata, "served_by": "textnlp serve (local, OpenAI-compatible)"},
            )
            for spec in DEFAULT_MODELS
        ]


def _kept_key(path: Path) -> str:
    """The model server's admin key, made once and kept (0600) beside its database: a new key each start
    would revoke the previous one, and with it the models of another instance on the same data directory."""
    if path.is_file():
        return path.read_text().strip()
    key = "local-models-" + secrets.token_urlsafe(32)
    fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(key + "\n")
    return key


def register(store: Any, specs: list[Any]) -> list[str]:
    """Put the models in the stack's table (what ``POST /admin/models`` writes); their ids."""
    for spec in specs:
        store.put_model(spec)
    return [spec.id for spec in specs]


MIN_ADMIN_KEY_CHARS = 20


def admin_key(cloud_dir: Path) -> tuple[str, bool]:
    """TEXTNLP_ADMIN_KEY, else the key kept in ``cloud_dir/admin-key`` (made on first start); True if just made.

    The file is the local stand-in of the deployment's admin-key secret: the emulated database is new on every
    start (the emulators keep it in memory), the key stays the same.
    """
    given = os.environ.get("TEXTNLP_ADMIN_KEY", "").strip()
    if given:
        if len(given) < MIN_ADMIN_KEY_CHARS:
            raise SystemExit(f"TEXTNLP_ADMIN_KEY needs at least {MIN_ADMIN_KEY_CHARS} characters")
        return given, False
    kept = cloud_dir / "admin-key"
    if kept.is_file():
        return kept.read_text().strip(), False
    cloud_dir.mkdir(parents=True, exist_ok=True)
    plaintext, _ = api_keys.mint("ten_admin", "admin", frozenset(ALL_SCOPES), SystemClock().now())
    fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(plaintext + "\n")
    return plaintext, True
