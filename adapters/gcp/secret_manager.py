"""Secret Manager: the SigningKeyStore port as one JSON secret, and the deployment's admin key.

Both go through ``SecretManagerRest`` (REST over google-auth; nothing of gRPC is imported).
"""

from __future__ import annotations

import base64
import contextlib
import json
import re
import time
from collections.abc import Callable

from adapters.gcp.secret_manager_rest import ENDPOINT, HttpSession, SecretManagerError, SecretManagerRest
from core.domain import SigningKey

CACHE_TTL_S = 30.0
MAX_ATTEMPTS = 5
CURRENT = "textnlp-current"  # the version alias the signing keys are read through
_SECRET = re.compile(r"^projects/[^/]+/secrets/[A-Za-z0-9_-]{1,255}$")


def secret_name(project: str, secret_id: str) -> str:
    """``projects/<project>/secrets/<secret_id>``, checked."""
    return _checked(f"projects/{project}/secrets/{secret_id}")


def encode_keys(keys: list[SigningKey]) -> bytes:
    """``{"keys": [{"kid", "private_pem", "public_pem" (base64 PEM), "created_at", "retired_at"}]}``: the
    document the AWS secret holds too, so keys move between clouds as they are."""
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
    return json.dumps({"keys": items}, separators=(",", ":")).encode()


def decode_keys(value: bytes | None) -> list[SigningKey]:
    """The keys in a version's data; data that is not this document (``{}``, nothing) holds none."""
    try:
        data = json.loads(value or b"{}")
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


class ConcurrentUpdate(Exception):
    """Another writer moved the keys' alias between this writer's read and its swap, ``MAX_ATTEMPTS`` times."""


class SecretManagerSigningKeys:
    """All signing keys in one secret; the version the alias ``textnlp-current`` names is the current set.

    Reading is one call (access ``versions/textnlp-current``), cached for ``cache_ttl_s``. Versions never
    change, so the alias is the only thing writers race on, and ``put_signing_key`` is a compare-and-swap
    on it: (1) access the alias: version N and its keys; (2) add a version M with the new set; (3) get the
    secret: its etag and aliases, and give up this round if the alias has left N; (4) patch the aliases
    (the alias on M) with that etag. Secret Manager refuses the patch (FAILED_PRECONDITION) if the secret
    changed after (3): another writer's patch in between fails this one, so no key a writer added is ever
    lost. A losing round destroys its version M and starts over. (3) reads the etag after (2) rather than
    with (1), so the swap holds whether or not adding a version touches the secret's etag.
    A fresh secret (none, or no alias yet) holds no keys; a missing secret is created.
    IAM: secretmanager.versions.access, versions.add, versions.destroy, secrets.get, secrets.update
    (``roles/secretmanager.secretVersionManager`` and ``secretAccessor`` on the secret, plus
    ``secrets.update``), and secrets.create on the project only if Terraform does not create the secret.
    """

    def __init__(
        self,
        secret: str,
        rest: SecretManagerRest | None = None,
        *,
        session: HttpSession | None = None,
        endpoint: str = ENDPOINT,
        cache_ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret = _checked(secret)
        self._rest = rest or SecretManagerRest(session, endpoint=endpoint)
        self._ttl = cache_ttl_s
        self._clock = clock
        self._cached: tuple[float, list[SigningKey]] | None = None

    def list_signing_keys(self) -> list[SigningKey]:
        cached = self._cached
        if cached is not None and self._clock() < cached[0]:
            return list(cached[1])
        keys = decode_keys(self._read()[1])
        self._cached = (self._clock() + self._ttl, keys)
        return list(keys)

    def put_signing_key(self, key: SigningKey) -> None:
        """Add the key, or replace the one with its kid (retiring it), atomically against other writers."""
        for attempt in range(MAX_ATTEMPTS):
            version, value = self._read()
            keys = [k for k in decode_keys(value) if k.kid != key.kid] + [key]
            keys.sort(key=lambda k: (k.created_at, k.kid))
            if self._swap(version, encode_keys(keys)):
                self._cached = None
                return
            time.sleep(0.05 * (attempt + 1))
        raise ConcurrentUpdate(f"the secret {self._secret} kept changing; gave up after {MAX_ATTEMPTS} tries")

    def _read(self) -> tuple[int | None, bytes | None]:
        """The alias's version number and data; (None, None) when there is no secret or no alias yet."""
        try:
            return self._rest.access(f"{self._secret}/versions/{CURRENT}")
        except SecretManagerError as exc:
            if exc.not_found:
                return None, None
            raise

    def _swap(self, expected: int | None, value: bytes) -> bool:
        """Put the alias on a new version holding ``value`` if it is still on ``expected``; False if not."""
        added = self._add(value)
        secret = self._rest.get_secret(self._secret)
        aliases = {name: int(number) for name, number in (secret.get("versionAliases") or {}).items()}
        if aliases.get(CURRENT) == expected:
            try:
                self._rest.set_aliases(self._secret, {**aliases, CURRENT: added}, str(secret.get("etag", "")))
            except SecretManagerError as exc:
                if not exc.stale_etag:
                    raise
            else:
                return True
        self._discard(added)
        return False

    def _add(self, value: bytes) -> int:
        try:
            return self._rest.add_version(self._secret, value)
        except SecretManagerError as exc:
            if not exc.not_found:
                raise
        try:  # no secret yet: create it (a writer racing here creates it first, which is as good)
            self._rest.create_secret(self._secret)
        except SecretManagerError as exc:
            if exc.status != "ALREADY_EXISTS":
                raise
        return self._rest.add_version(self._secret, value)

    def _discard(self, version: int) -> None:
        """Destroy a losing round's version (best effort: left behind, it is only a version no alias names)."""
        with contextlib.suppress(SecretManagerError, OSError):
            self._rest.destroy_version(f"{self._secret}/versions/{version}")


class SecretManagerAdminKey:
    """The deployment's first admin key: the latest version of its secret (Terraform generates it).

    ``read()`` is one call at a cold start; the caller hands the key to ``core.auth.admin_bootstrap``.
    IAM: secretmanager.versions.access on the secret (``roles/secretmanager.secretAccessor``).
    """

    def __init__(
        self,
        secret: str,
        rest: SecretManagerRest | None = None,
        *,
        session: HttpSession | None = None,
        endpoint: str = ENDPOINT,
    ) -> None:
        self._secret = _checked(secret)
        self._rest = rest or SecretManagerRest(session, endpoint=endpoint)

    def read(self) -> str | None:
        """The key the latest version holds; None when the secret or its versions do not exist.
        Other failures (permission denied, a disabled version) raise ``SecretManagerError``."""
        try:
            _, data = self._rest.access(f"{self._secret}/versions/latest")
        except SecretManagerError as exc:
            if exc.not_found:
                return None
            raise
        return admin_key_from_value(data.decode("utf-8", errors="replace"))


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


def _checked(secret: str) -> str:
    if not _SECRET.fullmatch(secret):
        raise ValueError(f"not a secret name (projects/<project>/secrets/<id>): {secret!r}")
    return secret
