"""Limits under real concurrency: 4 processes x 50 requests against a 2-worker server."""

from __future__ import annotations

import multiprocessing
import time
from typing import Any

import httpx
import pytest

from adapters.local.sqlite_store import SQLiteStore
from tests.e2e import _loadgen
from tests.e2e._support import FAKE_GEN, Server, error_code

pytestmark = pytest.mark.e2e

PROCESSES = 4
PER_PROCESS = 50
TOTAL = PROCESSES * PER_PROCESS
PROMPT_WORDS = 10
MAX_TOKENS = 40


def burst(server: Server, key: str) -> list[dict[str, Any]]:
    """200 requests at once from 4 spawned processes; every result, in request order."""
    ctx = multiprocessing.get_context("spawn")
    barrier = ctx.Barrier(PROCESSES)
    queue = ctx.Queue()
    spec = {
        "base_url": server.base_url,
        "key": key,
        "model": FAKE_GEN,
        "max_tokens": MAX_TOKENS,
        "prompt_words": PROMPT_WORDS,
    }
    procs = [
        ctx.Process(target=_loadgen.run, args=(spec, list(range(p, TOTAL, PROCESSES)), barrier, queue), daemon=True)
        for p in range(PROCESSES)
    ]
    for proc in procs:
        proc.start()
    try:
        results = [r for _ in procs for r in queue.get(timeout=90)]
    finally:
        for proc in procs:
            proc.join(timeout=10)
            if proc.is_alive():
                proc.kill()
    assert sorted(r["index"] for r in results) == list(range(TOTAL))
    return sorted(results, key=lambda r: r["index"])


def totals(server: Server, tenant_id: str, key: str) -> tuple[dict[str, Any], dict[str, Any]]:
    admin = server.admin.get("/admin/usage", params={"tenant": tenant_id, "group_by": "none"})
    with server.client(key) as c:
        own = c.get("/v1/usage", params={"group_by": "none"})
    assert admin.status_code == own.status_code == 200
    return admin.json()["totals"], own.json()["totals"]


def check_no_server_errors(results: list[dict[str, Any]]) -> None:
    bad = [r for r in results if r["status"] not in (200, 429)]
    assert not bad, bad[:3]
    for r in results:
        if r["status"] == 200:
            assert r["usage"] is not None, r
            assert r["usage"]["total_tokens"] == r["usage"]["prompt_tokens"] + r["usage"]["completion_tokens"]
            assert not r.get("errors"), r
            assert r.get("done", True), r


def per_worker_generated(server: Server, tenant_id: str, samples: int = 20) -> set[float]:
    """tokens_generated_total of one tenant as the workers that answer GET /metrics see it."""
    pattern = f'textnlp_tokens_generated_total{{model="{FAKE_GEN}",tenant="{tenant_id}"}} '
    seen = set()
    for _ in range(samples):
        text = httpx.get(server.base_url + "/metrics").text  # a new connection each time
        values = [float(line[len(pattern) :]) for line in text.splitlines() if line.startswith(pattern)]
        seen.add(values[0] if values else 0.0)
    return seen


def wait_for_fresh_minute(margin_s: float = 8.0) -> None:
    """Fixed one-minute windows: keep a burst from straddling two of them."""
    into = time.time() % 60
    if into > 60 - margin_s:
        time.sleep(60 - into + 0.05)


@pytest.fixture(params=["one item", "8 shards"])
def race_server(request: pytest.FixtureRequest) -> Server:
    """The 2-worker server with one counters item per tenant, and with counters spread over 8 shards."""
    name = "server_2w" if request.param == "one item" else "server_2w_sharded"
    server: Server = request.getfixturevalue(name)
    return server


def spread_over(server: Server, tenant_id: str) -> list[int]:
    """The shards of the tenant's quota counters that hold or spent a budget (read from the server's file)."""
    month = time.strftime("%Y-%m", time.gmtime())
    store = SQLiteStore(server.data_dir / "textnlp.db")
    try:
        return [s for s in range(1, 9) if store.read(f"q|{tenant_id}|{month}|{s}")]
    finally:
        store.close()


def test_token_quota_holds_under_concurrency(race_server: Server) -> None:
    server_2w = race_server
    quota = 3000
    t = server_2w.create_tenant("quota-burst", limits={"token_quota": quota})
    results = burst(server_2w, t.key)
    check_no_server_errors(results)

    ok = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] == 429]
    granted = sum(r["usage"]["total_tokens"] for r in ok)
    # The fake answers with the prompt's words: 10 prompt + 10 completion tokens per request.
    assert all(r["usage"]["total_tokens"] == 2 * PROMPT_WORDS for r in ok)
    assert granted <= quota
    assert ok, "the quota admits some requests"
    assert refused, "and refuses others: 200 x 20 tokens is more than the quota"
    for r in refused:
        assert r["error"]["code"] == "insufficient_quota", r
        assert r["error"]["type"] == "insufficient_quota", r
        assert int(r["headers"]["retry-after"]) >= 1, r

    admin_totals, own_totals = totals(server_2w, t.id, t.key)
    assert admin_totals == own_totals
    assert admin_totals["total_tokens"] == granted
    assert admin_totals["requests"] == len(ok)
    assert (admin_totals["prompt_tokens"], admin_totals["completion_tokens"]) == (
        sum(r["usage"]["prompt_tokens"] for r in ok),
        sum(r["usage"]["completion_tokens"] for r in ok),
    )

    # Both workers served part of the burst (metrics are per worker process).
    completion = sum(r["usage"]["completion_tokens"] for r in ok)
    seen = per_worker_generated(server_2w, t.id)
    assert any(0 < v < completion for v in seen), (seen, completion)
    if len(seen) == 2:
        assert sum(seen) == completion

    # Every reservation was settled: what is left of the quota is exactly quota - granted. A request
    # whose reservation (prompt bytes + 1 + max_tokens) needs one token more is refused; exactly that
    # much is admitted.
    left = quota - granted
    assert left >= 3
    sharded = race_server.data_dir.name.endswith("sharded")
    with server_2w.client(t.key) as c:

        def reserving(tokens: int) -> dict[str, Any]:
            max_tokens = min(256, tokens - 2)
            prompt = "p" * (tokens - 1 - max_tokens)
            return {"model": FAKE_GEN, "prompt": prompt, "max_tokens": max_tokens}

        over = c.post("/v1/completions", json=reserving(left + 1))
        assert over.status_code == 429
        assert error_code(over) == "insufficient_quota"
        # With shards, a worker that saw everything free fall short during the burst refuses bigger requests
        # without asking the store again for a while (ShardPolicy.refusal_memo_s, doubling up to
        # refusal_memo_max_s, 16 s): the design's stated bound on refusals while budget is left.
        deadline = time.monotonic() + (17.0 if sharded else 0.0)
        while True:
            exact = c.post("/v1/completions", json=reserving(left))
            if exact.status_code == 200 or time.monotonic() > deadline:
                break
            assert error_code(exact) == "insufficient_quota", exact.text
            time.sleep(0.5)
        assert exact.status_code == 200, exact.text
        granted += exact.json()["usage"]["total_tokens"]
    assert totals(server_2w, t.id, t.key)[0]["total_tokens"] == granted <= quota


def test_a_tenant_with_a_large_quota_spreads_its_counters_and_is_charged_exactly(server_2w_sharded: Server) -> None:
    """Budget enough for every request: the 8 shards share it (a quota nearly spent is served by the window's
    own item alone, core.budget_shards' scarce mode: the test above)."""
    t = server_2w_sharded.create_tenant("quota-large", limits={"token_quota": 1_000_000})
    results = burst(server_2w_sharded, t.key)
    check_no_server_errors(results)
    assert all(r["status"] == 200 for r in results)
    assert len(spread_over(server_2w_sharded, t.id)) > 2, "the counters did spread"
    granted = sum(r["usage"]["total_tokens"] for r in results)
    assert totals(server_2w_sharded, t.id, t.key)[0]["total_tokens"] == granted


def test_requests_per_minute_holds_under_concurrency(race_server: Server) -> None:
    server_2w = race_server
    sharded = race_server.data_dir.name.endswith("sharded")
    t = server_2w.create_tenant("rpm-burst", limits={"requests_per_minute": 50})
    wait_for_fresh_minute()
    results = burst(server_2w, t.key)
    check_no_server_errors(results)
    ok = [r for r in results if r["status"] == 200]
    refused = [r for r in results if r["status"] == 429]
    assert len(ok) == 50
    assert len(refused) == TOTAL - 50
    for r in refused:
        assert r["error"]["code"] == "rate_limit_exceeded", r
        assert 1 <= int(r["headers"]["retry-after"]) <= 60
        assert r["headers"]["x-ratelimit-limit-requests"] == "50"
        assert r["headers"]["x-ratelimit-remaining-requests"] == "0"
    remaining = sorted(int(r["headers"]["x-ratelimit-remaining-requests"]) for r in ok)
    if not sharded:  # with shards, an admitted request's remaining count is an estimate (core.budget_shards)
        assert remaining == list(range(50))  # each admitted request saw its own slot
    admin_totals, own_totals = totals(server_2w, t.id, t.key)
    assert admin_totals == own_totals
    assert admin_totals["requests"] == 50
    assert admin_totals["total_tokens"] == sum(r["usage"]["total_tokens"] for r in ok)
