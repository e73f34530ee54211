"""Batch throughput: lines/s through the BatchRunner against a backend with a fixed latency, vs its ceiling.

An in-process backend that answers every call after exactly ``--latency-ms`` (20 ms) can serve at most
``concurrency / latency`` lines per second (16 / 0.02 s = 800 lines/s); the runner's figure is shown as a
share of that ceiling, with the gateway's own CPU time per line. Each line is a full in-process request
(parse, route, reserve, call, settle, meter) plus its stored result; the input and output are files.
Variants: the in-memory store and the SQLite store (WAL file in a temp dir).

    python -m bench.batch_throughput [--lines 4000] [--concurrency 16] [--latency-ms 20]
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import tempfile
import time
from collections.abc import AsyncIterator, Mapping
from pathlib import Path
from typing import Any

from adapters.local.blobs import FileBlobStore
from adapters.local.memory_store import MemoryStore
from adapters.local.sqlite_store import SQLiteStore
from core.app import Gateway
from core.batch.objects import object_batch
from core.batch.runner import RunnerSettings
from core.domain import Limits, ModelSpec, Tenant
from core.inference import Embeddings, Generation, GenerationParams, Prompt, StreamEnd, StreamEvent, TextDelta
from core.ports import Store

MODEL = ModelSpec(id="bench", kind="generation", backend={"type": "fake"}, context_length=4096, max_output_tokens=64)
TENANT = "ten_bench"


class LatencyBackend:
    """Answers every call after a fixed delay, echoing the prompt's first words; counts the calls."""

    def __init__(self, latency_s: float) -> None:
        self.latency_s = latency_s
        self.calls = 0

    async def generate(self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams) -> Generation:
        self.calls += 1
        await asyncio.sleep(self.latency_s)
        words = (prompt.text if prompt.text is not None else prompt.messages[-1].content).split()
        out = words[: params.max_tokens]
        return Generation(" ".join(out), "length" if len(words) > len(out) else "stop", len(words), len(out))

    async def stream(
        self, route: Mapping[str, Any], prompt: Prompt, params: GenerationParams
    ) -> AsyncIterator[StreamEvent]:
        g = await self.generate(route, prompt, params)
        yield TextDelta(g.text)
        yield StreamEnd(g.finish_reason, g.prompt_tokens, g.completion_tokens)

    async def embed(self, route: Mapping[str, Any], inputs: list[str]) -> Embeddings:
        await asyncio.sleep(self.latency_s)
        return Embeddings([[1.0] for _ in inputs], len(inputs), 1)


class Resolver:
    def __init__(self, backend: LatencyBackend) -> None:
        self.backend = backend

    def backend_for(self, route: Mapping[str, Any]) -> LatencyBackend:
        return self.backend


def write_input(path: Path, lines: int) -> None:
    """Half OpenAI chat lines, half native lines, as a batch file mixes them."""
    with path.open("wb") as out:
        for i in range(lines):
            if i % 2:
                body = {"model": MODEL.id, "messages": [{"role": "user", "content": f"line {i} of the batch"}]}
                row: dict[str, Any] = {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions"}
                row["body"] = {**body, "max_tokens": 8}
            else:
                row = {"model": MODEL.id, "prompt": f"line {i} of the batch", "max_tokens": 8}
            out.write(json.dumps(row).encode() + b"\n")


def run_once(store: Store, work: Path, lines: int, concurrency: int, latency_s: float) -> dict[str, float]:
    store.put_model(MODEL)
    store.put_tenant(Tenant(TENANT, "bench", 0.0, Limits(requests_per_minute=10**9, token_quota=10**12)))
    backend = LatencyBackend(latency_s)
    blobs = FileBlobStore(work)
    write_input(work / "in.jsonl", lines)
    gateway = Gateway(store, Resolver(backend), blobs=blobs)
    job = object_batch(
        store,
        blobs,
        tenant_id=TENANT,
        input_key="in.jsonl",
        output_key="out.jsonl",
        error_key="err.jsonl",
        now=time.time(),
    )
    assert job is not None
    runner = gateway.batch_runner(blobs, RunnerSettings(concurrency=concurrency))
    cpu, wall = time.process_time(), time.perf_counter()
    done = asyncio.run(runner.run(job.tenant_id, job.id))
    cpu, wall = time.process_time() - cpu, time.perf_counter() - wall
    assert done is not None
    assert done.completed == lines == backend.calls, (done.completed, backend.calls)
    return {"wall_s": wall, "cpu_s": cpu, "lines_per_s": lines / wall}


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--lines", type=int, default=4000)
    p.add_argument("--concurrency", type=int, default=16)
    p.add_argument("--latency-ms", type=float, default=20.0)
    args = p.parse_args(argv)
    latency_s = args.latency_ms / 1000
    ceiling = args.concurrency / latency_s
    print(
        f"batch throughput: {args.lines} lines, concurrency {args.concurrency}, backend latency {args.latency_ms:g} ms"
        f"  (ceiling {ceiling:.0f} lines/s; load avg {os.getloadavg()[0]:.2f})"
    )
    print(f"{'store':<8} {'lines/s':>9} {'of ceiling':>11} {'wall s':>8} {'CPU ms/line':>12} {'added ms/line':>14}")
    for name in ("memory", "sqlite"):
        with tempfile.TemporaryDirectory(prefix="textnlp-bench-") as tmp:
            work = Path(tmp)
            store: MemoryStore | SQLiteStore = MemoryStore() if name == "memory" else SQLiteStore(work / "s.db")
            try:
                r = run_once(store, work, args.lines, args.concurrency, latency_s)
            finally:
                store.close()
        # Per line, each worker waits the backend's latency and then works; the rest is the runner's time.
        added_ms = (args.concurrency / r["lines_per_s"] - latency_s) * 1000
        print(
            f"{name:<8} {r['lines_per_s']:>9.0f} {r['lines_per_s'] / ceiling:>10.0%} {r['wall_s']:>8.2f}"
            f" {r['cpu_s'] / args.lines * 1000:>12.3f} {added_ms:>14.2f}"
        )
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
