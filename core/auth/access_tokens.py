"""Short-lived RS256 access tokens: signing, a JWKS document, verification and key rotation.

``jwt`` and ``cryptography`` are imported where they are used: a request with an API key never needs them,
and they cost a cold start 40-80 ms.
"""

from __future__ import annotations

import base64
import threading
from dataclasses import dataclass, replace
from typing import Any

from core.clock import new_id
from core.domain import Principal, SigningKey
from core.errors import Unauthorized
from core.ports import Clock, SigningKeyStore


@dataclass(frozen=True, slots=True)
class TokenSettings:
    issuer: str = "textnlp"
    audience: str = "textnlp-api"
    ttl_s: int = 900
    leeway_s: int = 5


def generate_signing_key(now: float) -> SigningKey:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    private = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    return SigningKey(
        kid=new_id("kid", 8),
        private_pem=private.private_bytes(
            serialization.Encoding.PEM, serialization.PrivateFormat.PKCS8, serialization.NoEncryption()
        ),
        public_pem=private.public_key().public_bytes(
            serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
        ),
        created_at=now,
    )


def _b64(n: int) -> str:
    raw = n.to_bytes((n.bit_length() + 7) // 8, "big")
    return base64.urlsafe_b64encode(raw).rstrip(b"=").decode()


def public_jwk(key: SigningKey) -> dict[str, str]:
    from cryptography.hazmat.primitives import serialization
    from cryptography.hazmat.primitives.asymmetric import rsa

    public = serialization.load_pem_public_key(key.public_pem)
    if not isinstance(public, rsa.RSAPublicKey):
        raise TypeError(f"signing key {key.kid} is not an RSA key")
    numbers = public.public_numbers()
    return {"kty": "RSA", "use": "sig", "alg": "RS256", "kid": key.kid, "n": _b64(numbers.n), "e": _b64(numbers.e)}


class TokenService:
    """Issues and verifies access tokens. Keys live in the store, so every instance agrees.

    Rotation adds a new active key and retires the old one; a retired key keeps verifying the
    tokens it signed until they expire, then drops out of the JWKS.
    """

    def __init__(self, store: SigningKeyStore, clock: Clock, settings: TokenSettings | None = None) -> None:
        self._store = store
        self._clock = clock
        self.settings = settings or TokenSettings()
        self._lock = threading.Lock()
        self._keys: dict[str, SigningKey] = {}
        self._loaded_at = 0.0
        self._forced_at = 0.0
        # Parsing a PEM and validating the RSA key costs ~50 ms: do it once per key and process.
        self._parsed: dict[tuple[str, bool], Any] = {}

    def _refresh(self, force: bool = False) -> None:
        now = self._clock.now()
        if not force and self._keys and now - self._loaded_at < 30:
            return
        with self._lock:
            self._keys = {k.kid: k for k in self._store.list_signing_keys()}
            self._loaded_at = now

    def _refresh_for_unknown_kid(self) -> None:
        """Another instance may have rotated; look again, but at most once a second (a stream of
        tokens with made-up kids must not turn into a stream of store reads)."""
        now = self._clock.now()
        if now - self._forced_at >= 1.0:
            self._forced_at = now
            self._refresh(force=True)

    def _private_key(self, key: SigningKey) -> Any:
        parsed = self._parsed.get((key.kid, True))
        if parsed is None:
            from cryptography.hazmat.primitives import serialization

            parsed = self._parsed[(key.kid, True)] = serialization.load_pem_private_key(key.private_pem, None)
        return parsed

    def _public_key(self, key: SigningKey) -> Any:
        parsed = self._parsed.get((key.kid, False))
        if parsed is None:
            from cryptography.hazmat.primitives import serialization

            parsed = self._parsed[(key.kid, False)] = serialization.load_pem_public_key(key.public_pem)
        return parsed

    def _live(self, key: SigningKey, now: float) -> bool:
        return key.retired_at is None or now < key.retired_at + self.settings.ttl_s + self.settings.leeway_s

    def active_key(self) -> SigningKey:
        self._refresh()
        active = [k for k in self._keys.values() if k.retired_at is None]
        if not active:
            self.rotate()
            active = [k for k in self._keys.values() if k.retired_at is None]
        return max(active, key=lambda k: k.created_at)

    def rotate(self) -> SigningKey:
        """Make a new signing key active; the previous ones are retired but still verify."""
        now = self._clock.now()
        self._refresh(force=True)
        for old in self._keys.values():
            if old.retired_at is None:
                self._store.put_signing_key(replace(old, retired_at=now))
        new = generate_signing_key(now)
        self._store.put_signing_key(new)
        self._refresh(force=True)
        return new

    def jwks(self) -> dict[str, Any]:
        self._refresh()
        now = self._clock.now()
        return {"keys": [public_jwk(k) for k in self._keys.values() if self._live(k, now)]}

    def issue(self, principal: Principal, scopes: frozenset[str] | None = None) -> tuple[str, int]:
        key = self.active_key()
        now = int(self._clock.now())
        claims = {
            "iss": self.settings.issuer,
            "aud": self.settings.audience,
            "sub": principal.key_id,
            "tid": principal.tenant_id,
            "scope": " ".join(sorted(scopes if scopes is not None else principal.scopes)),
            "iat": now,
            "nbf": now,
            "exp": now + self.settings.ttl_s,
            "jti": new_id("jti", 8),
        }
        import jwt

        token = jwt.encode(claims, self._private_key(key), algorithm="RS256", headers={"kid": key.kid})
        return token, self.settings.ttl_s

    def verify(self, token: str) -> Principal:
        import jwt

        try:
            header = jwt.get_unverified_header(token)
        except jwt.PyJWTError as exc:
            raise Unauthorized("malformed access token", code="invalid_token") from exc
        kid = header.get("kid")
        if header.get("alg") != "RS256" or not isinstance(kid, str):
            raise Unauthorized("access tokens must be RS256 with a kid", code="invalid_token")
        self._refresh()
        key = self._keys.get(kid)
        if key is None:
            self._refresh_for_unknown_kid()
            key = self._keys.get(kid)
        if key is None or not self._live(key, self._clock.now()):
            raise Unauthorized("access token signed by an unknown key", code="invalid_token")
        try:
            claims = jwt.decode(
                token,
                self._public_key(key),
                algorithms=["RS256"],
                audience=self.settings.audience,
                issuer=self.settings.issuer,
                leeway=self.settings.leeway_s,
                # Time claims are checked below against the injected clock, not the wall clock.
                options={
                    "require": ["exp", "iat", "nbf", "iss", "aud", "sub", "tid"],
                    "verify_exp": False,
                    "verify_nbf": False,
                    "verify_iat": False,
                },
            )
        except jwt.PyJWTError as exc:
            raise Unauthorized(f"invalid access token: {exc}", code="invalid_token") from exc
        now = self._clock.now()
        if float(claims["exp"]) < now - self.settings.leeway_s:
            raise Unauthorized("access token expired", code="token_expired")
        if float(claims["nbf"]) > now + self.settings.leeway_s:
            raise Unauthorized("access token not yet valid", code="invalid_token")
        return Principal(
            tenant_id=str(claims["tid"]),
            key_id=str(claims["sub"]),
            scopes=frozenset(str(claims.get("scope", "")).split()),
            via="jwt",
        )
