"""API key format, hashing and verification. Keys are shown once and stored only as a hash."""

from __future__ import annotations

import hashlib
import hmac
import secrets
from dataclasses import replace

from core.clock import new_id
from core.domain import ALL_SCOPES, ApiKeyRecord, Limits
from core.errors import InvalidRequest

KEY_PREFIX = "tnlp"


def hash_secret(secret: str) -> str:
    """SHA-256 of the whole key. Keys carry 256 random bits, so a fast hash is enough."""
    return hashlib.sha256(secret.encode()).hexdigest()


def parse_key(presented: str) -> str:
    """The id of the record a presented key must match.

    Minted keys embed their id (``tnlp_key_<hex>_<secret>``). A key imported from elsewhere (an
    operator's ``TEXTNLP_ADMIN_KEY``, say) gets an id derived from its hash.
    """
    parts = presented.split("_")
    if len(parts) == 4 and parts[0] == KEY_PREFIX and parts[1] == "key":
        return f"key_{parts[2]}"
    return "key_" + hash_secret(presented)[:16]


def imported(plaintext: str, tenant_id: str, name: str, scopes: frozenset[str], now: float) -> ApiKeyRecord:
    """A record for a key chosen by an operator rather than minted here."""
    if len(plaintext) < 20:
        raise InvalidRequest("an imported key needs at least 20 characters", param="key")
    return ApiKeyRecord(
        id=parse_key(plaintext),
        tenant_id=tenant_id,
        name=name,
        key_hash=hash_secret(plaintext),
        scopes=scopes,
        created_at=now,
        prefix=plaintext[:6],
    )


def verify(presented: str, record: ApiKeyRecord) -> bool:
    """Constant-time comparison of the presented key's hash with the stored one."""
    return hmac.compare_digest(hash_secret(presented).encode(), record.key_hash.encode())


def mint(
    tenant_id: str,
    name: str,
    scopes: frozenset[str],
    now: float,
    expires_at: float | None = None,
    limits: Limits | None = None,
) -> tuple[str, ApiKeyRecord]:
    """A new key: the plaintext (to show once) and the record to store."""
    unknown = scopes - ALL_SCOPES
    if unknown:
        raise InvalidRequest(f"unknown scopes: {', '.join(sorted(unknown))}", param="scopes")
    if not scopes:
        raise InvalidRequest("a key needs at least one scope", param="scopes")
    key_id = new_id("key", 8)
    plaintext = f"{KEY_PREFIX}_{key_id}_{secrets.token_urlsafe(32).replace('_', 'x')}"
    record = ApiKeyRecord(
        id=key_id,
        tenant_id=tenant_id,
        name=name,
        key_hash=hash_secret(plaintext),
        scopes=frozenset(scopes),
        created_at=now,
        expires_at=expires_at,
        limits=limits or Limits(),
        prefix=plaintext[:16],
    )
    return plaintext, record


def revoked(record: ApiKeyRecord, now: float) -> ApiKeyRecord:
    return replace(record, revoked_at=now)
