"""SQLiteStore under contention: conditional counter writes never overshoot across processes and threads."""

from __future__ import annotations

import multiprocessing
import threading
from multiprocessing.synchronize import Barrier
from pathlib import Path
from typing import Any

import pytest

from adapters.local.memory_store import MemoryStore
from adapters.local.sqlite_store import SQLiteStore
from core.domain import UsageRecord

WORKERS = 4
ATTEMPTS = 50
STEP = 7
LIMIT = 1000
EXPECTED_OK = LIMIT // STEP  # 142
EXPIRES_AT = 4102444800.0  # 2100-01-01, far enough for the test never to see expiry
SHARED_REQUEST_IDS = 10


def _usage(request_id: str) -> UsageRecord:
    return UsageRecord(request_id, "t1", "k1", "m", "/v1/completions", 3, 4, False, 1.0, 200, 1.7e9, 0.5)


def _hammer(store: SQLiteStore | MemoryStore) -> tuple[int, int]:
    """Try the same reservation ATTEMPTS times and record the shared usage ids; count the wins."""
    ok = 0
    for _ in range(ATTEMPTS):
        applied, values = store.try_add("item", {"t": STEP}, {"t": LIMIT}, EXPIRES_AT)
        assert values.get("t", 0) <= LIMIT
        ok += applied
    recorded = sum(store.record_usage(_usage(f"r{i}")) for i in range(SHARED_REQUEST_IDS))
    return ok, recorded


def _process_worker(path: str, barrier: Barrier, results: Any) -> None:
    barrier.wait(timeout=60)  # every process opens the new file (and creates its schema) at once
    store = SQLiteStore(path)
    try:
        results.put(_hammer(store))
    finally:
        store.close()


def test_processes_never_overshoot_the_limit(tmp_path: Path) -> None:
    ctx = multiprocessing.get_context("spawn")
    path = str(tmp_path / "shared.db")
    barrier = ctx.Barrier(WORKERS)
    results = ctx.Queue()
    procs = [ctx.Process(target=_process_worker, args=(path, barrier, results)) for _ in range(WORKERS)]
    for p in procs:
        p.start()
    outcomes = [results.get(timeout=120) for _ in procs]
    for p in procs:
        p.join(timeout=60)
        assert p.exitcode == 0
    assert sum(ok for ok, _ in outcomes) == EXPECTED_OK
    assert sum(recorded for _, recorded in outcomes) == SHARED_REQUEST_IDS
    store = SQLiteStore(path)
    try:
        assert store.read("item") == {"t": EXPECTED_OK * STEP}  # 994
        [agg] = store.daily_usage("t1", "2000-01-01", "2100-01-01")
        assert agg.requests == SHARED_REQUEST_IDS
        assert agg.prompt_tokens == 3 * SHARED_REQUEST_IDS
    finally:
        store.close()


@pytest.mark.parametrize("kind", ["sqlite", "memory"])
def test_threads_never_overshoot_the_limit(tmp_path: Path, kind: str) -> None:
    store: SQLiteStore | MemoryStore = SQLiteStore(tmp_path / "t.db") if kind == "sqlite" else MemoryStore()
    barrier = threading.Barrier(8)
    outcomes: list[tuple[int, int]] = []
    errors: list[BaseException] = []

    def run() -> None:
        try:
            barrier.wait(timeout=30)
            outcomes.append(_hammer(store))
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=run) for _ in range(8)]
    for t in threads:
        t.start()
    for t in threads:
        t.join(timeout=120)
    try:
        assert errors == []
        assert sum(ok for ok, _ in outcomes) == EXPECTED_OK
        assert sum(recorded for _, recorded in outcomes) == SHARED_REQUEST_IDS
        assert store.read("item") == {"t": EXPECTED_OK * STEP}
    finally:
        store.close()
