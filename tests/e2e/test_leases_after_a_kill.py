"""A server killed with reservations in flight (single requests, a batch): after the lease bound, the tenant's
exact remaining quota is spendable again, and what was charged equals the usage records.

The server runs with TEXTNLP_MAX_REQUEST_S=2 and TEXTNLP_CLOCK_SKEW_S=0.5, so the bound (core.leases) is
about 3.3 s instead of 21 minutes.
"""

from __future__ import annotations

import json
import os
import signal
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from core.leases import LeaseClock
from tests.e2e import _support
from tests.e2e._support import Server, error_code

pytestmark = pytest.mark.e2e
LEASES = LeaseClock(max_request_s=2.0, clock_skew_s=0.5)
ENV = {"TEXTNLP_MAX_REQUEST_S": "2", "TEXTNLP_CLOCK_SKEW_S": "0.5"}
QUOTA = 600


def register(srv: Server, model_id: str, upstream: str) -> None:
    assert srv.fake_base_url is not None
    route = {"type": "openai", "base_url": srv.fake_base_url, "model": upstream}
    body = {"id": model_id, "kind": "generation", "backend": route, "context_length": 4096}
    response = srv.admin.post("/admin/models", json={**body, "max_output_tokens": 1024, "max_retries": 0})
    assert response.status_code in (201, 409), response.text


@pytest.fixture
def data_dir(e2e_dir: Path, request: pytest.FixtureRequest) -> Path:
    return e2e_dir / f"leases-{request.node.name[:40]}"


def start(data_dir: Path, fake_openai: str) -> Iterator[Server]:
    with _support.run_server(data_dir, env=ENV, fake_base_url=fake_openai) as srv:
        for model_id, upstream in (("big", "fake-model"), ("hangs", "fault:hang"), ("slow", "fault:slow-400ms")):
            register(srv, model_id, upstream)
        yield srv


def kill(srv: Server) -> None:
    """SIGKILL: nothing runs after it, as when a node is lost or a container is reaped."""
    os.killpg(srv.proc.popen.pid, signal.SIGKILL)
    srv.proc.popen.wait(timeout=10)


def spend(srv: Server, key: str, tokens: int) -> httpx.Response:
    """A request that reserves exactly ``tokens`` (prompt "x": a bound of 2, plus max_tokens)."""
    body = {"model": "big", "prompt": "x", "max_tokens": tokens - 2}
    return httpx.post(srv.base_url + "/v1/completions", json=body, headers={"authorization": f"Bearer {key}"})


def charged(srv: Server, tenant_id: str) -> int:
    totals = srv.admin.get("/admin/usage", params={"tenant": tenant_id, "group_by": "none"}).json()
    return int(totals["totals"]["prompt_tokens"] + totals["totals"]["completion_tokens"])


def wait_for_the_bound(started: float) -> None:
    time.sleep(max(0.0, started + LEASES.bound_s + 0.3 - time.monotonic()))


def test_requests_in_flight_when_the_server_is_killed(data_dir: Path, fake_openai: str) -> None:
    servers = start(data_dir, fake_openai)
    srv = next(servers)
    t = srv.create_tenant("killed-requests", limits={"token_quota": QUOTA})
    body = {"model": "hangs", "prompt": "x", "max_tokens": 100}
    headers = {"authorization": f"Bearer {t.key}"}

    def call_and_lose_the_server() -> None:
        with pytest.raises(httpx.TransportError):  # the server dies under it
            httpx.post(srv.base_url + "/v1/completions", json=body, headers=headers, timeout=30)

    callers = [threading.Thread(target=call_and_lose_the_server, daemon=True) for _ in range(4)]
    for caller in callers:
        caller.start()
    time.sleep(0.8)  # all four have reserved 102 tokens and wait for the model
    leaked_at = time.monotonic()
    kill(srv)
    servers.close()
    for caller in callers:
        caller.join(timeout=10)

    servers = start(data_dir, fake_openai)
    srv = next(servers)
    try:
        refused = spend(srv, t.key, QUOTA)
        assert refused.status_code == 429, refused.text  # 408 tokens are still held by the dead requests
        assert error_code(refused) == "insufficient_quota"
        wait_for_the_bound(leaked_at)
        assert charged(srv, t.id) == 0  # nothing was served, nothing is billed
        assert spend(srv, t.key, QUOTA + 1).status_code == 429  # the quota is exact: not one token more
        whole = spend(srv, t.key, QUOTA)
        assert whole.status_code == 200, whole.text  # the whole quota is spendable again
        left = QUOTA - charged(srv, t.id)
        assert spend(srv, t.key, left + 1).status_code == 429
        assert spend(srv, t.key, left).status_code == 200
    finally:
        servers.close()


def test_a_batch_in_flight_when_the_server_is_killed(data_dir: Path, fake_openai: str) -> None:
    servers = start(data_dir, fake_openai)
    srv = next(servers)
    t = srv.create_tenant("killed-batch", limits={"token_quota": QUOTA})
    folder = srv.data_dir / "batch-input" / t.id
    folder.mkdir(parents=True, exist_ok=True)
    rows = [{"model": "slow", "prompt": f"line {i}", "max_tokens": 20} for i in range(16)]
    (folder / "run.jsonl").write_bytes(b"".join(json.dumps(r).encode() + b"\n" for r in rows))
    time.sleep(1.2)  # the trigger picked it up; lines are in flight on the slow model
    leaked_at = time.monotonic()
    kill(srv)
    servers.close()

    servers = start(data_dir, fake_openai)
    srv = next(servers)
    try:
        out = srv.data_dir / "batch-output" / t.id / "run.errors.jsonl"
        deadline = time.monotonic() + 60
        while not out.exists():  # the restarted server resumes the batch and finishes it
            assert time.monotonic() < deadline, "the batch did not resume"
            time.sleep(0.2)
        wait_for_the_bound(leaked_at)
        billed = charged(srv, t.id)
        assert billed == 16 * 4  # each line once: 2 prompt + 2 completion tokens ("line i")
        left = QUOTA - billed
        assert spend(srv, t.key, left + 1).status_code == 429
        spent = spend(srv, t.key, left)
        assert spent.status_code == 200, spent.text  # every dead line's reservation is back
    finally:
        servers.close()
