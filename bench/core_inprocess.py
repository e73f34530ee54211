"""The in-process cost of one request through ``Gateway.handle``: no sockets, no server.

A zero-latency in-process backend, an API key whose tenant and key both have rpm, tpm and a quota
set, the local server's Prometheus metrics and its JSON request log (to /dev/null). Variants:
in-memory store, SQLite store (WAL file in a temp dir), request log off, and cached hits.
Then a per-section breakdown (each section's own time per request, wrappers installed from here).

    python -m bench.core_inprocess [--iterations 3000]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import json
import logging
import os
import statistics
import tempfile
import time
from collections import defaultdict
from collections.abc import AsyncIterator, Callable, Mapping
from pathlib import Path
from typing import Any

from adapters.local.memory_store import MemoryStore
from adapters.local.prometheus import PrometheusMetrics
from adapters.local.sqlite_store import SQLiteStore
from bench._procs import HIGH_LIMITS, chat_bodies
from core.app import Gateway
from core.auth import api_keys
from core.domain import Limits, ModelSpec, Tenant
from core.http import Request
from core.inference import (
    Embeddings,
    FinishReason,
    Generation,
    GenerationParams,
    Prompt,
    StreamEnd,
    StreamEvent,
    TextDelta,
)
from core.observability import configure_logging
from core.ports import Store

MODEL = ModelSpec(
    id="bench",
    kind="generation",
    backend={"type": "fake"},
    context_length=4096,
    max_output_tokens=64,
    price_per_1k_prompt_tokens=0.1,
    price_per_1k_completion_tokens=0.2,
)


class EchoBackend:
    """Zero-latency: echoes the first words of the last message, one token per word."""

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        source = prompt.text if prompt.text is not None else prompt.messages[-1].content
        words = source.split()
        out = words[: params.max_tokens]
        reason: FinishReason = "length" if len(words) > params.max_tokens else "stop"
        return Generation(" ".join(out), reason, len(words), len(out))

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        g = await self.generate(route, prompt, params)
        yield TextDelta(g.text)
        yield StreamEnd(g.finish_reason, g.prompt_tokens, g.completion_tokens)

    async def embed(self, route: Mapping[str, Any], inputs: list[str]) -> Embeddings:
        return Embeddings([[1.0] for _ in inputs], len(inputs), 1)


class Resolver:
    def __init__(self) -> None:
        self.backend = EchoBackend()

    def backend_for(self, route: Mapping[str, Any]) -> EchoBackend:
        return self.backend


def build(store: Store) -> tuple[Gateway, str]:
    now = time.time()
    limits = Limits(
        requests_per_minute=HIGH_LIMITS["requests_per_minute"],
        tokens_per_minute=HIGH_LIMITS["tokens_per_minute"],
        token_quota=HIGH_LIMITS["token_quota"],
    )
    store.put_model(MODEL)
    store.put_tenant(Tenant(id="ten_bench", name="bench", created_at=now, limits=limits))
    key, record = api_keys.mint("ten_bench", "bench", frozenset({"generate"}), now, limits=limits)
    store.put_key(record)
    gateway = Gateway(store, Resolver(), metrics=PrometheusMetrics())
    return gateway, key


def _requests(key: str, bodies: list[bytes]) -> list[Request]:
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json", "host": "bench"}
    return [Request("POST", "/v1/chat/completions", dict(headers), {}, body) for body in bodies]


async def _time(gateway: Gateway, key: str, bodies: list[bytes], n: int, warmup: int) -> list[float]:
    template = _requests(key, bodies)
    for i in range(warmup):
        r = template[i % len(template)]
        resp = await gateway.handle(Request(r.method, r.path, r.headers, r.query, r.body))
        assert resp.status == 200, resp.body
    samples = []
    clock = time.perf_counter_ns
    gc.collect()
    for i in range(n):
        r = template[i % len(template)]
        req = Request(r.method, r.path, r.headers, r.query, r.body)
        t0 = clock()
        await gateway.handle(req)
        samples.append((clock() - t0) / 1000.0)
    return samples


def _pct(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q / 100 * (len(ordered) - 1)))]


def _line(label: str, us: list[float], base: float | None = None) -> str:
    mean = statistics.fmean(us)
    ratio = f"  {mean / base:5.2f}x" if base else ""
    return (
        f"  {label:<40} mean {mean:8.1f} us   p50 {_pct(us, 50):8.1f}   p99 {_pct(us, 99):8.1f}"
        f"   -> {1e6 / mean:7.0f} req/s/core{ratio}"
    )


def _loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


class Sections:
    """Wraps methods on live objects to add up each one's time per call (nested calls included)."""

    def __init__(self) -> None:
        self.total: dict[str, float] = defaultdict(float)
        self.restore: list[Callable[[], None]] = []

    def wrap(self, obj: Any, attr: str, name: str) -> None:
        original = getattr(obj, attr)
        total = self.total
        clock = time.perf_counter_ns

        if asyncio.iscoroutinefunction(original):

            async def awrapper(*a: Any, **kw: Any) -> Any:
                t0 = clock()
                try:
                    return await original(*a, **kw)
                finally:
                    total[name] += clock() - t0

            setattr(obj, attr, awrapper)
        else:

            def wrapper(*a: Any, **kw: Any) -> Any:
                t0 = clock()
                try:
                    return original(*a, **kw)
                finally:
                    total[name] += clock() - t0

            setattr(obj, attr, wrapper)
        self.restore.append(lambda: setattr(obj, attr, original))


def breakdown(
    loop: asyncio.AbstractEventLoop, gateway: Gateway, key: str, bodies: list[bytes], n: int
) -> dict[str, float]:
    import core.app
    from core.http import Response

    s = Sections()
    s.wrap(gateway.auth, "authenticate", "auth (API key, L1-cached record)")
    s.wrap(core.app, "parse_body", "pydantic parse of the body")
    s.wrap(gateway.registry, "get", "model registry lookup")
    s.wrap(gateway.generation, "_reserve", "limits.reserve (+ tenant/key lookup)")
    s.wrap(gateway.cache, "get", "cache.get")
    s.wrap(gateway.model_router, "generate", "backend call via ModelRouter (+fake)")
    s.wrap(gateway.meter, "record", "meter.record (usage write)")
    s.wrap(gateway.cache, "put", "cache.put")
    s.wrap(Response, "json", "response model -> JSON bytes")
    s.wrap(gateway, "_observe", "metrics + JSON request log")
    s.wrap(gateway.router, "match", "route match")
    total = loop.run_until_complete(_time(gateway, key, bodies, n, warmup=50))
    for undo in reversed(s.restore):
        undo()
    result = {name: ns / n / 1000.0 for name, ns in s.total.items()}
    result["(whole handle, with wrappers)"] = statistics.fmean(total)
    return result


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--iterations", type=int, default=3000)
    args = p.parse_args(argv)
    n = args.iterations
    devnull = open(os.devnull, "w")  # noqa: SIM115
    logger = configure_logging("INFO")
    for handler in logger.handlers:
        if isinstance(handler, logging.StreamHandler):
            handler.setStream(devnull)
    bodies = chat_bodies("bench")
    deterministic = [json.dumps({**json.loads(b), "temperature": 0}).encode() for b in bodies[:1]]
    loop = _loop()
    asyncio.set_event_loop(loop)
    print("== core in-process: Gateway.handle(POST /v1/chat/completions), zero-latency in-process backend ==")
    print(f"   {n} sequential requests per line; API key auth; tenant + key with rpm, tpm and quota set")

    async def backend_only() -> list[float]:
        backend, prompt = EchoBackend(), Prompt(text="a b c")
        params = GenerationParams(max_tokens=16)
        out = []
        for _ in range(n):
            t0 = time.perf_counter_ns()
            await backend.generate({}, prompt, params)
            out.append((time.perf_counter_ns() - t0) / 1000.0)
        return out

    floor = loop.run_until_complete(backend_only())
    print(_line("fake backend call alone (floor)", floor))

    mem_gw, mem_key = build(MemoryStore())
    mem = loop.run_until_complete(_time(mem_gw, mem_key, bodies, n, warmup=200))
    base = statistics.fmean(mem)
    print(_line("memory store, miss (request log on)", mem, base))
    logger.setLevel("WARNING")
    quiet = loop.run_until_complete(_time(mem_gw, mem_key, bodies, n, warmup=50))
    print(_line("memory store, miss (request log off)", quiet, base))
    logger.setLevel("INFO")
    hit = loop.run_until_complete(_time(mem_gw, mem_key, deterministic, n, warmup=50))
    print(_line("memory store, cached hit (L1)", hit, base))

    with tempfile.TemporaryDirectory(prefix="textnlp-core-") as tmp:
        sql_store = SQLiteStore(Path(tmp) / "textnlp.db")
        sql_gw, sql_key = build(sql_store)
        sql = loop.run_until_complete(_time(sql_gw, sql_key, bodies, n, warmup=200))
        print(_line("SQLite store, miss (request log on)", sql, base))
        sql_hit = loop.run_until_complete(_time(sql_gw, sql_key, deterministic, n, warmup=50))
        print(_line("SQLite store, cached hit (L1)", sql_hit, base))

        print("\n   per-section time per request, us (sections nest: reserve includes its lookups)")
        mem_parts = breakdown(loop, mem_gw, mem_key, bodies, n)
        sql_parts = breakdown(loop, sql_gw, sql_key, bodies, n)
        sql_store.close()
    print(f"  {'section':<44}{'memory':>10}{'SQLite':>10}")
    for name in sorted(mem_parts, key=lambda k: -sql_parts.get(k, 0.0)):
        print(f"  {name:<44}{mem_parts[name]:10.1f}{sql_parts.get(name, 0.0):10.1f}")
    loop.close()


if __name__ == "__main__":
    main()
