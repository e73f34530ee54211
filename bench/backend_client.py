"""The OpenAI-compatible backend adapter alone: cost per call of its HTTP client.

``OpenAICompatBackend.generate`` and ``.stream`` against the zero-latency fake backend (a
subprocess on its own CPU when there are 2+), sequentially and with 32 calls in flight, with the
built-in HTTP/1.1 pool (default) and with httpx (``TEXTNLP_OPENAI_HTTP_CLIENT=httpx``), measured in
the same run. The raw client (bench.loadgen's request loop is not used here) is this process.

    python -m bench.backend_client [--calls 2000]
"""

from __future__ import annotations

import argparse
import asyncio
import os
import resource
import statistics
import time

from adapters.openai_compat.backend import OpenAICompatBackend
from bench._procs import cpu_plan, free_port, pin, start_fake, stop
from core.inference import ChatMessage, GenerationParams, Prompt

PROMPT = Prompt(
    messages=(
        ChatMessage("system", "You are a concise assistant."),
        ChatMessage("user", "Write one short sentence about the number 7 and the sea."),
    )
)
PARAMS = GenerationParams(max_tokens=16, temperature=0.7)


def _cpu() -> float:
    r = resource.getrusage(resource.RUSAGE_SELF)
    return r.ru_utime + r.ru_stime


async def _sequential(backend: OpenAICompatBackend, route: dict[str, object], calls: int, stream: bool) -> list[float]:
    samples = []
    for _ in range(calls):
        t0 = time.perf_counter()
        if stream:
            async for _event in backend.stream(route, PROMPT, PARAMS):
                pass
        else:
            await backend.generate(route, PROMPT, PARAMS)
        samples.append((time.perf_counter() - t0) * 1e6)
    return samples


async def _concurrent(backend: OpenAICompatBackend, route: dict[str, object], calls: int, width: int) -> float:
    """CPU microseconds of this process per call with ``width`` calls in flight."""
    per_worker = calls // width

    async def worker() -> None:
        for _ in range(per_worker):
            await backend.generate(route, PROMPT, PARAMS)

    cpu0 = _cpu()
    await asyncio.gather(*(worker() for _ in range(width)))
    return (_cpu() - cpu0) * 1e6 / (per_worker * width)


def measure(client: str, route: dict[str, object], calls: int) -> dict[str, float]:
    async def run() -> dict[str, float]:
        backend = OpenAICompatBackend(http_client=client)
        try:
            await _sequential(backend, route, 100, False)  # connect, warm up
            out: dict[str, float] = {}
            cpu0 = _cpu()
            seq = await _sequential(backend, route, calls, False)
            out["gen_cpu_us"] = (_cpu() - cpu0) * 1e6 / calls
            out["gen_p50_us"] = statistics.median(seq)
            cpu0 = _cpu()
            st = await _sequential(backend, route, calls // 2, True)
            out["stream_cpu_us"] = (_cpu() - cpu0) * 1e6 / (calls // 2)
            out["stream_p50_us"] = statistics.median(st)
            out["c32_cpu_us"] = await _concurrent(backend, route, calls, 32)
            return out
        finally:
            await backend.aclose()

    loop = _new_loop()
    try:
        return loop.run_until_complete(run())
    finally:
        loop.close()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover
        return asyncio.new_event_loop()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--calls", type=int, default=2000)
    args = p.parse_args(argv)
    server_cpus, helper_cpus = cpu_plan()
    port = free_port()
    fake = start_fake(port, cpus=helper_cpus)
    if server_cpus:
        pin(os.getpid(), server_cpus)
    route: dict[str, object] = {"type": "openai", "base_url": f"http://127.0.0.1:{port}/v1", "model": "m"}
    try:
        fast = measure("auto", route, args.calls)
        slow = measure("httpx", route, args.calls)
    finally:
        stop(fake)
    print("== OpenAI-compatible backend adapter: HTTP client cost per call (zero-latency fake backend) ==")
    print(f"   {args.calls} calls; client CPU = this process's user+sys time per call; latency includes the fake")
    rows = [
        ("generate: client CPU per call (sequential)", "gen_cpu_us"),
        ("generate: latency p50 (sequential)", "gen_p50_us"),
        ("generate: client CPU per call (32 in flight)", "c32_cpu_us"),
        ("stream (SSE): client CPU per call", "stream_cpu_us"),
        ("stream (SSE): latency p50", "stream_p50_us"),
    ]
    print(f"  {'':<46}{'httpx':>10}{'http11':>10}{'ratio':>9}")
    for label, key in rows:
        print(f"  {label:<46}{slow[key]:8.0f}us{fast[key]:8.0f}us{slow[key] / fast[key]:8.1f}x")


if __name__ == "__main__":
    main()
