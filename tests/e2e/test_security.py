"""Security over HTTP: tenant isolation, forged and stale credentials, admin-only routes."""

from __future__ import annotations

import base64
import hashlib
import hmac
import json
import re
import sqlite3
import time
import uuid
from typing import Any

import httpx
import jwt
import pytest
from cryptography.hazmat.primitives import serialization
from cryptography.hazmat.primitives.asymmetric import rsa

from tests.e2e._support import FAKE_EMBED, FAKE_GEN, Server, Tenant, error_code

pytestmark = pytest.mark.e2e


@pytest.fixture
def pair(server: Server) -> tuple[Tenant, Tenant]:
    return server.create_tenant("alice"), server.create_tenant("bob")


def usage_totals(server: Server, key: str, **params: str) -> dict[str, Any]:
    with server.client(key) as c:
        r = c.get("/v1/usage", params={"group_by": "none", **params})
        assert r.status_code == 200, r.text
        body: dict[str, Any] = r.json()
        return body


# -- isolation ------------------------------------------------------------------------------------

DETERMINISTIC = {
    "/v1/generate": {"model": FAKE_GEN, "prompt": "shared secret prompt", "max_tokens": 3, "temperature": 0},
    "/v1/completions": {"model": FAKE_GEN, "prompt": "shared secret prompt", "max_tokens": 3, "seed": 1},
    "/v1/chat/completions": {
        "model": FAKE_GEN,
        "messages": [{"role": "user", "content": "shared secret prompt"}],
        "temperature": 0,
    },
    "/v1/embeddings": {"model": FAKE_EMBED, "input": ["shared secret prompt"]},
}


@pytest.mark.parametrize("path", list(DETERMINISTIC))
def test_cache_is_per_tenant(server: Server, pair: tuple[Tenant, Tenant], path: str) -> None:
    a, b = pair
    body = DETERMINISTIC[path]
    with server.client(a.key) as ca, server.client(b.key) as cb:
        first, again = ca.post(path, json=body), ca.post(path, json=body)
        assert (first.json()["cached"], again.json()["cached"]) == (False, True)
        theirs = cb.post(path, json=body)
        assert theirs.status_code == 200
        assert theirs.json()["cached"] is False
        assert theirs.headers["x-textnlp-cache"] == "miss"
        assert cb.post(path, json=body).json()["cached"] is True
    # Each tenant paid for its own first call and nothing for its cache hit.
    ta, tb = usage_totals(server, a.key)["totals"], usage_totals(server, b.key)["totals"]
    assert (ta["requests"], ta["cached_requests"]) == (2, 1)
    assert ta == tb


def test_usage_is_per_tenant(server: Server, pair: tuple[Tenant, Tenant]) -> None:
    a, b = pair
    with server.client(a.key) as ca:
        for _ in range(3):
            assert ca.post("/v1/generate", json={"model": FAKE_GEN, "prompt": "a b c d"}).status_code == 200
    mine = usage_totals(server, a.key)
    assert (mine["tenant_id"], mine["totals"]["requests"], mine["totals"]["total_tokens"]) == (a.id, 3, 24)
    theirs = usage_totals(server, b.key)
    assert (theirs["tenant_id"], theirs["totals"]["requests"]) == (b.id, 0)
    # Naming the other tenant in the query string changes nothing.
    assert usage_totals(server, b.key, tenant=a.id)["tenant_id"] == b.id
    assert usage_totals(server, b.key, tenant=a.id)["totals"]["requests"] == 0
    with server.client(b.key) as cb:
        r = cb.get("/admin/usage", params={"tenant": a.id})
        assert r.status_code == 403


def test_caller_sent_tenant_headers_are_ignored(server: Server, pair: tuple[Tenant, Tenant]) -> None:
    a, b = pair
    spoof = {"x-tenant-id": b.id, "x-tenant": b.id, "x-textnlp-tenant": b.id, "tenant-id": b.id}
    with server.client(a.key, headers=spoof) as ca:
        assert ca.post("/v1/generate", json={"model": FAKE_GEN, "prompt": "who pays"}).status_code == 200
        assert ca.get("/v1/usage").json()["tenant_id"] == a.id
        access = ca.post("/auth/token").json()["access_token"]
        assert jwt.decode(access, options={"verify_signature": False})["tid"] == a.id
        admin_spoof = ca.get("/admin/tenants", headers={"x-tenant-id": "ten_admin"})
        assert admin_spoof.status_code == 403
    assert usage_totals(server, a.key)["totals"]["requests"] == 1
    assert usage_totals(server, b.key)["totals"]["requests"] == 0


# -- forged, expired and misdirected tokens --------------------------------------------------------


def server_signing_key(server: Server) -> tuple[str, bytes]:
    """The active signing key, read from the server's own store: the only way to forge claims."""
    with sqlite3.connect(server.data_dir / "textnlp.db") as db:
        row = db.execute(
            "SELECT kid, private_pem FROM signing_keys WHERE retired_at IS NULL ORDER BY created_at DESC LIMIT 1"
        ).fetchone()
    assert row is not None
    return str(row[0]), bytes(row[1])


def _b64(data: bytes) -> str:
    return base64.urlsafe_b64encode(data).rstrip(b"=").decode()


def hs256_with_public_key(claims: dict[str, Any], kid: str, public_pem: bytes) -> str:
    """The classic algorithm-confusion forgery: HMAC keyed with the RSA public key."""
    header = _b64(json.dumps({"alg": "HS256", "typ": "JWT", "kid": kid}).encode())
    payload = _b64(json.dumps(claims).encode())
    signature = hmac.new(public_pem, f"{header}.{payload}".encode(), hashlib.sha256).digest()
    return f"{header}.{payload}.{_b64(signature)}"


def test_forged_expired_and_misdirected_jwts_are_rejected(server: Server, pair: tuple[Tenant, Tenant]) -> None:
    a, b = pair
    with server.client(a.key) as ca:
        genuine = ca.post("/auth/token").json()["access_token"]
    kid, private_pem = server_signing_key(server)
    assert jwt.get_unverified_header(genuine)["kid"] == kid
    now = int(time.time())
    base = {
        "iss": "textnlp",
        "aud": "textnlp-api",
        "sub": a.key_id,
        "tid": a.id,
        "scope": "generate embed",
        "iat": now,
        "nbf": now,
        "exp": now + 300,
        "jti": uuid.uuid4().hex,
    }

    server_key = serialization.load_pem_private_key(private_pem, None)  # parse once: PyJWT would per call
    assert isinstance(server_key, rsa.RSAPrivateKey)
    http = httpx.Client(base_url=server.base_url, timeout=10)

    def signed(claims: dict[str, Any], key: Any = server_key, header_kid: str = kid) -> str:
        return jwt.encode(claims, key, algorithm="RS256", headers={"kid": header_kid})

    def status(token: str, path: str = "/v1/usage") -> tuple[int, str | None]:
        r = http.get(path, headers={"authorization": f"Bearer {token}"})
        return r.status_code, (r.json().get("error") or {}).get("code")

    # The harness itself is right: a token minted with the server's key and proper claims works.
    assert status(signed(base)) == (200, None)
    assert status(genuine) == (200, None)

    attacker = rsa.generate_private_key(public_exponent=65537, key_size=2048)
    public_pem = server_key.public_key().public_bytes(
        serialization.Encoding.PEM, serialization.PublicFormat.SubjectPublicKeyInfo
    )
    head, payload, sig = genuine.split(".")
    claims = json.loads(base64.urlsafe_b64decode(payload + "=" * (-len(payload) % 4)))
    tampered = ".".join((head, _b64(json.dumps({**claims, "tid": b.id}).encode()), sig))
    unsigned = jwt.encode(base, "", algorithm="none")
    without_kid = jwt.encode(base, server_key, algorithm="RS256")

    rejected = {
        "signed by another key under the real kid": (signed(base, attacker), "invalid_token"),
        "signed by another key, unknown kid": (signed(base, attacker, "kid_attacker"), "invalid_token"),
        "alg none": (unsigned, "invalid_token"),
        "alg none, kid set": (
            _b64(json.dumps({"alg": "none", "kid": kid}).encode()) + "." + unsigned.split(".")[1] + ".",
            "invalid_token",
        ),
        "HS256 keyed with the public key": (hs256_with_public_key(base, kid, public_pem), "invalid_token"),
        "no kid": (without_kid, "invalid_token"),
        "payload tampered (tid)": (tampered, "invalid_token"),
        "signature stripped": (f"{head}.{payload}.", "invalid_token"),
        "expired": (signed({**base, "iat": now - 3600, "nbf": now - 3600, "exp": now - 1800}), "token_expired"),
        "not yet valid": (signed({**base, "nbf": now + 600, "exp": now + 900}), "invalid_token"),
        "other audience": (signed({**base, "aud": "some-other-api"}), "invalid_token"),
        "other issuer": (signed({**base, "iss": "https://evil.example"}), "invalid_token"),
        "no tid": (signed({k: v for k, v in base.items() if k != "tid"}), "invalid_token"),
        "no exp": (signed({k: v for k, v in base.items() if k != "exp"}), "invalid_token"),
        "tid of another tenant": (signed({**base, "tid": b.id}), "key_revoked"),
        "unknown key id": (signed({**base, "sub": "key_0000000000000000"}), "key_revoked"),
        "garbage": ("aaa.bbb.ccc", "invalid_token"),
    }
    for what, (token, code) in rejected.items():
        assert status(token) == (401, code), what
        assert status(token, "/v1/models")[0] == 401, what

    # Claimed scopes never exceed what the key has now: 'admin' in the token grants nothing.
    escalated = signed({**base, "scope": "generate embed admin"})
    assert status(escalated, "/admin/tenants") == (403, "insufficient_scope")
    r = http.post(
        "/v1/generate", json={"model": FAKE_GEN, "prompt": "x"}, headers={"authorization": f"Bearer {escalated}"}
    )
    assert r.status_code == 200
    http.close()


def test_revoked_key_and_its_jwts_are_rejected_across_workers(server_2w: Server) -> None:
    srv = server_2w
    t = srv.create_tenant("revoke-me")
    with srv.client(t.key) as c:
        access = c.post("/auth/token").json()["access_token"]
    key_h = {"authorization": f"Bearer {t.key}"}
    jwt_h = {"authorization": f"Bearer {access}"}
    with httpx.Client(base_url=srv.base_url, timeout=10) as http:
        # Warm both workers' key caches with the active record.
        for _ in range(20):
            assert http.get("/v1/usage", headers=key_h).status_code == 200
            assert http.get("/v1/usage", headers=jwt_h).status_code == 200
        revoked_at = time.monotonic()
        assert srv.admin.delete(f"/admin/keys/{t.key_id}").status_code == 200
        # TEXTNLP_KEY_CACHE_TTL=0.2: after that, no worker may still accept the key or its token.
        time.sleep(0.2 + 0.3 - (time.monotonic() - revoked_at))
        for _ in range(20):
            for headers in (key_h, jwt_h):
                r = http.get("/v1/usage", headers=headers)
                assert r.status_code == 401, r.text
                assert error_code(r) == "key_revoked"
            gen = http.post("/v1/generate", json={"model": FAKE_GEN, "prompt": "x"}, headers=jwt_h)
            assert gen.status_code == 401
        assert http.post("/auth/token", headers=key_h).status_code == 401


def test_expired_key_is_rejected(server: Server, tenant: Tenant) -> None:
    key = server.admin.post(
        f"/admin/tenants/{tenant.id}/keys", json={"name": "short", "expires_at": time.time() + 1.0}
    ).json()
    with server.client(key["key"]) as c:
        assert c.get("/v1/usage").status_code == 200
        access = c.post("/auth/token").json()["access_token"]
        time.sleep(1.2)
        r = c.get("/v1/usage")
        assert r.status_code == 401
        assert error_code(r) == "key_revoked"
    with server.client(access) as c:
        assert c.get("/v1/usage").status_code == 401


# -- admin routes ---------------------------------------------------------------------------------


def admin_operations(server: Server) -> list[tuple[str, str]]:
    doc = httpx.get(server.base_url + "/openapi.json").json()
    ops = [
        (method.upper(), path)
        for path, by_method in doc["paths"].items()
        for method, op in by_method.items()
        if path.startswith("/admin") or op.get("x-required-scope") == "admin"
    ]
    assert all(path.startswith("/admin") for _, path in ops)
    return sorted(ops)


def test_non_admin_credentials_get_403_on_every_admin_route(server: Server) -> None:
    everything_but_admin = ["generate", "embed", "validate", "batch", "fine_tune"]
    t = server.create_tenant("not-admin", scopes=everything_but_admin)
    with server.client(t.key) as c:
        access = c.post("/auth/token").json()["access_token"]
    ops = admin_operations(server)
    assert len(ops) >= 13, ops
    params = {"tenant_id": t.id, "key_id": t.key_id, "model_id": FAKE_GEN}
    model = {
        "id": FAKE_GEN,
        "kind": "generation",
        "backend": {"type": "openai", "base_url": "http://evil", "model": "m"},
    }
    bodies = {
        ("POST", "/admin/tenants"): {"name": "intruder"},
        ("PUT", "/admin/tenants/{tenant_id}/limits"): {"token_quota": 10**12},
        ("POST", "/admin/tenants/{tenant_id}/keys"): {"name": "escalate", "scopes": ["admin"]},
        ("PUT", "/admin/keys/{key_id}/limits"): {},
        ("POST", "/admin/models"): {**model, "id": "intruder-model"},
        ("PUT", "/admin/models/{model_id}"): model,
    }
    tenants_before = len(server.admin.get("/admin/tenants").json()["data"])
    kids_before = {k["kid"] for k in httpx.get(server.base_url + "/.well-known/jwks.json").json()["keys"]}
    with httpx.Client(base_url=server.base_url, timeout=10) as http:
        for method, template in ops:
            path = re.sub(r"\{(\w+)\}", lambda m: params[m[1]], template)
            body = bodies.get((method, template))
            for credential in (t.key, access):
                r = http.request(method, path, json=body, headers={"authorization": f"Bearer {credential}"})
                assert r.status_code == 403, (method, template, r.text)
                assert error_code(r) == "insufficient_scope"
            anonymous = http.request(method, path, json=body)
            assert anonymous.status_code == 401, (method, template)
    # Nothing changed.
    assert len(server.admin.get("/admin/tenants").json()["data"]) == tenants_before
    assert {k["kid"] for k in httpx.get(server.base_url + "/.well-known/jwks.json").json()["keys"]} == kids_before
    keys = server.admin.get(f"/admin/tenants/{t.id}/keys").json()["data"]
    assert [(k["id"], k["revoked_at"]) for k in keys] == [(t.key_id, None)]
    assert server.admin.get(f"/admin/tenants/{t.id}").json()["limits"]["token_quota"] is None
    card = server.admin.get(f"/v1/models/{FAKE_GEN}").json()
    assert card["max_output_tokens"] == 256
    assert server.admin.get("/v1/models/intruder-model").status_code == 404
