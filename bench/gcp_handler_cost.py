"""Per-request cost of the Google Cloud api function with Firestore on its emulator, against the same on memory.

``functions.gcp.main.serve`` (what ``api`` does) through a Flask app, on a warm runtime of the bench's own,
POST /v1/chat/completions (sampled, so never cached) to the zero-latency fake OpenAI backend, for a tenant and
key with rpm, tpm and a quota set (every limit path taken). Variants, each over ``--requests`` requests after a
warm-up, one at a time:

* Firestore: the runtime ``functions.gcp.bootstrap.build_runtime`` makes (FirestoreStore on the emulator, in
  its own process group; the Storage client on the in-process Storage emulator);
* memory: the same runtime on ``MemoryStore``: what the function costs without a database;
* baseline: one Firestore document read (``BatchGetDocuments``) through the store's own client.

The Firestore calls one request makes are counted on the store's GAPIC client (one per RPC, the store's own
retries included), by method. With 2+ CPUs the measured process runs on CPU 0, the emulator and the fake on the
others.

    python -m bench.gcp_handler_cost [--requests 200]
"""

from __future__ import annotations

import argparse
import contextlib
import gc
import os
import statistics
import tempfile
import time
from collections import Counter
from collections.abc import Callable
from pathlib import Path
from typing import Any

from bench._procs import HIGH_LIMITS, chat_bodies, cpu_plan, free_port, host_note, pin, start_fake, stop
from bench.gcp_cold_start import Emulators, create_bucket, seed_tenant, store_of

MODEL = "bench"
#: The GAPIC methods the store calls (one round trip each).
RPCS = ("batch_get_documents", "commit", "run_query", "begin_transaction", "rollback", "get_document", "batch_write")


def _model(fake_port: int) -> Any:
    from core.domain import ModelSpec

    return ModelSpec(
        id=MODEL,
        kind="generation",
        backend={"type": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1", "model": "m"},
        context_length=4096,
        max_output_tokens=64,
    )


class RpcCounter:
    """Firestore RPCs of one GAPIC client: how many, and the wall time of each, by method."""

    def __init__(self, api: Any) -> None:
        self.count: Counter[str] = Counter()
        self.ms: dict[str, list[float]] = {}
        for name in RPCS:
            method = getattr(api, name, None)
            if method is not None:
                setattr(api, name, self._wrap(name, method))

    def _wrap(self, name: str, method: Callable[..., Any]) -> Callable[..., Any]:
        def call(*args: Any, **kwargs: Any) -> Any:
            self.count[name] += 1
            started = time.perf_counter()
            result = method(*args, **kwargs)
            if name == "batch_get_documents":  # a server stream: the round trip ends when it is read
                result = list(result)
            self.ms.setdefault(name, []).append((time.perf_counter() - started) * 1000)
            return result

        return call

    def reset(self) -> None:
        self.count.clear()
        self.ms.clear()


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
            raise RuntimeError(f"{answer.status_code}: {answer.get_data(as_text=True)[:300]}")
    return samples, (time.process_time() - cpu0) * 1000 / len(bodies)


def _summary(samples: list[float]) -> tuple[float, float, float]:
    ordered = sorted(samples)
    return statistics.mean(samples), statistics.median(samples), ordered[max(0, int(len(ordered) * 0.99) - 1)]


def _poster(rt: Any, key: str) -> Callable[[bytes], Any]:
    """POST a body to ``main.serve`` on the runtime ``rt`` through a Flask app (what functions-framework's app
    does for ``api``, with a runtime of the bench's own)."""
    import flask

    from functions.gcp.main import serve

    app = flask.Flask("bench")
    app.add_url_rule("/<path:path>", "api", lambda path: serve(rt, flask.request), methods=["POST"])
    client = app.test_client()
    headers = {"authorization": f"Bearer {key}", "content-type": "application/json"}
    return lambda body: client.post("/v1/chat/completions", data=body, headers=headers)


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--requests", type=int, default=200)
    p.add_argument("--warmup", type=int, default=20)
    args = p.parse_args(argv)
    measured, helpers = cpu_plan()
    pin(os.getpid(), measured)
    print("== GCP api function: cost per POST /v1/chat/completions (zero-latency fake backend) ==")
    print(f"   ({host_note()})")
    fake_port = free_port()
    fake = start_fake(fake_port, helpers)
    n = args.requests
    try:
        # The metric lines go to stdout on Cloud Run; here they would flood the report.
        with (
            tempfile.TemporaryDirectory() as logs,
            Emulators(Path(logs)) as emulators,
            open(os.devnull, "w") as devnull,
            contextlib.redirect_stdout(devnull),
        ):
            pin(emulators.firestore.pid, helpers)
            env = emulators.env()
            create_bucket(env)
            own = store_of(env)
            own.put_model(_model(fake_port))
            key = seed_tenant(own, HIGH_LIMITS)
            from functions.gcp import bootstrap

            rt = bootstrap.build_runtime(bootstrap.GcpSettings.from_env())
            post = _poster(rt, key)
            _time(post, chat_bodies(MODEL, n=args.warmup, max_tokens=16))
            counter = RpcCounter(rt.gateway.store.rpc.api)  # type: ignore[attr-defined]
            firestore, firestore_cpu = _time(post, chat_bodies(MODEL, n=n, max_tokens=16))
            calls = dict(counter.count)
            call_ms = {name: statistics.median(ms) for name, ms in counter.ms.items()}
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
            memory_rt = bootstrap.build_runtime(bootstrap.GcpSettings.from_env(), store=memory_store)
            mpost = _poster(memory_rt, memory_key)
            _time(mpost, chat_bodies(MODEL, n=args.warmup, max_tokens=16))
            memory, memory_cpu = _time(mpost, chat_bodies(MODEL, n=n, max_tokens=16))
            memory_rt.close()
    finally:
        stop(fake)
    print(f"  {'':<44} {'mean':>8} {'p50':>8} {'p99':>8}   cpu/request (this process)")
    for label, samples, cpu in (
        ("Firestore emulator (FirestoreStore)", firestore, firestore_cpu),
        ("memory (MemoryStore)", memory, memory_cpu),
    ):
        mean, p50, p99 = _summary(samples)
        print(f"  {label:<44} {mean:6.2f} ms {p50:6.2f} ms {p99:6.2f} ms   {cpu:6.2f} ms")
    mean, p50, p99 = _summary(baseline)
    print(f"  {'baseline: one document read':<44} {mean:6.2f} ms {p50:6.2f} ms {p99:6.2f} ms")
    per_request = sum(calls.values()) / n
    detail = ", ".join(
        f"{name} {count / n:.2f} (p50 {call_ms.get(name, 0):.2f} ms)" for name, count in sorted(calls.items())
    )
    print(f"  Firestore round trips per request: {per_request:.2f} ({detail})")
    print(f"  the store's share of a request: {statistics.median(firestore) - statistics.median(memory):+.2f} ms (p50)")


if __name__ == "__main__":
    main()
