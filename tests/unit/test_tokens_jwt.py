"""Access tokens: POST /auth/token, RS256 with kid, JWKS, rotation, and every forgery we can think of."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
from dataclasses import replace
from typing import Any

import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from core.auth import access_tokens as tokens
from core.auth import api_keys
from core.auth.access_tokens import TokenSettings
from core.clock import new_id
from core.domain import SigningKey
from tests.fakes import Harness, error_of, json_of

SETTINGS = TokenSettings()
TTL = SETTINGS.ttl_s
LEEWAY = SETTINGS.leeway_s


@pytest.fixture(scope="module")
def rsa_pool() -> list[tuple[bytes, bytes]]:
    """A few real RSA key pairs, generated once: 2048-bit generation costs ~0.2 s each."""
    pool = []
    for _ in range(3):
        key = tokens.generate_signing_key(0.0)
        pool.append((key.private_pem, key.public_pem))
    return pool


@pytest.fixture(autouse=True)
def fast_signing_keys(monkeypatch: pytest.MonkeyPatch, rsa_pool: list[tuple[bytes, bytes]]) -> None:
    """Rotation hands out distinct pooled key pairs with fresh kids."""
    counter = iter(range(10**6))

    def generate(now: float) -> SigningKey:
        private_pem, public_pem = rsa_pool[next(counter) % len(rsa_pool)]
        return SigningKey(kid=new_id("kid", 8), private_pem=private_pem, public_pem=public_pem, created_at=now)

    monkeypatch.setattr(tokens, "generate_signing_key", generate)


def test_real_signing_keys_are_fresh_2048_bit_rsa() -> None:
    a, b = tokens.generate_signing_key(1.0), tokens.generate_signing_key(1.0)
    assert a.kid != b.kid
    assert a.private_pem != b.private_pem
    public = serialization.load_pem_public_key(a.public_pem)
    assert isinstance(public, rsa.RSAPublicKey)
    assert public.key_size >= 2048
    assert a.retired_at is None


def b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def b64_json(obj: object) -> str:
    return b64(json.dumps(obj, separators=(",", ":")).encode())


def issue(h: Harness, key: str | None = None, scopes: list[str] | None = None) -> str:
    body = None if scopes is None else {"scopes": scopes}
    resp = h.call_json("POST", "/auth/token", body, key=key)
    assert resp.status == 200, resp.body
    data = json_of(resp)
    assert data["token_type"] == "Bearer"
    assert data["expires_in"] == TTL
    token = data["access_token"]
    assert isinstance(token, str)
    assert data["token"] == token  # the same token under the name the seed's client reads
    return token


def active_signing_key(h: Harness) -> SigningKey:
    keys = [k for k in h.store.list_signing_keys() if k.retired_at is None]
    assert len(keys) == 1
    return keys[0]


def key_id(h: Harness) -> str:
    return api_keys.parse_key(h.key)


def claims_for(h: Harness, **overrides: Any) -> dict[str, Any]:
    now = int(h.clock.now())
    claims: dict[str, Any] = {
        "iss": SETTINGS.issuer,
        "aud": SETTINGS.audience,
        "sub": key_id(h),
        "tid": h.tenant.id,
        "scope": "generate embed",
        "iat": now,
        "nbf": now,
        "exp": now + TTL,
        "jti": "jti_test",
    }
    claims.update(overrides)
    return {k: v for k, v in claims.items() if v is not None}


def sign(h: Harness, claims: dict[str, Any], kid: str | None = None) -> str:
    key = active_signing_key(h)
    return jwt.encode(claims, key.private_pem, algorithm="RS256", headers={"kid": kid or key.kid})


def models(h: Harness, token: str) -> Any:
    return h.call("GET", "/v1/models", key=token)


def assert_401(resp: Any, code: str | None = None) -> None:
    assert resp.status == 401, resp.body
    err = error_of(resp)
    assert err["type"] == "authentication_error"
    if code is not None:
        assert err["code"] == code


def test_token_from_api_key_authenticates_as_the_same_tenant_and_key(harness: Harness) -> None:
    token = issue(harness)
    header = jwt.get_unverified_header(token)
    assert header["alg"] == "RS256"
    assert header["kid"] == active_signing_key(harness).kid
    claims = jwt.decode(token, options={"verify_signature": False})
    assert claims["tid"] == harness.tenant.id
    assert claims["sub"] == key_id(harness)
    assert claims["exp"] - claims["iat"] == TTL
    assert set(claims["scope"].split()) == {"generate", "embed"}
    assert models(harness, token).status == 200
    gen = harness.call_json("POST", "/v1/generate", {"model": "fake-gen", "prompt": "a b", "max_tokens": 2}, key=token)
    assert gen.status == 200
    (record,) = harness.usage()
    assert record.tenant_id == harness.tenant.id
    assert record.key_id == key_id(harness)


def test_token_verifies_with_the_published_jwks(harness: Harness) -> None:
    token = issue(harness)
    resp = harness.call("GET", "/.well-known/jwks.json", key="")
    assert resp.status == 200
    jwks = json_of(resp)
    (jwk,) = jwks["keys"]
    assert jwk["kty"] == "RSA"
    assert jwk["alg"] == "RS256"
    assert "d" not in jwk  # never the private exponent
    public = jwt.PyJWK(jwk).key
    claims = jwt.decode(
        token,
        public,
        algorithms=["RS256"],
        audience=SETTINGS.audience,
        issuer=SETTINGS.issuer,
        options={"verify_exp": False, "verify_nbf": False, "verify_iat": False},  # the test clock is fixed
    )
    assert claims["tid"] == harness.tenant.id
    assert claims["nbf"] <= harness.clock.now() < claims["exp"]


def test_jwks_is_public(harness: Harness) -> None:
    issue(harness)
    resp = harness.call("GET", "/.well-known/jwks.json", headers={"authorization": ""})
    assert resp.status == 200


def test_bearer_jwt_cannot_mint_another_token(harness: Harness) -> None:
    token = issue(harness)
    resp = harness.call("POST", "/auth/token", key=token)
    assert resp.status == 403
    assert error_of(resp)["code"] == "api_key_required"


def test_token_cannot_request_scopes_its_key_lacks(harness: Harness) -> None:
    resp = harness.call_json("POST", "/auth/token", {"scopes": ["generate", "admin"]})
    assert resp.status == 403
    assert "admin" in error_of(resp)["message"]
    resp = harness.call_json("POST", "/auth/token", {"scopes": ["no_such_scope"]})
    assert resp.status == 403


def test_token_with_narrower_scopes_is_limited_to_them(harness: Harness) -> None:
    token = issue(harness, scopes=["embed"])
    assert harness.call_json("POST", "/v1/embeddings", {"model": "fake-emb", "input": "hi"}, key=token).status == 200
    resp = harness.call_json("POST", "/v1/generate", {"model": "fake-gen", "prompt": "a"}, key=token)
    assert resp.status == 403
    assert error_of(resp)["code"] == "insufficient_scope"


def test_token_never_carries_more_than_its_key_has_now(harness: Harness) -> None:
    token = issue(harness)
    record = harness.store.get_key(key_id(harness))
    assert record is not None
    harness.store.put_key(replace(record, scopes=frozenset({"embed"})))
    harness.gateway.auth.forget(record.id)
    resp = harness.call_json("POST", "/v1/generate", {"model": "fake-gen", "prompt": "a"}, key=token)
    assert resp.status == 403


def test_forged_claims_signed_with_the_real_key_are_accepted_only_when_valid(harness: Harness) -> None:
    issue(harness)  # creates the signing key
    assert models(harness, sign(harness, claims_for(harness))).status == 200


def test_alg_none_is_rejected(harness: Harness) -> None:
    issue(harness)
    kid = active_signing_key(harness).kid
    token = f"{b64_json({'alg': 'none', 'typ': 'JWT', 'kid': kid})}.{b64_json(claims_for(harness))}."
    assert_401(models(harness, token), "invalid_token")
    # Capitalised variants too.
    token = f"{b64_json({'alg': 'None', 'kid': kid})}.{b64_json(claims_for(harness))}."
    assert_401(models(harness, token), "invalid_token")


def test_hs256_signed_with_the_public_key_as_secret_is_rejected(harness: Harness) -> None:
    issue(harness)
    key = active_signing_key(harness)
    head = b64_json({"alg": "HS256", "typ": "JWT", "kid": key.kid})
    body = b64_json(claims_for(harness, scope="admin generate embed"))
    for secret in (key.public_pem, key.public_pem.strip()):
        sig = hmac.new(secret, f"{head}.{body}".encode(), hashlib.sha256).digest()
        assert_401(models(harness, f"{head}.{body}.{b64(sig)}"), "invalid_token")


def test_expired_token_is_rejected(harness: Harness) -> None:
    token = issue(harness)
    harness.clock.advance(TTL)
    assert models(harness, token).status == 200  # within the leeway
    harness.clock.advance(LEEWAY + 1)
    assert_401(models(harness, token), "token_expired")


def test_token_not_yet_valid_is_rejected(harness: Harness) -> None:
    issue(harness)
    now = int(harness.clock.now())
    early = sign(harness, claims_for(harness, nbf=now + 120, iat=now + 120, exp=now + 120 + TTL))
    assert_401(models(harness, early), "invalid_token")
    harness.clock.advance(120)
    assert models(harness, early).status == 200


@pytest.mark.parametrize(
    "override",
    [
        {"aud": "someone-else"},
        {"iss": "https://evil.example"},
        {"tid": None},
        {"sub": None},
        {"exp": None},
        {"aud": None},
    ],
    ids=["wrong-audience", "wrong-issuer", "no-tenant", "no-subject", "no-expiry", "no-audience"],
)
def test_wrong_or_missing_claims_are_rejected(harness: Harness, override: dict[str, Any]) -> None:
    issue(harness)
    token = sign(harness, claims_for(harness, **override))
    assert_401(models(harness, token), "invalid_token")


def test_unknown_kid_is_rejected(harness: Harness, rsa_pool: list[tuple[bytes, bytes]]) -> None:
    issue(harness)
    pem = rsa_pool[-1][0]
    assert pem != active_signing_key(harness).private_pem
    token = jwt.encode(claims_for(harness), pem, algorithm="RS256", headers={"kid": "kid_unknown"})
    assert_401(models(harness, token), "invalid_token")
    # The attacker's key under the real kid fails the signature check.
    kid = active_signing_key(harness).kid
    token = jwt.encode(claims_for(harness), pem, algorithm="RS256", headers={"kid": kid})
    assert_401(models(harness, token), "invalid_token")


def test_token_without_kid_is_rejected(harness: Harness) -> None:
    issue(harness)
    key = active_signing_key(harness)
    token = jwt.encode(claims_for(harness), key.private_pem, algorithm="RS256")
    assert_401(models(harness, token), "invalid_token")


def test_tampered_payload_is_rejected(harness: Harness) -> None:
    other, _ = harness.new_tenant("b")
    token = issue(harness)
    head, payload, sig = token.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    for change in ({"tid": other.id}, {"scope": "admin"}, {"exp": claims["exp"] + 86_400}):
        forged = f"{head}.{b64_json({**claims, **change})}.{sig}"
        assert_401(models(harness, forged), "invalid_token")
    assert models(harness, token).status == 200


def test_garbage_bearer_with_two_dots_is_rejected(harness: Harness) -> None:
    assert_401(models(harness, "not.a.jwt"), "invalid_token")


def test_validly_signed_token_for_another_tenant_is_rejected(harness: Harness) -> None:
    other, _ = harness.new_tenant("b")
    issue(harness)
    token = sign(harness, claims_for(harness, tid=other.id))
    assert_401(models(harness, token), "key_revoked")


def test_token_whose_api_key_was_revoked_afterwards_is_rejected(harness: Harness) -> None:
    token = issue(harness)
    assert models(harness, token).status == 200
    revoke = harness.call("DELETE", f"/admin/keys/{key_id(harness)}", key=harness.admin_key)
    assert revoke.status == 200
    assert_401(models(harness, token), "key_revoked")


def test_rotation_keeps_old_tokens_valid_until_they_expire(harness: Harness) -> None:
    old_token = issue(harness)
    old_kid = active_signing_key(harness).kid
    resp = harness.call("POST", "/admin/signing-keys/rotate", key=harness.admin_key)
    assert resp.status == 200
    new_kid = json_of(resp)["kid"]
    assert new_kid != old_kid
    assert active_signing_key(harness).kid == new_kid

    new_token = issue(harness)
    assert jwt.get_unverified_header(new_token)["kid"] == new_kid
    assert models(harness, old_token).status == 200
    assert models(harness, new_token).status == 200
    kids = {k["kid"] for k in json_of(harness.call("GET", "/.well-known/jwks.json"))["keys"]}
    assert kids == {old_kid, new_kid}

    harness.clock.advance(TTL - 10)
    assert models(harness, old_token).status == 200
    kids = {k["kid"] for k in json_of(harness.call("GET", "/.well-known/jwks.json"))["keys"]}
    assert kids == {old_kid, new_kid}

    harness.clock.advance(10 + LEEWAY + 1)
    assert_401(models(harness, old_token))
    kids = {k["kid"] for k in json_of(harness.call("GET", "/.well-known/jwks.json"))["keys"]}
    assert kids == {new_kid}
    # A token the retired key signs now (say, with a stolen key) is refused: the key is gone.
    stale = jwt.encode(
        claims_for(harness),
        next(k.private_pem for k in harness.store.list_signing_keys() if k.kid == old_kid),
        algorithm="RS256",
        headers={"kid": old_kid},
    )
    assert_401(models(harness, stale), "invalid_token")
    assert models(harness, issue(harness)).status == 200


def test_rotation_requires_admin(harness: Harness) -> None:
    resp = harness.call("POST", "/admin/signing-keys/rotate")
    assert resp.status == 403
    assert harness.store.list_signing_keys() == []


def test_made_up_kids_do_not_turn_into_store_reads() -> None:
    """A flood of tokens naming unknown kids reloads the signing keys at most once a second."""
    import jwt as pyjwt

    from tests.fakes import make_harness

    h = make_harness()
    h.call("POST", "/auth/token", "")  # creates the signing key
    reads = 0
    original = h.store.list_signing_keys

    def counting() -> list:  # type: ignore[type-arg]
        nonlocal reads
        reads += 1
        return original()

    h.store.list_signing_keys = counting  # type: ignore[method-assign]
    forged = pyjwt.encode(
        {"sub": "x"}, "secret-of-at-least-32-bytes-long!!", algorithm="HS256", headers={"kid": "nope"}
    )
    forged = forged.replace(
        forged.split(".")[0], pyjwt.utils.base64url_encode(b'{"alg":"RS256","kid":"nope"}').decode()
    )
    for _ in range(50):
        assert h.call("GET", "/v1/models", key=forged).status == 401
    assert reads <= 1
    h.clock.advance(1.5)
    h.call("GET", "/v1/models", key=forged)
    assert reads <= 2
