"""Candidates per second of /v1/validate's CPU metrics: in-process per metric, the default set, and via the gateway."""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import random
import statistics
import time
from collections.abc import Callable, Mapping
from typing import Any

from adapters.local.memory_store import MemoryStore
from core.app import Gateway
from core.auth import api_keys
from core.clock import FixedClock
from core.domain import Tenant
from core.http import Request
from core.settings import GatewaySettings
from core.validation.report import DEFAULT_METRICS, DEFAULT_REFERENCE_METRICS, METRICS, Inputs, evaluate

SUBJECTS = [
    "the customer",
    "our team",
    "the new model",
    "a small bakery",
    "the city council",
    "my neighbour",
    "the airline",
]
VERBS = ["reported", "announced", "delivered", "reviewed", "cancelled", "approved", "questioned", "praised"]
OBJECTS = [
    "the quarterly results",
    "a late delivery",
    "the revised budget",
    "the weekend schedule",
    "a faulty charger",
    "the new menu",
    "the annual survey",
    "a noisy construction site",
]
TAILS = [
    "after a long meeting",
    "on Monday morning",
    "despite the heavy rain",
    "without any warning",
    "to everyone's surprise",
    "before the deadline",
    "in a short statement",
    "with some reservations",
]
EXTRAS = [
    "",
    " Contact jane.roe@example.org for details.",
    " Call (415) 555-2671 to confirm.",
    " It shipped to 42 Elm Street last week.",
]


def synthetic(n: int, seed: int = 0) -> tuple[list[str], list[list[str]]]:
    """Template sentences (~20-30 words) with references that paraphrase part of them; some PII, some repeats."""
    rng = random.Random(seed)
    candidates: list[str] = []
    references: list[list[str]] = []
    for i in range(n):
        parts = [rng.choice(SUBJECTS), rng.choice(VERBS), rng.choice(OBJECTS), rng.choice(TAILS)]
        second = f"{rng.choice(SUBJECTS).capitalize()} {rng.choice(VERBS)} {rng.choice(OBJECTS)} {rng.choice(TAILS)}."
        extra = EXTRAS[(i // 10) % len(EXTRAS)] if i % 10 == 0 else ""  # PII in ~8% of them
        text = f"{' '.join(parts).capitalize()}. {second}{extra}"
        if i % 50 == 49:
            text = candidates[-1]  # 2% exact repeats, for near-duplicates
        candidates.append(text)
        ref_parts = [rng.choice(SUBJECTS), rng.choice(VERBS), parts[2], parts[3]]
        references.append([f"{' '.join(ref_parts).capitalize()}.", f"{parts[0].capitalize()} {parts[1]} it."])
    return candidates, references


def timed(fn: Callable[[], Any], repeat: int) -> float:
    """Best wall time of ``repeat`` runs (the first run also imports sacrebleu/rouge-score: reported apart)."""
    times = []
    for _ in range(repeat):
        started = time.perf_counter()
        fn()
        times.append(time.perf_counter() - started)
    return min(times)


class _NoBackends:
    def backend_for(self, route: Mapping[str, Any]) -> Any:
        raise RuntimeError("the CPU metrics call no backend")


def via_gateway(payload: dict[str, Any], repeat: int) -> tuple[float, int]:
    clock = FixedClock()
    store = MemoryStore(clock=clock.now)
    tenant = Tenant(id="ten_bench", name="bench", created_at=clock.now())
    store.put_tenant(tenant)
    key, record = api_keys.mint(tenant.id, "k", frozenset({"validate"}), clock.now())
    store.put_key(record)
    gateway = Gateway(store, _NoBackends(), clock=clock, settings=GatewaySettings(max_body_bytes=16 * 1024 * 1024))
    body = json.dumps(payload).encode()
    headers = {"authorization": f"Bearer {key}"}

    def call() -> None:
        response = asyncio.run(gateway.handle(Request("POST", "/v1/validate", headers, {}, body)))
        assert response.status == 200, response.body[:300]

    return timed(call, repeat), len(body)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__)
    parser.add_argument("--n", type=int, default=1000, help="candidates (default 1000)")
    parser.add_argument("--repeat", type=int, default=3, help="runs per figure; the best is shown (default 3)")
    args = parser.parse_args()
    candidates, references = synthetic(args.n)
    inputs = Inputs(candidates, references)
    words = statistics.fmean(len(c.split()) for c in candidates)
    print(f"validate throughput: {args.n} candidates (~{words:.0f} words), 2 references each")
    print(f"load average {os.getloadavg()[0]:.2f} on {os.cpu_count()} CPUs (other work on the host skews figures)")

    started = time.perf_counter()
    evaluate(["bleu", "rouge1", "self_bleu"], Inputs(candidates[:2], references[:2]))
    print(f"first use (imports sacrebleu + rouge-score): {time.perf_counter() - started:.2f} s\n")

    print(f"{'metric':<22}{'seconds':>10}{'cand/s':>12}")
    for name, info in METRICS.items():
        if info.source != "cpu":
            continue
        seconds = timed(functools.partial(evaluate, [name], inputs), args.repeat)
        print(f"{name:<22}{seconds:>10.3f}{args.n / seconds:>12.0f}")

    default = [*DEFAULT_METRICS, *DEFAULT_REFERENCE_METRICS]
    seconds = timed(lambda: evaluate(default, inputs), args.repeat)
    print(f"\ndefault set with references ({', '.join(default)}):")
    print(f"  in-process   {seconds:8.3f} s   {args.n / seconds:8.0f} candidates/s")
    no_refs = timed(lambda: evaluate(list(DEFAULT_METRICS), Inputs(candidates)), args.repeat)
    print(f"  without refs {no_refs:8.3f} s   {args.n / no_refs:8.0f} candidates/s  ({', '.join(DEFAULT_METRICS)})")
    payload = {"candidates": candidates, "references": references}
    gw_seconds, size = via_gateway(payload, args.repeat)
    print(f"  via Gateway.handle (JSON in/out, auth, {size / 1024:.0f} KiB body): {gw_seconds:.3f} s   "
          f"{args.n / gw_seconds:.0f} candidates/s")  # fmt: skip


if __name__ == "__main__":
    main()
