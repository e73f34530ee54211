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
    tokens: TokenSettings = field(default_factory=TokenSettings)

    def __post_init__(self) -> None:
        # A revocation's guard covers what a process may have cached (core.auth.revocation): never longer.
        for name in ("key_cache_ttl_s", "tenant_cache_ttl_s"):
            if not 0 <= getattr(self, name) <= MAX_RECORD_CACHE_S:
                raise ValueError(f"{name} must be between 0 and {MAX_RECORD_CACHE_S:g} seconds")
        if not 0 <= self.deadline_margin_s <= 60:
            raise ValueError("deadline_margin_s must be between 0 and 60 seconds")
        if not (self.max_request_s > 0 and self.clock_skew_s >= 0):
            raise ValueError("max_request_s must be above 0 and clock_skew_s not below 0")
