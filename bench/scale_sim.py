"""Quotas at internet scale: one busy tenant on a store that throttles hot items, in simulated time.

A discrete-event model, run here in a few minutes: one tenant with 20 API keys sends Poisson arrivals at
500, 2,000 and 10,000 requests/s for a simulated 20 s (5 s at 10,000/s: no default run makes more than
50,000 arrivals; the table's ``s`` column says). Each request is served Lambda-like by a function instance
that runs one request at a time (an instance is busy until its request has settled; a new one is made when
all are busy), and every instance has its own ``LimitEnforcer`` from ``make_enforcer(store, clock)``, so
per-process state stays per instance. A request reserves ``prompt + max_tokens`` (250-350 tokens) at its
arrival and, 0.5-2 s later, settles what it used (less than it reserved) with ``record_usage(UsageRecord(...),
enforcer.settlement(reservation, used))``. The store is ``bench.scale_stores.ThrottlingStore``: the memory
store charging every write to per-partition token buckets of a database model (DynamoDB, Firestore, Cosmos
DB; that module says what each assumes). ``dynamodb-gsi`` (the usage index's writes charged too) runs only
when named in ``--stores``.

A throttled reserve is a 503 for the request. A throttled settle is a 503 too (counted once per request), but
the usage record must not be lost: the runtime retries it after 50 ms, doubling up to 2 s, with jitter, and
the instance stays busy meanwhile. After the arrivals stop, pending settles drain for up to 300 s.

Scenarios: ``quota``: a tenant token quota sized to run out about 60 % into the run, with requests- and
tokens-per-minute limits ten times what the load needs; ``steady``: the same with a quota a hundred times
what the run spends (a tenant in the middle of its month: what every hour but the last of a quota period looks
like); ``minute``: no quota, a tokens-per-minute limit that binds about 60 % into the minute (the run starts on
a minute boundary). The default runs ``quota``; ``--scenarios quota,steady,minute`` runs all three.
Designs: ``single`` (today's ``LimitEnforcer``: every request writes
the tenant's minute and month items) and ``sharded`` (``ShardPolicy(max_shards=64, item_writes_per_s=...)``
from ``core.budget_shards``, when it exists; the per-item budget is the store's per-item rate over a counter
write's units, halved), ``sliced`` (those shards behind budget slices, ``core.budget_slices``, for instances that
serve 80 requests at once) and ``split`` (slices on minute windows split statically, ``core.static_split``,
the quota's draws filling every shard at once).
Knobs for experiments: ``TEXTNLP_SIM_SLICE_REQUESTS`` (a slice's most requests, 256),
``TEXTNLP_SIM_SLICE_FIRST`` (a slice's first size, 4), ``TEXTNLP_SIM_SPLIT_SHARDS`` (the split's shards, 64).

How to read the table, per store x rate x design x scenario:

* ``503 r/s (contended)``: requests refused at reserve / at settle for a throttled store (of the reserve
  refusals, those where the enforcer gave up after its rounds rather than on a StoreThrottled);
  ``throttled``: write attempts refused by a bucket, and their share of all write attempts;
* ``429 (budget left, max)``: refusals for a limit, and those refused while the limit still had room for the
  request (the quota or the minute's tokens minus everything charged and everything reserved and not yet
  settled, at that moment, was at least what the request needed), with the most room seen at such a refusal;
* ``overspend``: tokens charged beyond the quota (or a minute's limit); ``drift``: the store's quota counters
  (a shard's unspent budget deducted) minus what was charged and is still reserved; ``lost``: settles still
  pending after the drain. All three must be 0;
* ``calls/req``, ``units/req``: database calls (every attempt: refused, throttled, retried; reads included)
  and consumed write units, per arriving request;
* ``busiest``: the partition with the most units attempted in one simulated second (retries included)
  against its per-second limit: more than the limit means throttling.

Runs go to ``--jobs`` processes (all CPUs by default). The default run (one scenario, both designs) takes
about 2 minutes on 2 cores; both scenarios take twice that.

    python -m bench.scale_sim [--rates 500,2000,10000] [--seconds 20] [--stores dynamodb,firestore]
                              [--designs single,sharded] [--scenarios quota,minute] [--jobs 2]
"""

from __future__ import annotations

import argparse
import calendar
import heapq
import inspect
import itertools
import os
import random
import time
from collections import defaultdict
from collections.abc import Callable
from concurrent.futures import ProcessPoolExecutor
from dataclasses import dataclass, field

from bench.scale_stores import MODELS, StoreModel, StoreStats, ThrottlingStore, counter_parts
from core.budget_slices import SlicedLimits, SlicePolicy
from core.clock import FixedClock
from core.domain import ApiKeyRecord, CounterChange, Limits, Tenant, UsageRecord
from core.errors import QuotaExceeded, RateLimited, ServiceUnavailable, StoreThrottled
from core.leases import LeaseClock
from core.limits import MINUTE, LimitEnforcer, Reservation
from core.observability import NullMetrics
from core.static_split import StaticSplit
from core.writer_shards import WriterShards

EnforcerFactory = Callable[[ThrottlingStore, FixedClock], "LimitEnforcer | SlicedLimits"]

T0 = float(calendar.timegm((2026, 10, 5, 12, 0, 0)))  # a minute boundary, early in a month
TENANT_ID = "ten_3f9a0c5e7b21d4468a1f0e9c"
MODEL = "llama-3-8b"
PROMPT = (50, 150)  # the prompt's bound, tokens
MAX_TOKENS = 200
COMPLETION = (1, 180)  # tokens actually generated: used = prompt + completion < prompt + max_tokens
MEAN_USED = sum(PROMPT) / 2 + sum(COMPLETION) / 2
MAX_SHARDS = 64
RETRY_FIRST_S, RETRY_MAX_S = 0.05, 2.0
DRAIN_S = 300.0
DEFAULT_RATES = (500.0, 2000.0, 10_000.0)
DEFAULT_STORES = ("dynamodb", "firestore", "cosmos-tenant", "cosmos-hier")  # dynamodb-gsi: on request
DEFAULT_SECONDS = 20.0
MAX_DEFAULT_REQUESTS = 50_000  # a rate whose default run would make more arrivals runs shorter
ARRIVE, SETTLE = 0, 1

try:
    from core import budget_shards
except ImportError:  # the sharded design has not landed yet
    budget_shards = None  # type: ignore[assignment]


def single(model: StoreModel) -> EnforcerFactory:
    """Today's enforcer: one minute item and one month item per tenant."""
    return lambda store, clock: LimitEnforcer(store, clock, NullMetrics(), LeaseClock())


def sharded(model: StoreModel, split: StaticSplit | None = None) -> EnforcerFactory | None:
    """The sharded enforcer, its per-item budget from the store's model (None until core.budget_shards exists).
    Each instance gets its own seeded ``rng`` where the enforcer takes one, so that runs repeat. ``split``:
    minute windows split statically (``core.static_split``)."""
    if budget_shards is None:
        return None
    policy = budget_shards.ShardPolicy(max_shards=MAX_SHARDS, item_writes_per_s=model.item_writes_per_s())
    seeds = itertools.count(1)
    seeded = "rng" in inspect.signature(LimitEnforcer).parameters
    static = {"split": split} if split is not None else {}

    def make(store: ThrottlingStore, clock: FixedClock) -> LimitEnforcer:
        extra = {"rng": random.Random(next(seeds))} if seeded else {}
        return LimitEnforcer(store, clock, NullMetrics(), LeaseClock(), shards=policy, **extra, **static)

    return make


SLICED_CONCURRENCY = 80  # Cloud Run functions' default requests per instance (Azure Functions: per worker, more)


def sliced(model: StoreModel, split: StaticSplit | None = None) -> EnforcerFactory | None:
    """The sharded enforcer behind per-instance budget slices (``core.budget_slices``), for instances that serve
    ``SLICED_CONCURRENCY`` requests at once. A slice grows to a second of its instance's traffic."""
    make_sharded = sharded(model, split)
    if make_sharded is None:
        return None
    policy = SlicePolicy(
        max_requests=int(os.environ.get("TEXTNLP_SIM_SLICE_REQUESTS", "256")),
        first_requests=int(os.environ.get("TEXTNLP_SIM_SLICE_FIRST", "4")),
    )

    def make(store: ThrottlingStore, clock: FixedClock) -> SlicedLimits:
        enforcer = make_sharded(store, clock)
        assert isinstance(enforcer, LimitEnforcer)
        return SlicedLimits(enforcer, store, clock, policy)

    return make


def split(model: StoreModel) -> EnforcerFactory | None:
    """Slices on minute windows split statically over the shards (``core.static_split``): no reservation
    writes a window's own minute item; the quota keeps its draws."""
    return sliced(model, StaticSplit(max_shards=int(os.environ.get("TEXTNLP_SIM_SPLIT_SHARDS", MAX_SHARDS))))


DESIGNS: dict[str, Callable[[StoreModel], EnforcerFactory | None]] = {
    "single": single,
    "sharded": sharded,
    "sliced": sliced,
    "split": split,
}
# Requests an instance serves at once; 1 (Lambda) for the others.
CONCURRENCY = {"sliced": SLICED_CONCURRENCY, "split": SLICED_CONCURRENCY}


def limits_for(scenario: str, rate: float, seconds: float) -> Limits:
    """``quota``: a quota spent ~60 % into the run, minute limits 10x the load; ``minute``: a tpm that binds."""
    rpm = int(rate * MINUTE * 10)
    if scenario == "quota":
        tpm = int(rate * MINUTE * (PROMPT[1] + MAX_TOKENS) * 10)
        return Limits(requests_per_minute=rpm, tokens_per_minute=tpm, token_quota=int(rate * seconds * MEAN_USED * 0.6))
    if scenario == "steady":  # a month's quota: the run spends about 1 % of it
        tpm = int(rate * MINUTE * (PROMPT[1] + MAX_TOKENS) * 10)
        return Limits(requests_per_minute=rpm, tokens_per_minute=tpm, token_quota=int(rate * seconds * MEAN_USED * 100))
    if scenario == "minute":
        return Limits(requests_per_minute=rpm, tokens_per_minute=int(rate * min(seconds, MINUTE) * MEAN_USED * 0.6))
    raise ValueError(f"unknown scenario {scenario!r}")


@dataclass
class RunResult:
    model: str
    rate: float
    seconds: float
    design: str
    scenario: str
    stats: StoreStats
    arrivals: int = 0
    served: int = 0  # reserved
    settled: int = 0
    instances: int = 0
    refused: int = 0  # 429
    refused_with_budget: int = 0
    max_budget_left: int = 0
    unavailable_reserve: int = 0  # 503 at reserve (throttled or contended)
    contended: int = 0  # of which: not a StoreThrottled (the enforcer gave up after its rounds)
    unavailable_settle: int = 0  # requests whose settle was throttled at least once
    settle_retries: int = 0
    overspend: int = 0
    drift: int = 0  # the store's quota counters minus the truth (charged + still reserved): must be 0
    wall_s: float = 0.0

    @property
    def lost(self) -> int:
        return self.served - self.settled


@dataclass
class _Truth:
    """What has really been charged and is still reserved: in all, and by the reservation's minute."""

    limits: Limits
    charged: int = 0
    outstanding: int = 0
    minute_req: dict[int, int] = field(default_factory=lambda: defaultdict(int))
    minute_tok: dict[int, int] = field(default_factory=lambda: defaultdict(int))  # charged + outstanding

    def budget_left(self, exc: Exception, window: int) -> int | None:
        """Room for tokens under the limit that refused (None: the request count refused, with no room)."""
        lim = self.limits
        if isinstance(exc, QuotaExceeded) and lim.token_quota is not None:
            return lim.token_quota - self.charged - self.outstanding
        if lim.requests_per_minute is not None and self.minute_req[window] >= lim.requests_per_minute:
            return None
        if lim.tokens_per_minute is not None:
            return lim.tokens_per_minute - self.minute_tok[window]
        return None


class _Request:
    __slots__ = ("changes", "enforcer", "key", "need", "record", "reservation", "tries", "used", "window")

    def __init__(
        self, key: ApiKeyRecord, need: int, used: int, enforcer: LimitEnforcer | SlicedLimits, window: int
    ) -> None:
        self.key, self.need, self.used, self.enforcer, self.window = key, need, used, enforcer, window
        self.reservation: Reservation | None = None
        self.changes: list[CounterChange] | None = None
        self.record: UsageRecord | None = None
        self.tries = 0


def simulate(
    model: StoreModel,
    rate: float,
    seconds: float,
    make_enforcer: EnforcerFactory,
    scenario: str = "quota",
    *,
    design: str = "single",
    keys: int = 20,
    seed: int = 1,
    limits: Limits | None = None,
    latency: tuple[float, float] = (0.5, 2.0),
    drain_s: float = DRAIN_S,
    concurrency: int = 1,
) -> RunResult:
    """One run: Poisson arrivals at ``rate`` for ``seconds`` (simulated), then the settles drain."""
    started = time.perf_counter()
    rng = random.Random(seed)
    clock = FixedClock(T0)
    store = ThrottlingStore(model, clock.now)
    limits = limits or limits_for(scenario, rate, seconds)
    tenant = Tenant(TENANT_ID, "scale", 0.0, limits)
    key_records = [
        ApiKeyRecord(f"key_{rng.getrandbits(96):024x}", TENANT_ID, f"k{i}", "", frozenset(), 0.0) for i in range(keys)
    ]
    result = RunResult(model.name, rate, seconds, design, scenario, store.stats)
    truth = _Truth(limits)
    idle: list[LimitEnforcer | SlicedLimits] = []  # an instance once per request it can take now
    fleet: list[LimitEnforcer | SlicedLimits] = []
    writers: dict[int, WriterShards] = {}  # an instance's own daily-aggregate shards (``core.writer_shards``)
    order = itertools.count()
    events: list[tuple[float, int, int, _Request | None]] = [(T0 + rng.expovariate(rate), next(order), ARRIVE, None)]
    end, stop = T0 + seconds, T0 + seconds + drain_s

    def arrive(now: float) -> None:
        result.arrivals += 1
        if not idle:
            fleet.append(make_enforcer(store, clock))
            idle.extend([fleet[-1]] * concurrency)
            writers[id(fleet[-1])] = WriterShards(f"i{result.instances}", clock=clock.now)
            result.instances += 1
        prompt = rng.randint(*PROMPT)
        need, used = prompt + MAX_TOKENS, prompt + rng.randint(*COMPLETION)
        req = _Request(rng.choice(key_records), need, used, idle.pop(), int(now // MINUTE))
        try:
            req.reservation = req.enforcer.reserve(tenant, req.key, need)
        except (QuotaExceeded, RateLimited) as exc:
            result.refused += 1
            left = truth.budget_left(exc, req.window)
            if left is not None and left >= need:
                result.refused_with_budget += 1
                result.max_budget_left = max(result.max_budget_left, left)
            idle.append(req.enforcer)
            return
        except ServiceUnavailable as exc:  # StoreThrottled, or the counters contended
            result.unavailable_reserve += 1
            result.contended += not isinstance(exc, StoreThrottled)
            idle.append(req.enforcer)
            return
        result.served += 1
        truth.outstanding += need
        truth.minute_req[req.window] += 1
        truth.minute_tok[req.window] += need
        heapq.heappush(events, (now + rng.uniform(*latency), next(order), SETTLE, req))

    def settle(now: float, req: _Request) -> None:
        if req.changes is None:
            assert req.reservation is not None
            req.changes = req.enforcer.settlement(req.reservation, req.used)
            prompt = req.need - MAX_TOKENS
            req.record = UsageRecord(
                f"req_{next(order):012d}", TENANT_ID, req.key.id, MODEL, "/v1/chat/completions",
                prompt, req.used - prompt, False, 0.0, 200, now,
            )  # fmt: skip
        assert req.record is not None
        store.writer = writers[id(req.enforcer)]
        try:
            store.record_usage(req.record, req.changes)
        except StoreThrottled:
            result.unavailable_settle += req.tries == 0
            req.tries += 1
            result.settle_retries += 1
            pause = min(RETRY_MAX_S, RETRY_FIRST_S * 2 ** (req.tries - 1)) * rng.uniform(0.5, 1.5)
            heapq.heappush(events, (now + pause, next(order), SETTLE, req))
            return
        result.settled += 1
        truth.charged += req.used
        truth.outstanding -= req.need
        truth.minute_tok[req.window] += req.used - req.need
        idle.append(req.enforcer)

    while events:
        now, _, kind, req = heapq.heappop(events)
        if now > stop:
            break
        clock.t = now
        if kind == ARRIVE:
            if now < end:
                heapq.heappush(events, (now + rng.expovariate(rate), next(order), ARRIVE, None))
                arrive(now)
        else:
            assert req is not None
            settle(now, req)
    for instance in fleet:  # a graceful shutdown: what slices hold goes back, retried while throttled
        for _ in range(int(drain_s)):
            if not isinstance(instance, SlicedLimits) or instance.close_all():
                break
            clock.t += 1.0
    _finish(result, truth, store, limits)
    result.wall_s = time.perf_counter() - started
    return result


def _finish(result: RunResult, truth: _Truth, store: ThrottlingStore, limits: Limits) -> None:
    """Overspend and drift against the truth, from the store's counters read without charge."""
    if limits.token_quota is not None:
        result.overspend = max(0, truth.charged - limits.token_quota)
        quota_items = [i for i in store.counter_items() if (p := counter_parts(i)) is not None and p[0] == "q"]
        spent = sum(_spent(store.peek(i)) for i in quota_items)
        result.drift = spent - truth.charged - truth.outstanding
    if limits.tokens_per_minute is not None:
        over = max((tok - limits.tokens_per_minute for tok in truth.minute_tok.values()), default=0)
        result.overspend = max(result.overspend, over)


def _spent(values: dict[str, int]) -> int:
    """The tenant's quota tokens an item counts as spent: ``used``, less a shard's budget of it (``b|used`` or
    ``b|used#<limit>``, core.budget_shards), which the window's own item counted when it was drawn."""
    budgets = sum(v for name, v in values.items() if name.startswith("b|used") and name[6:7] in ("", "#"))
    return values.get("used", 0) - budgets


def default_seconds(rate: float, seconds: float | None) -> float:
    if seconds is not None:
        return seconds
    return min(DEFAULT_SECONDS, MAX_DEFAULT_REQUESTS / rate)


def main(argv: list[str] | None = None) -> None:
    from bench.scale_report import assumptions, table

    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--rates", default=",".join(f"{r:g}" for r in DEFAULT_RATES), help="requests/s, comma-separated"
    )
    parser.add_argument("--seconds", type=float, default=None, help=f"simulated seconds (default {DEFAULT_SECONDS:g}, "
                        f"shorter where that makes more than {MAX_DEFAULT_REQUESTS:,} arrivals)")  # fmt: skip
    parser.add_argument(
        "--stores", default=",".join(DEFAULT_STORES), help=f"store models, comma-separated, of: {', '.join(MODELS)}"
    )
    parser.add_argument("--designs", default=",".join(DESIGNS), help="single, sharded, sliced, split")
    parser.add_argument("--scenarios", default="quota", help="quota, steady, minute (comma-separated)")
    parser.add_argument("--keys", type=int, default=20)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--jobs", type=int, default=os.cpu_count() or 1, help="runs in parallel (processes)")
    args = parser.parse_args(argv)
    rates = [float(r) for r in args.rates.split(",") if r]
    stores = [MODELS[s] for s in args.stores.split(",") if s]
    designs = [d for d in args.designs.split(",") if d]
    for name in designs:
        if name not in DESIGNS:
            parser.error(f"unknown design {name!r}")
    if "sharded" in designs and budget_shards is None:
        print("sharded: not available yet (core/budget_shards.py does not exist); running the other designs\n")
    print(assumptions(stores, args.keys))
    jobs = [
        (model.name, rate, default_seconds(rate, args.seconds), name, scenario, args.keys, args.seed)
        for scenario in [s for s in args.scenarios.split(",") if s]
        for model in stores
        for rate in rates
        for name in designs
        if name == "single" or budget_shards is not None
    ]
    wall = time.perf_counter()
    # The longest runs first (the sharded design makes more calls), so that the processes finish together.
    longest = sorted(range(len(jobs)), key=lambda i: -jobs[i][1] * jobs[i][2] * (2 if jobs[i][3] != "single" else 1))
    with ProcessPoolExecutor(max_workers=max(1, min(args.jobs, len(jobs)))) as pool:
        done = dict(zip(longest, pool.map(_job, [jobs[i] for i in longest]), strict=True))
    results = [done[i] for i in range(len(jobs))]
    print()
    print(table(results))
    print(f"\nwall time: {time.perf_counter() - wall:.1f} s for {len(results)} runs on {args.jobs} processes")


def _job(job: tuple[str, float, float, str, str, int, int]) -> RunResult:
    """One run in a worker process (a factory does not pickle: it is made there)."""
    store, rate, seconds, design, scenario, keys, seed = job
    model = MODELS[store]
    factory = DESIGNS[design](model)
    assert factory is not None
    concurrency = CONCURRENCY.get(design, 1)
    return simulate(
        model, rate, seconds, factory, scenario, design=design, keys=keys, seed=seed, concurrency=concurrency
    )


if __name__ == "__main__":
    main()
