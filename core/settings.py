"""Settings of the gateway, read once by the function's bootstrap and passed in frozen."""

from __future__ import annotations

from dataclasses import dataclass, field

from core.auth.tokens import TokenSettings
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
    tokens: TokenSettings = field(default_factory=TokenSettings)

    def __post_init__(self) -> None:
        # A revocation's guard covers what a process may have cached (core.auth.revocation): never longer.
        for name in ("key_cache_ttl_s", "tenant_cache_ttl_s"):
            if not 0 <= getattr(self, name) <= MAX_RECORD_CACHE_S:
                raise ValueError(f"{name} must be between 0 and {MAX_RECORD_CACHE_S:g} seconds")
