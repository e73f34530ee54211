"""Key Vault: the SigningKeyStore port as versions of one secret, and the deployment's admin key.

Key Vault has no conditional write on secrets: no ``If-Match``, no etag on a secret's bundle, no create-only
PUT; a PUT always adds a version. A compare-and-swap on one secret is therefore impossible (the etag CAS the
issue asks for exists in Secret Manager and Secrets Manager, not here), and a pointer secret with a
``tags`` counter only moves the race to the pointer. What Key Vault does give is immutable versions with
their own ids, each one's ``enabled`` attribute, and a list of them; and this port's writes commute: a put
adds a key or retires one. So the keys are a join (a merge with no lost update) instead of a swap:

- the key set is the JOIN of the ENABLED versions' sets: per kid, a retired record beats an active one,
  the earlier retirement beats a later one (retirement is final), and ties go to the greater record;
- ``put_signing_key`` writes a NEW version holding the join it read plus its key (one PUT, no condition),
  then compacts: it disables every enabled version that another enabled version DOMINATES (covers every
  kid at least as far; equal sets: the greater version id wins). Dominance is a strict order, so some
  version covering each disabled one is always still enabled: no racing writer, compactor or crash can
  lose a key, and no retry is ever needed for correctness (two writers racing leave two versions, both
  enabled until one of them compacts, and readers join both meanwhile);
- a read lists the versions (one call per 25), and GETs only versions it has not seen (they are
  immutable, so each is read once per instance); a version disabled between the list and its GET makes
  the read list again.

Assumes what Key Vault documents for one vault: a write is in the next list. Cost: a read is one call
(after the first), a put four (list, PUT, list, PATCH of the version it supersedes); the version history
grows by about two per rotation (disabled versions stay listed; at one rotation a month that is one page
of the list for a year). IAM: ``Key Vault Secrets Officer`` on the secret (get, list, set, update).
"""

from __future__ import annotations

import base64
import functools
import json
import re
import threading
import time
from collections.abc import Callable
from typing import TypeVar

from adapters.azure.keyvault_rest import HttpSession, KeyVaultError, KeyVaultRest, TokenProvider, version_of
from core.domain import SigningKey
from core.errors import ServiceUnavailable

CACHE_TTL_S = 30.0
MAX_READS = 5
_NAME = re.compile(r"^[0-9A-Za-z-]{1,127}$")
RANK = tuple[bool, float, float, bytes, bytes]
T = TypeVar("T")


class ConcurrentUpdate(Exception):
    """Versions kept being disabled under a read, ``MAX_READS`` times (compactions racing without end)."""


def encode_keys(keys: list[SigningKey]) -> str:
    """``{"keys": [{"kid", "private_pem", "public_pem" (base64 PEM), "created_at", "retired_at"}]}``: the
    document the AWS and Google Cloud secrets hold too, so keys move between clouds as they are."""
    items = [
        {
            "kid": key.kid,
            "private_pem": base64.b64encode(key.private_pem).decode(),
            "public_pem": base64.b64encode(key.public_pem).decode(),
            "created_at": key.created_at,
            "retired_at": key.retired_at,
        }
        for key in keys
    ]
    return json.dumps({"keys": items}, separators=(",", ":"))


def decode_keys(value: str | None) -> list[SigningKey]:
    """The keys in a version's value; a value that is not this document holds none."""
    try:
        data = json.loads(value or "{}")
    except ValueError:
        return []
    items = data.get("keys") if isinstance(data, dict) else None
    if not isinstance(items, list):
        return []
    return [
        SigningKey(
            kid=str(item["kid"]),
            private_pem=base64.b64decode(item["private_pem"]),
            public_pem=base64.b64decode(item["public_pem"]),
            created_at=float(item["created_at"]),
            retired_at=None if item.get("retired_at") is None else float(item["retired_at"]),
        )
        for item in items
    ]


def rank(key: SigningKey) -> RANK:
    """The merge order of two records of one kid: retired over active, the earlier retirement first."""
    retired = key.retired_at is not None
    return (retired, -(key.retired_at or 0.0), key.created_at, key.private_pem, key.public_pem)


def join(*sets: list[SigningKey]) -> list[SigningKey]:
    """Every kid once, its greatest record by ``rank``; ordered by creation, then kid."""
    found: dict[str, SigningKey] = {}
    for keys in sets:
        for key in keys:
            held = found.get(key.kid)
            if held is None or rank(key) > rank(held):
                found[key.kid] = key
    return sorted(found.values(), key=lambda k: (k.created_at, k.kid))


def covers(big: list[SigningKey], small: list[SigningKey]) -> bool:
    """``big`` holds every kid of ``small`` at least as far on (its join with ``small`` is itself)."""
    held = {key.kid: rank(key) for key in big}
    return all(key.kid in held and held[key.kid] >= rank(key) for key in small)


def dominated(versions: dict[str, list[SigningKey]]) -> list[str]:
    """The versions another one dominates: covers it and is not covered back, or equal with a greater id."""
    return sorted(
        mine
        for mine, keys in versions.items()
        if any(
            other != mine and covers(theirs, keys) and (not covers(keys, theirs) or other > mine)
            for other, theirs in versions.items()
        )
    )


class KeyVaultSigningKeys:
    """All signing keys in one Key Vault secret (default ``textnlp-signing-keys``); see the module docstring.

    ``vault_url`` is the vault's URI (``https://<name>.vault.azure.net``; a local server's in tests).
    """

    def __init__(
        self,
        vault_url: str,
        name: str = "textnlp-signing-keys",
        rest: KeyVaultRest | None = None,
        *,
        token_provider: TokenProvider | None = None,
        session: HttpSession | None = None,
        cache_ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret = _checked(name)
        self._rest = rest or KeyVaultRest(vault_url, token_provider=token_provider, session=session)
        self._ttl = cache_ttl_s
        self._clock = clock
        self._cached: tuple[float, list[SigningKey]] | None = None
        self._seen: dict[str, list[SigningKey]] = {}  # version id -> its keys (versions never change)
        self._lock = threading.Lock()

    def list_signing_keys(self) -> list[SigningKey]:
        cached = self._cached
        if cached is not None and self._clock() < cached[0]:
            return list(cached[1])
        keys = join(*self._enabled().values())
        self._cached = (self._clock() + self._ttl, keys)
        return list(keys)

    def put_signing_key(self, key: SigningKey) -> None:
        """Add the key, or retire the one with its kid; no other writer's key is lost (see the docstring)."""
        keys = join(*self._enabled().values(), [key])
        written = _unavailable_as_503(lambda: self._rest.set_secret(self._secret, encode_keys(keys), _TAGS))
        with self._lock:
            self._seen[version_of(str(written["id"]))] = keys
        self.compact()
        self._cached = None

    def compact(self) -> list[str]:
        """Disable the enabled versions another enabled one dominates; the ids disabled."""
        versions = self._enabled()
        gone = dominated(versions)
        for version in gone:
            try:
                _unavailable_as_503(functools.partial(self._rest.update_version, self._secret, version, enabled=False))
            except KeyVaultError as exc:
                if not exc.not_found:
                    raise
        return gone

    def _enabled(self) -> dict[str, list[SigningKey]]:
        """The enabled versions and their keys: none when the secret does not exist yet."""
        for _ in range(MAX_READS):
            try:
                items = _unavailable_as_503(lambda: list(self._rest.list_versions(self._secret)))
            except KeyVaultError as exc:
                if exc.not_found:
                    return {}
                raise
            enabled = [version_of(str(i["id"])) for i in items if (i.get("attributes") or {}).get("enabled", True)]
            try:
                return {version: self._keys_of(version) for version in enabled}
            except KeyVaultError as exc:
                if not (exc.disabled or exc.not_found):
                    raise  # disabled since the list: a newer version covers it, list again
        raise ConcurrentUpdate(f"the versions of {self._secret} kept changing; gave up after {MAX_READS} reads")

    def _keys_of(self, version: str) -> list[SigningKey]:
        with self._lock:
            known = self._seen.get(version)
        if known is not None:
            return known
        bundle = _unavailable_as_503(lambda: self._rest.get_secret(self._secret, version))
        keys = decode_keys(bundle.get("value"))
        with self._lock:
            self._seen[version] = keys
        return keys


class KeyVaultAdminKey:
    """The deployment's first admin key: the latest version of its secret (Terraform generates it).

    ``read()`` is one call at a cold start; the caller hands the key to ``core.auth.admin_bootstrap``.
    IAM: ``Key Vault Secrets User`` on the secret.
    """

    def __init__(
        self,
        vault_url: str,
        name: str = "textnlp-admin-key",
        rest: KeyVaultRest | None = None,
        *,
        token_provider: TokenProvider | None = None,
        session: HttpSession | None = None,
    ) -> None:
        self._secret = _checked(name)
        self._rest = rest or KeyVaultRest(vault_url, token_provider=token_provider, session=session)

    def read(self) -> str | None:
        """The key the latest version holds; None when the secret does not exist. Other failures (no
        permission, a disabled latest version) raise ``KeyVaultError``; throttling and outages a 503."""
        try:
            bundle = _unavailable_as_503(lambda: self._rest.get_secret(self._secret))
        except KeyVaultError as exc:
            if exc.not_found:
                return None
            raise
        value = bundle.get("value")
        return admin_key_from_value(value if isinstance(value, str) else None)


def admin_key_from_value(value: str | None) -> str | None:
    """The key in a secret's value: the plaintext itself (what Terraform generates), or a JSON object
    holding it under ``"key"`` / ``"api_key"`` (a secret an operator wrote by hand)."""
    text = (value or "").strip()
    if text.startswith("{"):
        try:
            data = json.loads(text)
        except ValueError:
            return None
        found = data.get("key") or data.get("api_key") if isinstance(data, dict) else None
        return found.strip() if isinstance(found, str) and found.strip() else None
    return text or None


_TAGS = {"textnlp": "signing-keys"}


def _unavailable_as_503(call: Callable[[], T]) -> T:
    """Throttling and 5xx still failing after ``KeyVaultRest``'s retries: core's 503 (``store_unavailable``)."""
    try:
        return call()
    except KeyVaultError as exc:
        if exc.http_status == 429 or exc.http_status >= 500:
            raise ServiceUnavailable(
                "the key vault is busy or unreachable; retry shortly", code="store_unavailable"
            ) from exc
        raise


def _checked(secret: str) -> str:
    if not _NAME.fullmatch(secret):
        raise ValueError(f"not a Key Vault secret name (1-127 letters, digits, dashes): {secret!r}")
    return secret
