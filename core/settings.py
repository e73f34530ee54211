"""Settings of the gateway, read once by the function's bootstrap and passed in frozen."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.auth.access_tokens import TokenSettings
from core.limits import MAX_RECORD_CACHE_S


@dataclass(frozen=True, slots=True)
class GatewaySettings:
    max_body_bytes: int = 1_048_576
    key_cache_ttl_s: float = 5.0
    tenant_cache_ttl_s: float = 5.0
    model_cache_ttl_s: float = 5.0
    cache_enabled: bool = True
    cache_ttl_s: float = 3600.0
    cache_l1_size: int = 2048
    log_level: str = "INFO"
    log_content: bool = False
    # Kept free before a runtime's deadline (Request.deadline): the failed call is settled and answered in it.
    deadline_margin_s: float = 1.0
    # The longest a request may run (its deadline, whatever the runtime allows) and so hold a reservation;
    # a reservation never settled is given back within LeaseClock.bound_s (core.leases).
    max_request_s: float = 900.0
    # How far the clocks of two instances may disagree (the lease epochs are read from each one's clock).
    clock_skew_s: float = 60.0
    # Threads that run store calls off the event loop (core.offload), so concurrent requests overlap their
    # store round trips; at least the concurrency one instance serves. 0: on the loop (a store that never blocks).
    store_threads: int = 64
    # A kind of store step whose recent runs took less than this runs on the loop (core.offload): a thread hop
    # costs ~65 us of CPU, and a local SQLite step (~0.2 ms, a few ms when its writers queue for the file's lock)
    # holds the loop less than hopping would cost; a network store's steps (tens of ms) go to the threads.
    # 0: every step off the loop.
    store_inline_below_s: float = 0.005
    # How many items one tenant's counters of a window may spread over (core.budget_shards), a power of two:
    # 1 keeps them in one item (SQLite, memory: a single file or process has no per-item write limit); a
    # store with one (DynamoDB) sets more, and ``counter_item_writes_per_s`` below its per-item limit.
    counter_shards: int = 1
    counter_item_writes_per_s: float = 400.0
    # The shards a process gives each tenant before it has measured the tenant's rate (tests force sharding).
    counter_shards_start: int = 1
    # Runtimes whose instances serve many requests at once (Cloud Run, Azure Functions) spend slices of budget
    # in memory (core.budget_slices): the requests a slice may grow to; 0 reserves request by request.
    counter_slice_requests: int = 0
    # Minute windows split statically over ``counter_shards`` items (core.static_split): no reservation writes a
    # window's own minute item. For stores whose items take about a write a second (Firestore).
    counter_static_minutes: bool = False
    tokens: TokenSettings = field(default_factory=TokenSettings)

    def __post_init__(self) -> None:
        # A revocation's guard covers what a process may have cached (core.auth.revocation): never longer.
        for name in ("key_cache_ttl_s", "tenant_cache_ttl_s"):
            if not 0 <= getattr(self, name) <= MAX_RECORD_CACHE_S:
                raise ValueError(f"{name} must be between 0 and {MAX_RECORD_CACHE_S:g} seconds")
        if not 0 <= self.deadline_margin_s <= 60:
            raise ValueError("deadline_margin_s must be between 0 and 60 seconds")
        if self.store_threads < 0 or self.store_inline_below_s < 0:
            raise ValueError("store_threads and store_inline_below_s must be 0 or more")
        if self.counter_shards < 1 or self.counter_shards & (self.counter_shards - 1):
            raise ValueError("counter_shards must be a power of two, at least 1")
        if not 1 <= self.counter_shards_start <= self.counter_shards or self.counter_item_writes_per_s <= 0:
            raise ValueError("counter_shards_start must be 1 to counter_shards, counter_item_writes_per_s above 0")
        if self.counter_slice_requests < 0:
            raise ValueError("counter_slice_requests must be 0 (no slices) or more")
        if not (self.max_request_s > 0 and self.clock_skew_s >= 0):
            raise ValueError("max_request_s must be above 0 and clock_skew_s not below 0")
