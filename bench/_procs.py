"""Helpers shared by the benchmarks: free ports, child processes, CPU pinning, admin setup."""

from __future__ import annotations

import http.client
import json
import os
import socket
import subprocess
import sys
import time
from collections.abc import Mapping
from pathlib import Path
from typing import IO, Any

ROOT = Path(__file__).resolve().parent.parent
ADMIN_KEY = "bench-admin-key-0123456789abcdef"
# High enough never to refuse, but set, so every request takes the limit path (rpm, tpm, quota).
HIGH_LIMITS = {"requests_per_minute": 10**9, "tokens_per_minute": 10**12, "token_quota": 10**15}


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def host_note() -> str:
    """CPUs and load average: other work on the host skews every figure printed here."""
    load1, load5, _ = os.getloadavg()
    python = sys.version.split()[0]
    return f"host: {os.cpu_count()} CPUs, load average {load1:.2f} (1 min) {load5:.2f} (5 min), Python {python}"


def cpu_plan() -> tuple[set[int] | None, set[int] | None]:
    """(server CPUs, helper CPUs): with 2+ CPUs, the measured server gets CPU 0 to itself."""
    cpus = sorted(os.sched_getaffinity(0))
    if len(cpus) < 2:
        return None, None
    return {cpus[0]}, set(cpus[1:])


def pin(pid: int, cpus: set[int] | None) -> None:
    if cpus:
        os.sched_setaffinity(pid, cpus)


def spawn(
    args: list[str], *, env: Mapping[str, str] | None = None, cpus: set[int] | None = None, log: IO[bytes] | None = None
) -> subprocess.Popen[bytes]:
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=log or subprocess.DEVNULL,
        stderr=log or subprocess.DEVNULL,
    )
    pin(proc.pid, cpus)
    return proc


def stop(proc: subprocess.Popen[bytes]) -> None:
    if proc.poll() is None:
        proc.terminate()
        try:
            proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()


def wait_http(port: int, path: str = "/", timeout_s: float = 30.0, proc: subprocess.Popen[bytes] | None = None) -> None:
    """Until something answers HTTP on the port (any status)."""
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc is not None and proc.poll() is not None:
            raise RuntimeError(f"the server exited with {proc.returncode}")
        try:
            request("GET", port, path)
            return
        except OSError:
            time.sleep(0.02)
    raise RuntimeError(f"nothing answered on port {port} within {timeout_s} s")


def request(
    method: str, port: int, path: str, body: Any = None, key: str | None = None, timeout_s: float = 10.0
) -> tuple[int, Any]:
    conn = http.client.HTTPConnection("127.0.0.1", port, timeout=timeout_s)
    try:
        headers = {"Content-Type": "application/json"}
        if key:
            headers["Authorization"] = f"Bearer {key}"
        raw = json.dumps(body).encode() if body is not None else None
        conn.request(method, path, body=raw, headers=headers)
        response = conn.getresponse()
        data = response.read()
        try:
            return response.status, json.loads(data) if data else None
        except ValueError:
            return response.status, data
    finally:
        conn.close()


def _ok(status: int, data: Any, what: str) -> Any:
    if status >= 300:
        raise RuntimeError(f"{what} failed: {status} {data}")
    return data


def start_fake(port: int, cpus: set[int] | None = None, latency_ms: float = 0.0) -> subprocess.Popen[bytes]:
    proc = spawn(["-m", "bench.fake_openai_server", "--port", str(port), "--latency-ms", str(latency_ms)], cpus=cpus)
    wait_http(port, "/v1/models", proc=proc)
    return proc


def start_gateway(
    data_dir: Path, port: int, cpus: set[int] | None = None, env: Mapping[str, str] | None = None
) -> subprocess.Popen[bytes]:
    """``textnlp serve --workers 1``; its JSON request log goes to a file, as it would in a container."""
    log = open(data_dir / "server.log", "ab")  # noqa: SIM115 - the child holds it
    proc = spawn(
        ["-m", "functions.local.cli", "--data-dir", str(data_dir), "serve", "--port", str(port), "--workers", "1"],
        env={"TEXTNLP_ADMIN_KEY": ADMIN_KEY, **(env or {})},
        cpus=cpus,
        log=log,
    )
    log.close()
    wait_http(port, "/health", proc=proc)
    return proc


def setup_tenant(port: int, fake_port: int, model_id: str = "bench") -> str:
    """Register the model routed to the fake, a tenant and a key, both with (high) limits; the key."""
    model = {
        "id": model_id,
        "kind": "generation",
        "backend": {"type": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1", "model": "m"},
        "context_length": 4096,
        "max_output_tokens": 64,
    }
    status, data = request("POST", port, "/admin/models", model, ADMIN_KEY)
    if status != 409:
        _ok(status, data, "register model")
    tenant = _ok(*request("POST", port, "/admin/tenants", {"name": "bench"}, ADMIN_KEY), "create tenant")
    tid = tenant["id"]
    _ok(*request("PUT", port, f"/admin/tenants/{tid}/limits", HIGH_LIMITS, ADMIN_KEY), "tenant limits")
    key = _ok(
        *request("POST", port, f"/admin/tenants/{tid}/keys", {"name": "bench", "scopes": ["generate"]}, ADMIN_KEY),
        "create key",
    )
    _ok(*request("PUT", port, f"/admin/keys/{key['id']}/limits", HIGH_LIMITS, ADMIN_KEY), "key limits")
    secret: str = key["key"]
    return secret


def chat_bodies(model: str, n: int = 16, max_tokens: int = 16) -> list[bytes]:
    """Non-deterministic chat requests (temperature > 0, no seed): never served from the cache."""
    return [
        json.dumps(
            {
                "model": model,
                "messages": [
                    {"role": "system", "content": "You are a concise assistant."},
                    {"role": "user", "content": f"Write one short sentence about the number {i} and the sea."},
                ],
                "max_tokens": max_tokens,
                "temperature": 0.7,
            },
            separators=(",", ":"),
        ).encode()
        for i in range(n)
    ]
