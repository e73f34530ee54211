"""Per-request cost of the AWS api handler with DynamoDB on moto, against the same handler on memory.

``functions.aws.api.handle`` on a warm runtime, POST /v1/chat/completions (sampled, so never cached) to
the zero-latency fake OpenAI backend, for a tenant and key with rpm, tpm and a quota set (every limit
path taken). Variants, each over ``--requests`` events after a warm-up:

* DynamoDB: the runtime ``bootstrap.build_runtime`` makes (DynamoDBStore on a moto server in its own
  process, boto3 clients on moto);
* memory: the same Gateway wiring (AwsBackends, PowertoolsMetrics, the handler's event conversion)
  on ``MemoryStore``: what the handler costs without a database;
* baseline: one DynamoDB GetItem against the same moto server, through the store's own client.

The DynamoDB calls one request makes are counted on the store's botocore client (one per API call,
retries excluded), by operation. With 2+ CPUs the measured process runs on CPU 0, moto and the fake on
the others.

    python -m bench.aws_handler_cost [--requests 300]
"""

from __future__ import annotations

import argparse
import asyncio
import gc
import os
import statistics
import time
from collections import Counter
from collections.abc import Callable
from typing import Any

from bench._procs import HIGH_LIMITS, chat_bodies, cpu_plan, free_port, host_note, pin, start_fake, stop
from bench.aws_cold_start import REGION, api_event, deploy, limits_of, seed_tenant, start_moto

MODEL = "bench"


def _model(fake_port: int) -> Any:
    from core.domain import ModelSpec

    return ModelSpec(
        id=MODEL,
        kind="generation",
        backend={"type": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1", "model": "m"},
        context_length=4096,
        max_output_tokens=64,
    )


def _events(key: str, n: int) -> list[dict[str, Any]]:
    return [
        api_event(key, "/v1/chat/completions", "POST", body.decode()) for body in chat_bodies(MODEL, n=n, max_tokens=16)
    ]


def _time(
    handle: Callable[[dict[str, Any]], dict[str, Any]], events: list[dict[str, Any]]
) -> tuple[list[float], float]:
    """Wall milliseconds per handled event, and this process's CPU milliseconds per event (moto and the
    fake run in other processes, so that is the handler's own work, botocore's included)."""
    samples = []
    gc.collect()
    cpu0 = time.process_time()
    for event in events:
        t0 = time.perf_counter()
        result = handle(event)
        samples.append((time.perf_counter() - t0) * 1000)
        if result["statusCode"] != 200:
            raise RuntimeError(f"{result['statusCode']}: {result['body'][:300]}")
    return samples, (time.process_time() - cpu0) * 1000 / len(events)


class _CallTimer:
    """DynamoDB calls of one botocore client: how many, and the wall time of each, by operation."""

    def __init__(self) -> None:
        self.count: Counter[str] = Counter()
        self.ms: dict[str, list[float]] = {}
        self._started: dict[int, float] = {}

    def before(self, model: Any, **_: Any) -> None:
        self.count[model.name] += 1
        self._started[id(model)] = time.perf_counter()

    def after(self, model: Any, **_: Any) -> None:
        started = self._started.pop(id(model), None)
        if started is not None:
            self.ms.setdefault(model.name, []).append((time.perf_counter() - started) * 1000)

    def attach(self, client: Any) -> None:
        client.meta.events.register("before-parameter-build.dynamodb.*", self.before)
        client.meta.events.register("after-call.dynamodb.*", self.after)

    def detach(self, client: Any) -> None:
        client.meta.events.unregister("before-parameter-build.dynamodb.*", self.before)
        client.meta.events.unregister("after-call.dynamodb.*", self.after)


def _memory_runtime(fake_port: int) -> tuple[Any, str]:
    """A Runtime like the deployed one, on MemoryStore; (runtime, API key)."""
    from adapters.aws.metrics import PowertoolsMetrics
    from adapters.local.memory_store import MemoryStore
    from core.app import Gateway
    from core.auth import api_keys
    from core.domain import Tenant
    from functions.aws.bootstrap import AwsBackends, AwsSettings, Runtime

    store = MemoryStore()
    now = time.time()
    store.put_model(_model(fake_port))
    store.put_tenant(Tenant("ten_bench", "bench", now, limits_of(HIGH_LIMITS)))
    key, record = api_keys.mint("ten_bench", "bench", frozenset({"generate"}), now, limits=limits_of(HIGH_LIMITS))
    store.put_key(record)
    metrics = PowertoolsMetrics()
    gateway = Gateway(store, AwsBackends(REGION, None), metrics=metrics)
    settings = AwsSettings(table="unused")
    return Runtime(gateway, asyncio.new_event_loop(), metrics, settings), key


def _summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return statistics.mean(samples), statistics.median(samples), ordered[int(len(ordered) * 0.99) - 1]


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=300)
    p.add_argument("--warmup", type=int, default=30)
    args = p.parse_args(argv)
    measured, helpers = cpu_plan()
    pin(os.getpid(), measured)
    print("== AWS api handler: cost per POST /v1/chat/completions (zero-latency fake backend) ==")
    print(f"   ({host_note()})")
    moto, url = start_moto(helpers)
    fake_port = free_port()
    fake = start_fake(fake_port, helpers)
    try:
        env = deploy(url)
        os.environ.update(env)
        os.environ["POWERTOOLS_METRICS_NAMESPACE"] = "TextNLP"
        _, key = seed_tenant(env, HIGH_LIMITS)

        from adapters.aws.dynamodb import DynamoDBStore
        from functions.aws import api
        from functions.aws.bootstrap import runtime

        rt = runtime()
        store = rt.gateway.store
        assert isinstance(store, DynamoDBStore)
        store.put_model(_model(fake_port))
        # EMF lines go to stdout in Lambda; here they would flood the report.
        devnull = open(os.devnull, "w")  # noqa: SIM115 - for the whole run
        import contextlib

        timer = _CallTimer()
        with contextlib.redirect_stdout(devnull):
            _time(lambda e: api.handle(rt, e), _events(key, args.warmup))
            timer.attach(store.client)
            dynamo, dynamo_cpu = _time(lambda e: api.handle(rt, e), _events(key, args.requests))
            timer.detach(store.client)

            memory_rt, memory_key = _memory_runtime(fake_port)
            _time(lambda e: api.handle(memory_rt, e), _events(memory_key, args.warmup))
            memory, memory_cpu = _time(lambda e: api.handle(memory_rt, e), _events(memory_key, args.requests))

        get_item = []
        for _ in range(args.requests):
            t0 = time.perf_counter()
            store.get_key("key_does_not_exist")
            get_item.append((time.perf_counter() - t0) * 1000)
    finally:
        stop(fake)
        stop(moto)

    d_mean, d_med, d_p99 = _summary(dynamo)
    m_mean, m_med, m_p99 = _summary(memory)
    g_mean, g_med, g_p99 = _summary(get_item)
    per_request = {op: n / args.requests for op, n in sorted(timer.count.items())}
    print(f"  {args.requests} requests each          wall ms: mean / median / p99      CPU ms of this process")
    print(f"  api.handle, DynamoDB on moto    {d_mean:7.2f} / {d_med:7.2f} / {d_p99:7.2f}      {dynamo_cpu:6.2f}")
    print(f"  api.handle, MemoryStore         {m_mean:7.2f} / {m_med:7.2f} / {m_p99:7.2f}      {memory_cpu:6.2f}")
    print(f"  baseline: one GetItem on moto   {g_mean:7.2f} / {g_med:7.2f} / {g_p99:7.2f}")
    print(f"  DynamoDB calls per request: {sum(per_request.values()):.2f}")
    for op, n in per_request.items():
        ms = timer.ms.get(op, [0.0])
        print(f"    {op:20s} {n:5.2f} per request, {statistics.median(ms):7.2f} ms median on moto")
    print(
        f"  the handler's own CPU with DynamoDB: {dynamo_cpu:.2f} ms per request ({dynamo_cpu - memory_cpu:+.2f} ms"
        f" over MemoryStore: botocore building, signing and parsing {sum(per_request.values()):.0f} calls)"
    )
    print(
        "  wall time on moto is moto's: its TransactWriteItems deep-copies the tables (for rollback), so it grows"
        " with the table; on DynamoDB each call is one in-region round trip"
    )


if __name__ == "__main__":
    main()
