"""Helpers shared by the end-to-end tests: starting servers, free ports, admin calls.

Everything here talks to real processes over real sockets; nothing is imported from the server.
"""

from __future__ import annotations

import atexit
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx

ROOT = Path(__file__).resolve().parents[2]
VENV_BIN = Path(sys.executable).parent
ADMIN_KEY = "e2e-admin-key-0123456789abcdef"
START_TIMEOUT_S = 30.0
STDERR_TAIL_LINES = 40

# Every process this module started and has not stopped yet; the conftest prints their stderr
# when a test fails, and whatever is still here when the interpreter exits is stopped then.
LIVE: list[Proc] = []


@atexit.register
def _stop_leftovers() -> None:
    for proc in list(LIVE):
        proc.stop()


def free_port() -> int:
    """A port nobody listens on right now: bind port 0 and read what the kernel picked."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@dataclass
class Proc:
    """A child process in its own process group, with stdout and stderr captured to files."""

    name: str
    popen: subprocess.Popen[bytes]
    stdout_path: Path
    stderr_path: Path

    def stderr_tail(self, lines: int = STDERR_TAIL_LINES) -> str:
        try:
            text = self.stderr_path.read_text(errors="replace")
        except OSError:
            return ""
        return "\n".join(text.splitlines()[-lines:])

    def output(self) -> str:
        out = self.stdout_path.read_text(errors="replace") if self.stdout_path.exists() else ""
        return f"--- stdout ---\n{out}\n--- stderr (tail) ---\n{self.stderr_tail(60)}"

    def stop(self) -> None:
        """SIGTERM the group (uvicorn's workers included), then SIGKILL what is left."""
        if self in LIVE:
            LIVE.remove(self)
        pgid = self.popen.pid  # start_new_session=True: the child leads its own group
        if self.popen.poll() is None:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(pgid, signal.SIGTERM)
            try:
                self.popen.wait(timeout=10)
            except subprocess.TimeoutExpired:
                with contextlib.suppress(ProcessLookupError):
                    os.killpg(pgid, signal.SIGKILL)
                self.popen.wait(timeout=10)
        # Workers of a multi-process uvicorn share the group; make sure none outlives the test.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(pgid, signal.SIGKILL)


def spawn(name: str, argv: list[str], log_dir: Path, env: Mapping[str, str]) -> Proc:
    log_dir.mkdir(parents=True, exist_ok=True)
    stdout_path, stderr_path = log_dir / f"{name}.stdout", log_dir / f"{name}.stderr"
    with stdout_path.open("wb") as out, stderr_path.open("wb") as err:
        popen = subprocess.Popen(
            argv, cwd=ROOT, env=dict(env), stdout=out, stderr=err, stdin=subprocess.DEVNULL, start_new_session=True
        )
    proc = Proc(name, popen, stdout_path, stderr_path)
    LIVE.append(proc)
    return proc


def wait_http(proc: Proc, url: str, timeout_s: float = START_TIMEOUT_S, headers: dict[str, str] | None = None) -> None:
    """Poll ``url`` until it answers 200; fail with the process's output if it dies or times out."""
    deadline = time.monotonic() + timeout_s
    last = "no answer"
    while time.monotonic() < deadline:
        if proc.popen.poll() is not None:
            proc.stop()
            raise RuntimeError(
                f"{proc.name} exited with {proc.popen.returncode} before {url} answered\n{proc.output()}"
            )
        try:
            response = httpx.get(url, headers=headers, timeout=1.0)
            if response.status_code == 200:
                return
            last = f"HTTP {response.status_code}: {response.text[:200]}"
        except httpx.HTTPError as exc:
            last = repr(exc)
        time.sleep(0.05)
    proc.stop()
    raise RuntimeError(f"{proc.name}: {url} did not answer 200 within {timeout_s} s ({last})\n{proc.output()}")


def start_fake_openai(log_dir: Path) -> tuple[Proc, str]:
    """The zero-latency OpenAI-compatible fake on a free port; returns (process, base URL with /v1)."""
    port = free_port()
    argv = [sys.executable, "-m", "bench.fake_openai_server", "--host", "127.0.0.1", "--port", str(port)]
    proc = spawn(f"fake-openai-{port}", argv, log_dir, os.environ)
    base = f"http://127.0.0.1:{port}/v1"
    wait_http(proc, base + "/models")
    return proc, base


@dataclass
class Server:
    """A running ``textnlp serve`` and what a test needs to talk to it."""

    base_url: str
    admin_key: str
    data_dir: Path
    workers: int
    proc: Proc
    fake_base_url: str | None = None
    _admin: httpx.Client | None = field(default=None, repr=False)

    @property
    def admin(self) -> httpx.Client:
        if self._admin is None:
            self._admin = self.client(self.admin_key)
        return self._admin

    def client(self, key: str | None = None, *, headers: Mapping[str, str] | None = None, **kw: Any) -> httpx.Client:
        merged = {**(headers or {}), **({"authorization": f"Bearer {key}"} if key else {})}
        return httpx.Client(base_url=self.base_url, headers=merged, timeout=30.0, **kw)

    def create_tenant(
        self,
        name: str = "tenant",
        *,
        scopes: list[str] | None = None,
        limits: dict[str, Any] | None = None,
    ) -> Tenant:
        created = self.admin.post("/admin/tenants", json={"name": name})
        assert created.status_code == 201, created.text
        tenant_id = created.json()["id"]
        if limits is not None:
            set_limits = self.admin.put(f"/admin/tenants/{tenant_id}/limits", json=limits)
            assert set_limits.status_code == 200, set_limits.text
        key = self.create_key(tenant_id, scopes=scopes)
        return Tenant(tenant_id, key["key"], key["id"])

    def create_key(self, tenant_id: str, *, name: str = "k", scopes: list[str] | None = None) -> dict[str, Any]:
        body: dict[str, Any] = {"name": name}
        if scopes is not None:
            body["scopes"] = scopes
        response = self.admin.post(f"/admin/tenants/{tenant_id}/keys", json=body)
        assert response.status_code == 201, response.text
        data: dict[str, Any] = response.json()
        return data

    def register_fake_models(self) -> None:
        """``fake-gen`` (generation) and ``fake-embed`` (embedding), both routed to the fake backend."""
        assert self.fake_base_url is not None
        route = {"type": "openai", "base_url": self.fake_base_url, "model": "fake-model"}
        for model_id, kind in ((FAKE_GEN, "generation"), (FAKE_EMBED, "embedding")):
            body = {
                "id": model_id,
                "kind": kind,
                "backend": route,
                "context_length": 4096,
                "max_output_tokens": 256,
                "max_retries": 0,
                "timeout_s": 10,
            }
            response = self.admin.post("/admin/models", json=body)
            assert response.status_code in (201, 409), response.text

    def close(self) -> None:
        if self._admin is not None:
            self._admin.close()
        self.proc.stop()


FAKE_GEN = "fake-gen"
FAKE_EMBED = "fake-embed"


@dataclass(frozen=True)
class Tenant:
    id: str
    key: str
    key_id: str


@contextlib.contextmanager
def run_server(
    data_dir: Path, *, workers: int = 1, env: Mapping[str, str] | None = None, fake_base_url: str | None = None
) -> Iterator[Server]:
    """``textnlp --data-dir DIR serve`` on a free port; stopped on exit, also when the body raises."""
    port = free_port()
    full_env = {
        **os.environ,
        "TEXTNLP_ADMIN_KEY": ADMIN_KEY,
        "TEXTNLP_KEY_CACHE_TTL": "0.2",
        "TEXTNLP_TENANT_CACHE_TTL": "0.2",
        "TEXTNLP_MODEL_CACHE_TTL": "0.2",
        "TEXTNLP_LOG_LEVEL": "INFO",
        **(env or {}),
    }
    full_env.pop("TEXTNLP_DATA_DIR", None)
    entry = (
        [str(VENV_BIN / "textnlp")]
        if (VENV_BIN / "textnlp").exists()
        else [sys.executable, "-m", "functions.local.cli"]
    )
    argv = [
        *entry,
        "--data-dir",
        str(data_dir),
        "serve",
        "--host",
        "127.0.0.1",
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    proc = spawn(f"textnlp-{port}", argv, data_dir.parent / "logs", full_env)
    admin_key = full_env["TEXTNLP_ADMIN_KEY"]
    server = Server(f"http://127.0.0.1:{port}", admin_key, data_dir, workers, proc, fake_base_url)
    try:
        wait_http(proc, server.base_url + "/health")
        # Every worker must answer an authenticated call (models come from the shared store).
        for _ in range(4 * workers):
            wait_http(proc, server.base_url + "/v1/models", headers={"authorization": f"Bearer {admin_key}"})
        if fake_base_url is not None:
            server.register_fake_models()
        yield server
    finally:
        server.close()


def error_code(response: httpx.Response) -> str | None:
    body = response.json()
    assert set(body) == {"error"}, body
    assert set(body["error"]) >= {"message", "type", "code", "param"}, body
    code: str | None = body["error"]["code"]
    return code
