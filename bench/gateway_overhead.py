"""What the gateway adds in front of a zero-latency OpenAI-compatible backend.

Starts the fake backend and ``textnlp serve --workers 1`` (subprocesses), registers a model routed
to the fake, creates a tenant and key with limits (high enough never to refuse), then drives
POST /v1/chat/completions (non-deterministic: no cache hits) at several concurrencies against
(a) the fake directly and (b) the gateway, with bench.loadgen in its own process.

With 2+ CPUs the measured server gets CPU 0 to itself (the gateway in (b), the fake in (a)); the
load generator and, in (b), the fake share the other CPUs. So req/s reads as "per core". Other work
on the host (tests, builds) still lands on CPU 0 now and then: the server's own CPU time per request
(from /proc) is the figure that holds up under such noise, and "capacity" is derived from it.

    python -m bench.gateway_overhead [--duration 5] [--warmup 1] [--concurrency 1,8,32]
        [--variants 'default;TEXTNLP_OPENAI_HTTP_CLIENT=httpx']   # gateways to compare, same run
"""

from __future__ import annotations

import argparse
import tempfile
from pathlib import Path

from bench._procs import (
    chat_bodies,
    cpu_plan,
    free_port,
    host_note,
    pin,
    setup_tenant,
    spawn,
    start_fake,
    start_gateway,
    stop,
    wait_http,
)
from bench.loadgen import LoadResult, run_load

LITELLM_RPS_PER_CORE = 55.0  # LiteLLM proxy, the mission's reference point
TARGET_RPS = 10 * LITELLM_RPS_PER_CORE
TARGET_ADDED_MS = 2.0


def _row(label: str, c: int, r: LoadResult) -> str:
    bad = sum(v for k, v in r.statuses.items() if k != "200") + r.errors
    return (
        f"  {label:<8} c={c:<3} {r.rps:7.0f} req/s  p50 {r.pct(50):6.2f} ms  p99 {r.pct(99):6.2f} ms"
        f"  server CPU {r.server_cpu_us:5.0f} us/req (= {1e6 / r.server_cpu_us:5.0f} req/s/core)"
        f"  bad {bad}  loadgen cpu {r.cpu_pct:2.0f}%"
    )


def loadgen_ceiling(duration_s: float, server_cpus: set[int] | None, helper_cpus: set[int] | None) -> LoadResult:
    """The load generator against a raw asyncio responder: its own ceiling."""
    port = free_port()
    sink = spawn(["-m", "bench.loadgen", "--sink", "--port", str(port)], cpus=helper_cpus)
    try:
        wait_http(port, "/", proc=sink)
        return run_load(
            f"http://127.0.0.1:{port}/v1/chat/completions",
            chat_bodies("m"),
            concurrency=8,
            duration_s=duration_s,
            warmup_s=0.5,
            cpus=server_cpus,
        )
    finally:
        stop(sink)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--duration", type=float, default=5.0, help="measured seconds per point")
    p.add_argument("--warmup", type=float, default=1.0, help="unmeasured seconds before each point")
    p.add_argument("--concurrency", default="1,8,32")
    p.add_argument(
        "--variants",
        default="default",
        help="gateway environments to compare, ';'-separated, each 'default' or NAME=VALUE[,NAME=VALUE]; "
        "e.g. 'default;TEXTNLP_OPENAI_HTTP_CLIENT=httpx;TEXTNLP_LOG_LEVEL=WARNING'",
    )
    args = p.parse_args(argv)
    levels = [int(c) for c in args.concurrency.split(",")]
    variants = [v.strip() for v in args.variants.split(";") if v.strip()]
    server_cpus, helper_cpus = cpu_plan()

    print("== gateway overhead: POST /v1/chat/completions, zero-latency fake backend ==")
    print(f"   {host_note()}")
    if server_cpus:
        print(f"   pinning: measured server on CPU {sorted(server_cpus)}, helpers on CPU {sorted(helper_cpus or ())}")
    ceiling = loadgen_ceiling(min(args.duration, 2.0), server_cpus, helper_cpus)
    print(f"   loadgen ceiling (raw asyncio responder, c=8): {ceiling.rps:.0f} req/s")

    direct: dict[int, LoadResult] = {}
    via: dict[str, dict[int, LoadResult]] = {}
    fake_port = free_port()
    fake = start_fake(fake_port, cpus=server_cpus)
    try:
        for c in levels:
            direct[c] = run_load(
                f"http://127.0.0.1:{fake_port}/v1/chat/completions",
                chat_bodies("m"),
                concurrency=c,
                duration_s=args.duration,
                warmup_s=args.warmup,
                cpus=helper_cpus,
                watch_pid=fake.pid,
            )
        # The fake now moves to the helper CPUs; the gateway gets the measured one.
        pin(fake.pid, helper_cpus)
        for variant in variants:
            env = {} if variant == "default" else dict(kv.split("=", 1) for kv in variant.split(","))
            via[variant] = _gateway_points(env, fake_port, levels, args.duration, args.warmup, server_cpus, helper_cpus)
    finally:
        stop(fake)

    for variant, points in via.items():
        label = "gateway" if len(via) == 1 else f"gw#{variants.index(variant) + 1}"
        if len(via) > 1:
            print(f"  -- gateway #{variants.index(variant) + 1}: {variant} --")
        for c in levels:
            print(_row("backend", c, direct[c]))
            print(_row(label, c, points[c]))
            added = points[c].pct(50) - direct[c].pct(50)
            ratio = points[c].rps / direct[c].rps if direct[c].rps else float("nan")
            print(
                f"  -> c={c}: added latency p50 {added:+.2f} ms (target < {TARGET_ADDED_MS:g}), "
                f"p99 {points[c].pct(99) - direct[c].pct(99):+.2f} ms; throughput gateway/backend {ratio:.2f}x"
            )
        best = max(points.values(), key=lambda r: r.rps)
        print(
            f"   gateway peak {best.rps:.0f} req/s on one worker = {best.rps / LITELLM_RPS_PER_CORE:.1f}x LiteLLM's "
            f"~{LITELLM_RPS_PER_CORE:g} req/s per core (target >= {TARGET_RPS:g} req/s, 10x)"
        )
        cpu = min(r.server_cpu_us for r in points.values())
        fake_cpu = min(r.server_cpu_us for r in direct.values())
        print(
            f"   gateway CPU {cpu:.0f} us/req -> capacity {1e6 / cpu:.0f} req/s per core = "
            f"{1e6 / cpu / LITELLM_RPS_PER_CORE:.1f}x LiteLLM (the fake backend: {fake_cpu:.0f} us/req, "
            f"{cpu / fake_cpu:.1f}x less CPU per request)"
        )
    if len(via) > 1:
        base = via[variants[-1]]
        for variant in variants[:-1]:
            ratios = ", ".join(f"c={c} {via[variant][c].rps / base[c].rps:.2f}x" for c in levels if base[c].rps)
            less = ", ".join(f"c={c} {base[c].server_cpu_us / via[variant][c].server_cpu_us:.2f}x" for c in levels)
            print(f"   '{variant}' vs '{variants[-1]}': req/s {ratios}; 1 / CPU per request {less}")
    print(f"   {host_note()}")


def _gateway_points(
    env: dict[str, str],
    fake_port: int,
    levels: list[int],
    duration: float,
    warmup: float,
    server_cpus: set[int] | None,
    helper_cpus: set[int] | None,
) -> dict[int, LoadResult]:
    with tempfile.TemporaryDirectory(prefix="textnlp-bench-") as tmp:
        port = free_port()
        gateway = start_gateway(Path(tmp), port, cpus=server_cpus, env=env)
        try:
            key = setup_tenant(port, fake_port)
            return {
                c: run_load(
                    f"http://127.0.0.1:{port}/v1/chat/completions",
                    chat_bodies("bench"),
                    headers={"Authorization": f"Bearer {key}"},
                    concurrency=c,
                    duration_s=duration,
                    warmup_s=warmup,
                    cpus=helper_cpus,
                    watch_pid=gateway.pid,
                )
                for c in levels
            }
        finally:
            stop(gateway)


if __name__ == "__main__":
    main()
