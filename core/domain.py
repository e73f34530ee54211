"""Domain records shared by the core and the adapters: tenants, keys, limits, models, usage."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import StrEnum
from typing import Any, Literal


class Scope(StrEnum):
    GENERATE = "generate"
    EMBED = "embed"
    VALIDATE = "validate"
    BATCH = "batch"
    FINE_TUNE = "fine_tune"
    ADMIN = "admin"


ALL_SCOPES: frozenset[str] = frozenset(s.value for s in Scope)
QuotaPeriod = Literal["day", "month"]


@dataclass(frozen=True, slots=True)
class Limits:
    """Limits of a tenant or of one key. ``None`` means unlimited."""

    requests_per_minute: int | None = None
    tokens_per_minute: int | None = None
    token_quota: int | None = None
    quota_period: QuotaPeriod = "month"


@dataclass(frozen=True, slots=True)
class Tenant:
    id: str
    name: str
    created_at: float
    limits: Limits = field(default_factory=Limits)
    # Set while an operator has suspended the tenant: its keys and tokens are refused everywhere.
    suspended_at: float | None = None


@dataclass(frozen=True, slots=True)
class ApiKeyRecord:
    """A stored API key: only the SHA-256 of the secret is kept."""

    id: str
    tenant_id: str
    name: str
    key_hash: str
    scopes: frozenset[str]
    created_at: float
    expires_at: float | None = None
    revoked_at: float | None = None
    limits: Limits = field(default_factory=Limits)
    prefix: str = ""

    def is_active(self, now: float) -> bool:
        if self.revoked_at is not None:
            return False
        return self.expires_at is None or now < self.expires_at


@dataclass(frozen=True, slots=True)
class Principal:
    """Who is calling: always derived from a credential, never from a header a caller can set."""

    tenant_id: str
    key_id: str
    scopes: frozenset[str]
    via: Literal["api_key", "jwt"] = "api_key"

    def has(self, scope: str) -> bool:
        return scope in self.scopes or Scope.ADMIN in self.scopes


ModelKind = Literal["generation", "embedding"]


@dataclass(frozen=True, slots=True)
class ModelSpec:
    """A registry entry: what a model is and how to reach it."""

    id: str
    kind: ModelKind
    backend: dict[str, Any]
    context_length: int = 2048
    max_output_tokens: int = 512
    price_per_1k_prompt_tokens: float = 0.0
    price_per_1k_completion_tokens: float = 0.0
    fallbacks: tuple[str, ...] = ()
    version: str = "1"
    owned_by: str = "textnlp"
    created_at: float = 0.0
    timeout_s: float = 60.0
    max_retries: int = 2
    metadata: dict[str, Any] = field(default_factory=dict)
    # Other names callers may use for this model (``gpt2``); unique across ids and aliases of all models.
    aliases: tuple[str, ...] = ()

    def cost(self, prompt_tokens: int, completion_tokens: int) -> float:
        return round(
            prompt_tokens * self.price_per_1k_prompt_tokens / 1000
            + completion_tokens * self.price_per_1k_completion_tokens / 1000,
            8,
        )


@dataclass(frozen=True, slots=True)
class UsageRecord:
    """One metered request. Written once per request id (idempotent)."""

    request_id: str
    tenant_id: str
    key_id: str
    model: str
    endpoint: str
    prompt_tokens: int
    completion_tokens: int
    cached: bool
    latency_ms: float
    status: int
    created_at: float
    cost: float = 0.0
    # How the call ended: "completed", or for a stream "client_gone", "backend_error", "truncated", "timeout",
    # "shutdown"; "failed" for a call that produced nothing.
    ended: str = "completed"

    @property
    def total_tokens(self) -> int:
        return self.prompt_tokens + self.completion_tokens


@dataclass(frozen=True, slots=True)
class UsageAggregate:
    """Usage summed over a group (a day, a model, or both)."""

    tenant_id: str
    day: str
    model: str
    requests: int
    prompt_tokens: int
    completion_tokens: int
    cached_requests: int
    cost: float


@dataclass(frozen=True, slots=True)
class SigningKey:
    """An RS256 key pair used to sign access tokens. Retired keys still verify until they expire."""

    kid: str
    private_pem: bytes
    public_pem: bytes
    created_at: float
    retired_at: float | None = None


@dataclass(frozen=True, slots=True)
class Document:
    """A JSON document owned by one tenant; ``version`` starts at 1 and grows with each write."""

    id: str
    owner: str
    body: dict[str, Any]
    version: int = 0
    updated_at: float = 0.0


@dataclass(frozen=True, slots=True)
class CounterChange:
    """Increments to the fields of one counter item, conditional when it has ``limits`` or ``floors``.

    ``limits`` caps fields and ``floors`` bounds them from below, both as they would be after the write (a
    field at both its floor and its limit is an equality). ``otherwise``, in a settlement written with a
    usage record: what is added instead when the conditions do not hold (None: nothing).
    """

    item: str
    increments: dict[str, int]
    limits: dict[str, int] = field(default_factory=dict)
    expires_at: float | None = None
    floors: dict[str, int] = field(default_factory=dict)
    otherwise: dict[str, int] | None = None

    @property
    def conditional(self) -> bool:
        return bool(self.limits or self.floors)
