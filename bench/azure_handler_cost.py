"""Per-request cost of the Azure function app with Cosmos DB on its local server, against the same on memory.

``functions.azure.function_app.serve`` (what the ``api`` function does) on a warm runtime of the bench's own, on
one event loop (the worker's), POST /v1/chat/completions as an ``azure.functions.HttpRequest`` (sampled, so never
cached) to the zero-latency fake OpenAI backend, for a tenant and key with rpm, tpm and a quota set (every limit
path taken). Variants, each over ``--requests`` requests after a warm-up, one at a time:

* Cosmos DB: the runtime ``functions.azure.bootstrap.build_runtime`` makes (``CosmosStore`` on the Cosmos DB
  server, in its own process group; the Blob client on Azurite);
* memory: the same runtime on ``MemoryStore``: what the function costs without a database;
* baseline: one Cosmos DB point read (the tenant) through the store.

The Cosmos DB round trips one request makes are counted at the HTTP transport (azure-core's ``RequestsTransport``:
one per request sent, the store's own retries included), by method and resource, with the request units the
server reports (``x-ms-request-charge``; the local server charges 1 per call, which says nothing of Azure's RU).
With 2+ CPUs the measured process runs on CPU 0, the emulators and the fake on the others.

    python -m bench.azure_handler_cost [--requests 200]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import re
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._procs import HIGH_LIMITS, chat_bodies, cpu_plan, free_port, host_note, pin, start_fake, stop
from bench.azure_cold_start import Emulators, create_container, store_of

MODEL = "bench"
_RESOURCE = re.compile(r"/(docs|colls|dbs|pkranges|offers)(?:/[^/]+)?/?$")


class TripCounter:
    """HTTP requests to one host (the Cosmos DB server), by method and resource, and their request units."""

    def __init__(self, host: str) -> None:
        from azure.core.pipeline.transport import RequestsTransport

        self.host = host
        self.count: Counter[str] = Counter()
        self.charge = 0.0
        self.charged = 0
        original = RequestsTransport.send
        counter = self

        def send(transport: Any, request: Any, **kwargs: Any) -> Any:
            response = original(transport, request, **kwargs)
            if counter.host in request.url:
                found = _RESOURCE.search(request.url.split("?")[0])
                counter.count[f"{request.method} {found.group(1) if found else 'account'}"] += 1
                charge = response.headers.get("x-ms-request-charge")
                if charge:
                    counter.charge += float(charge)
                    counter.charged += 1
            return response

        RequestsTransport.send = send  # type: ignore[method-assign]

    def reset(self) -> None:
        self.count.clear()
        self.charge, self.charged = 0.0, 0


def _model(fake_port: int) -> Any:
    from core.domain import ModelSpec

    return ModelSpec(
        id=MODEL,
        kind="generation",
        backend={"type": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1", "model": "m"},
        context_length=4096,
        max_output_tokens=64,
    )


def _poster(rt: Any, key: str, runner: asyncio.Runner) -> Callable[[bytes], Any]:
    """POST a body to ``function_app.serve`` on the runtime ``rt`` (what the worker does for ``api``)."""
    import azure.functions as func

    from functions.azure.function_app import serve

    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}

    def post(body: bytes) -> Any:
        req = func.HttpRequest(
            "POST",
            "http://localhost/v1/chat/completions",
            headers=headers,
            params={},
            route_params={"path": "v1/chat/completions"},
            body=body,
        )
        return runner.run(serve(rt, req))

    return post


def _time(post: Callable[[bytes], Any], bodies: list[bytes]) -> tuple[list[float], float]:
    """Wall milliseconds per request, and this process's CPU milliseconds per request."""
    samples = []
    gc.collect()
    cpu0 = time.process_time()
    for body in bodies:
        t0 = time.perf_counter()
        answer = post(body)
        samples.append((time.perf_counter() - t0) * 1000)
        if answer.status_code != 200:
            raise RuntimeError(f"{answer.status_code}: {answer.get_body()[:300]!r}")
    return samples, (time.process_time() - cpu0) * 1000 / len(bodies)


def _summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return statistics.mean(samples), statistics.median(samples), ordered[max(0, int(len(ordered) * 0.99) - 1)]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    args = p.parse_args(argv)
    measured, helpers = cpu_plan()
    pin(os.getpid(), measured)
    print("== Azure function app: cost per POST /v1/chat/completions (zero-latency fake backend) ==")
    print(f"   ({host_note()})")
    fake_port = free_port()
    fake = start_fake(fake_port, helpers)
    n = args.requests
    runner = asyncio.Runner()
    try:
        with tempfile.TemporaryDirectory() as logs, Emulators(Path(logs)) as emulators:
            pin(emulators.cosmos.pid, helpers)
            pin(emulators.azurite.pid, helpers)
            env = emulators.env()
            os.environ.update(env)
            create_container(env)
            own = store_of(env)
            own.put_model(_model(fake_port))
            from bench.gcp_cold_start import seed_tenant
            from functions.azure import bootstrap

            key = seed_tenant(own, HIGH_LIMITS)
            rt = bootstrap.build_runtime(bootstrap.AzureSettings.from_env())
            post = _poster(rt, key, runner)
            trips = TripCounter(emulators.cosmos.endpoint.rstrip("/"))
            _time(post, chat_bodies(MODEL, n=args.warmup, max_tokens=16))
            trips.reset()
            cosmos, cosmos_cpu = _time(post, chat_bodies(MODEL, n=n, max_tokens=16))
            calls, charge, charged = dict(trips.count), trips.charge, trips.charged
            baseline = []
            for _ in range(n):
                t0 = time.perf_counter()
                own.get_tenant("ten_bench")
                baseline.append((time.perf_counter() - t0) * 1000)
            rt.close()

            from adapters.local.memory_store import MemoryStore

            memory_store = MemoryStore()
            memory_store.put_model(_model(fake_port))
            memory_key = seed_tenant(memory_store, HIGH_LIMITS)
            memory_rt = bootstrap.build_runtime(bootstrap.AzureSettings.from_env(), store=memory_store)
            mpost = _poster(memory_rt, memory_key, runner)
            _time(mpost, chat_bodies(MODEL, n=args.warmup, max_tokens=16))
            memory, memory_cpu = _time(mpost, chat_bodies(MODEL, n=n, max_tokens=16))
            memory_rt.close()
    finally:
        runner.close()
        stop(fake)
    print(f"  {'':<44} {'mean':>8} {'p50':>8} {'p99':>8}   cpu/request (this process)")
    for label, samples, cpu in (
        ("Cosmos DB server (CosmosStore)", cosmos, cosmos_cpu),
        ("memory (MemoryStore)", memory, memory_cpu),
    ):
        mean, p50, p99 = _summary(samples)
        print(f"  {label:<44} {mean:6.2f} ms {p50:6.2f} ms {p99:6.2f} ms   {cpu:6.2f} ms")
    mean, p50, p99 = _summary(baseline)
    print(f"  {'baseline: one point read':<44} {mean:6.2f} ms {p50:6.2f} ms {p99:6.2f} ms")
    detail = ", ".join(f"{name} {count / n:.2f}" for name, count in sorted(calls.items()))
    print(f"  Cosmos DB round trips per request: {sum(calls.values()) / n:.2f} ({detail})")
    if charged:
        note = " (the local server charges 1 per call: not Azure's request units)" if charge == charged else ""
        print(f"  request units reported: {charge / n:.2f} per request{note}")
    else:
        print("  request units: not reported by the server")
    print(f"  the store's share of a request: {statistics.median(cosmos) - statistics.median(memory):+.2f} ms (p50)")


if __name__ == "__main__":
    main()
