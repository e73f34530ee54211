"""Store calls off the event loop: the local server over a store that takes 20 ms per call, at concurrency 32.

The local ASGI app (``functions.local.asgi.LocalApp`` under uvicorn, in a thread of this process) serves a
gateway whose store is ``SlowStore``: a ``MemoryStore`` that sleeps ``--delay-ms`` in every call
(``time.sleep``: real stores block the calling thread) and counts the calls. The backend is the zero-latency
fake (``bench.fake_openai_server``); the tenant and key have rpm, tpm and a quota. ``bench.loadgen`` drives
POST /v1/chat/completions (never cached) at ``--concurrency``.

If requests overlap their store calls, the ceiling is ``concurrency / (calls per request x delay)``; the goal
is at least 80 % of it. The baseline, same run: ``store_threads=0`` (store calls on the event loop, as before),
where requests queue behind each other's calls: ``1 / (calls per request x delay)`` at best.

    python -m bench.slow_store [--delay-ms 20] [--concurrency 32] [--duration 4] [--warmup 1]
"""

from __future__ import annotations

import argparse
import threading
import time
from collections import Counter
from typing import Any

from adapters.local.memory_store import MemoryStore
from adapters.local.prometheus import PrometheusMetrics
from bench._procs import HIGH_LIMITS, chat_bodies, free_port, host_note, start_fake, stop, wait_http
from bench.loadgen import LoadResult, run_load
from core.app import Gateway
from core.auth import api_keys
from core.domain import Limits, ModelSpec, Tenant
from core.settings import GatewaySettings
from functions.local.asgi import LocalApp
from functions.local.backends import LocalBackends

GOAL = 0.80


class SlowStore:
    """Every Store method of the wrapped store, each call ``delay_s`` slower (blocking, as a real store's I/O
    is), counted by name and by the thread that made it (tests/unit/test_store_off_loop.py uses it too)."""

    def __init__(self, inner: MemoryStore, delay_s: float) -> None:
        self._inner = inner
        self.delay_s = delay_s
        self.calls: Counter[str] = Counter()
        self.threads: set[int] = set()
        self._lock = threading.Lock()

    def __getattr__(self, name: str) -> Any:
        attr = getattr(self._inner, name)
        if name.startswith("_") or not callable(attr):
            return attr

        def slow(*args: Any, **kwargs: Any) -> Any:
            with self._lock:
                self.calls[name] += 1
                self.threads.add(threading.get_ident())
            time.sleep(self.delay_s)
            return attr(*args, **kwargs)

        return slow


def _seeded(fake_port: int) -> tuple[MemoryStore, str]:
    store = MemoryStore()
    now = time.time()
    limits = Limits(
        requests_per_minute=HIGH_LIMITS["requests_per_minute"],
        tokens_per_minute=HIGH_LIMITS["tokens_per_minute"],
        token_quota=HIGH_LIMITS["token_quota"],
    )
    store.put_model(
        ModelSpec(
            id="bench",
            kind="generation",
            backend={"type": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1", "model": "m"},
            context_length=4096,
            max_output_tokens=64,
        )
    )
    store.put_tenant(Tenant(id="ten_bench", name="bench", created_at=now, limits=limits))
    key, record = api_keys.mint("ten_bench", "bench", frozenset({"generate"}), now, limits=limits)
    store.put_key(record)
    return store, key


def measure(
    fake_port: int, store_threads: int, delay_s: float, concurrency: int, duration: float, warmup: float
) -> tuple[LoadResult, float, Counter[str]]:
    """One server over a fresh slow store: the load's result, store calls per request, and the calls by method."""
    import uvicorn

    inner, key = _seeded(fake_port)
    store = SlowStore(inner, delay_s)
    metrics = PrometheusMetrics()
    settings = GatewaySettings(log_level="WARNING", store_threads=store_threads)
    gateway = Gateway(store, LocalBackends(), settings=settings, metrics=metrics)
    port = free_port()
    config = uvicorn.Config(
        LocalApp(gateway, metrics), host="127.0.0.1", port=port, log_level="warning", lifespan="off", access_log=False
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    try:
        wait_http(port, "/health")
        result = run_load(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            chat_bodies("bench"),
            headers={"Authorization": f"Bearer {key}"},
            concurrency=concurrency,
            duration_s=duration,
            warmup_s=warmup,
        )
    finally:
        server.should_exit = True
        thread.join(timeout=30)
        gateway.offload.close()
    calls = Counter(store.calls)
    requests = calls["record_usage"]  # one usage record per request, warm-up included
    per_request = sum(calls.values()) / requests if requests else float("nan")
    return result, per_request, calls


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--delay-ms", type=float, default=20.0)
    p.add_argument("--concurrency", type=int, default=32)
    p.add_argument("--duration", type=float, default=4.0, help="measured seconds per variant")
    p.add_argument("--warmup", type=float, default=1.0)
    p.add_argument("--threads", type=int, default=GatewaySettings().store_threads, help="store_threads when on")
    args = p.parse_args(argv)
    delay, c = args.delay_ms / 1000, args.concurrency
    print(f"== store calls off the event loop: local server, store {args.delay_ms:g} ms per call, c={c} ==")
    print(f"   {host_note()}")
    fake_port = free_port()
    fake = start_fake(fake_port)
    try:
        variants = {
            f"offloaded (store_threads={args.threads})": args.threads,
            "on the loop (store_threads=0)": 0,
        }
        rows = {
            label: measure(fake_port, threads, delay, c, args.duration, args.warmup)
            for label, threads in variants.items()
        }
    finally:
        stop(fake)
    for label, (r, per_request, calls) in rows.items():
        ceiling = c / (per_request * delay)
        bad = sum(v for k, v in r.statuses.items() if k != "200") + r.errors
        verdict = "ok" if r.rps >= GOAL * ceiling else "below goal"
        print(
            f"  {label:<32} {r.rps:7.1f} req/s  p50 {r.pct(50):7.1f} ms  store calls/request {per_request:4.2f}"
            f"  ceiling {ceiling:6.1f} req/s  ratio {r.rps / ceiling:6.1%} (goal >= {GOAL:.0%}: {verdict})  bad {bad}"
        )
        print(f"     calls by method: {dict(calls.most_common())}")
    off_loop = next(iter(rows.values()))[0].rps
    on_loop = list(rows.values())[-1][0].rps
    print(f"   offloading: {off_loop / on_loop:.1f}x the req/s of store calls on the loop")
    print(f"   {host_note()}")


if __name__ == "__main__":
    main()
