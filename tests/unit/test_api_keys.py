"""API keys: shown once, stored only as a SHA-256 hash, compared in constant time, revocable."""

from __future__ import annotations

import hashlib
import hmac
from dataclasses import replace

import pytest

from core.auth import api_keys
from core.domain import ApiKeyRecord
from core.errors import InvalidRequest
from tests.fakes import Harness, error_of, json_of

NOW = 1_790_000_000.0


def create_key(h: Harness, **body: object) -> dict[str, object]:
    payload = {"name": "ci", "scopes": ["generate"], **body}
    resp = h.call_json("POST", f"/admin/tenants/{h.tenant.id}/keys", payload, key=h.admin_key)
    assert resp.status == 201, resp.body
    return json_of(resp)  # type: ignore[no-any-return]


def test_minted_key_is_random_and_parses_back_to_its_record_id() -> None:
    plain1, rec1 = api_keys.mint("ten_x", "a", frozenset({"generate"}), NOW)
    plain2, rec2 = api_keys.mint("ten_x", "a", frozenset({"generate"}), NOW)
    assert plain1 != plain2
    assert rec1.id != rec2.id
    assert plain1.startswith("tnlp_key_")
    assert api_keys.parse_key(plain1) == rec1.id
    secret = plain1.rsplit("_", 1)[1]
    assert len(secret) >= 40  # 32 random bytes, url-safe


def test_record_keeps_only_the_sha256_of_the_key() -> None:
    plain, rec = api_keys.mint("ten_x", "a", frozenset({"generate"}), NOW)
    assert rec.key_hash == hashlib.sha256(plain.encode()).hexdigest()
    secret = plain.rsplit("_", 1)[1]
    assert secret not in repr(rec)
    assert plain not in repr(rec)
    # The displayable prefix never reaches into the secret part.
    assert len(rec.prefix) <= len(plain) - len(secret)


def test_verify_accepts_the_key_and_rejects_any_other() -> None:
    plain, rec = api_keys.mint("ten_x", "a", frozenset({"generate"}), NOW)
    assert api_keys.verify(plain, rec)
    assert not api_keys.verify(plain[:-1] + ("A" if plain[-1] != "A" else "B"), rec)
    assert not api_keys.verify("", rec)


def test_verify_uses_a_constant_time_comparison(monkeypatch: pytest.MonkeyPatch) -> None:
    seen: list[tuple[bytes, bytes]] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        seen.append((a, b))
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)  # the module api_keys calls into
    plain, rec = api_keys.mint("ten_x", "a", frozenset({"generate"}), NOW)
    assert api_keys.verify(plain, rec)
    assert seen == [(rec.key_hash.encode(), rec.key_hash.encode())]


def test_authentication_goes_through_the_constant_time_comparison(
    harness: Harness, monkeypatch: pytest.MonkeyPatch
) -> None:
    calls: list[int] = []
    real = hmac.compare_digest

    def spy(a: bytes, b: bytes) -> bool:
        calls.append(1)
        return real(a, b)

    monkeypatch.setattr(hmac, "compare_digest", spy)
    assert harness.call("GET", "/v1/models").status == 200
    assert calls


@pytest.mark.parametrize("scopes", [frozenset({"generate", "superuser"}), frozenset({"root"})])
def test_mint_rejects_unknown_scopes(scopes: frozenset[str]) -> None:
    with pytest.raises(InvalidRequest) as info:
        api_keys.mint("ten_x", "a", scopes, NOW)
    assert info.value.param == "scopes"


def test_mint_rejects_a_key_without_scopes() -> None:
    with pytest.raises(InvalidRequest):
        api_keys.mint("ten_x", "a", frozenset(), NOW)


def test_imported_key_needs_twenty_characters_and_is_stored_hashed() -> None:
    with pytest.raises(InvalidRequest):
        api_keys.imported("short-key", "ten_x", "ops", frozenset({"admin"}), NOW)
    plain = "operator-chosen-admin-key-0123456789"
    rec = api_keys.imported(plain, "ten_x", "ops", frozenset({"admin"}), NOW)
    assert rec.id == api_keys.parse_key(plain)
    assert rec.key_hash == hashlib.sha256(plain.encode()).hexdigest()
    assert api_keys.verify(plain, rec)
    assert plain not in repr(rec)


def test_imported_key_authenticates(harness: Harness) -> None:
    plain = "operator-chosen-key-abcdefghijklmnop"
    harness.store.put_key(api_keys.imported(plain, harness.tenant.id, "ops", frozenset({"generate"}), NOW))
    assert harness.call("GET", "/v1/models", key=plain).status == 200


def test_key_is_shown_once_and_works(harness: Harness) -> None:
    created = create_key(harness)
    plain = created["key"]
    assert isinstance(plain, str)
    assert plain.startswith("tnlp_key_")
    assert created["id"] == api_keys.parse_key(plain)
    assert plain.startswith(str(created["prefix"]))
    assert len(str(created["prefix"])) < len(plain) // 2
    assert harness.call("GET", "/v1/models", key=plain).status == 200
    listing = harness.call("GET", f"/admin/tenants/{harness.tenant.id}/keys", key=harness.admin_key)
    ours = [k for k in json_of(listing)["data"] if k["id"] == created["id"]]
    assert len(ours) == 1
    assert ours[0]["key"] is None
    assert plain not in listing.body.decode()


def test_no_plaintext_key_anywhere_in_the_store(harness: Harness) -> None:
    created = create_key(harness)
    plain = str(created["key"])
    secret = plain.rsplit("_", 1)[1]
    harness.call("GET", "/v1/models", key=plain)
    dump = repr(vars(harness.store))
    for known in (plain, secret, harness.key, harness.key.rsplit("_", 1)[1], harness.admin_key):
        assert known not in dump
    record = harness.store.get_key(str(created["id"]))
    assert record is not None
    assert record.key_hash == hashlib.sha256(plain.encode()).hexdigest()


def test_wrong_secret_for_a_known_key_id_is_rejected(harness: Harness) -> None:
    prefix, _, secret = harness.key.rpartition("_")
    forged = f"{prefix}_{'x' * len(secret)}"
    resp = harness.call("GET", "/v1/models", key=forged)
    assert resp.status == 401
    assert error_of(resp)["code"] == "invalid_api_key"


def test_unknown_key_is_rejected(harness: Harness) -> None:
    resp = harness.call("GET", "/v1/models", key="tnlp_key_0000000000000000_nope")
    assert resp.status == 401
    assert error_of(resp)["type"] == "authentication_error"


def test_revoked_key_is_rejected_at_once(harness: Harness) -> None:
    created = create_key(harness)
    plain = str(created["key"])
    assert harness.call("GET", "/v1/models", key=plain).status == 200
    revoke = harness.call("DELETE", f"/admin/keys/{created['id']}", key=harness.admin_key)
    assert revoke.status == 200
    assert json_of(revoke)["revoked_at"] == harness.clock.now()
    resp = harness.call("GET", "/v1/models", key=plain)
    assert resp.status == 401
    assert error_of(resp)["code"] == "key_revoked"


def test_expired_key_is_rejected(harness: Harness) -> None:
    created = create_key(harness, expires_at=harness.clock.now() + 60)
    plain = str(created["key"])
    assert harness.call("GET", "/v1/models", key=plain).status == 200
    harness.clock.advance(59)
    assert harness.call("GET", "/v1/models", key=plain).status == 200
    harness.clock.advance(1)
    resp = harness.call("GET", "/v1/models", key=plain)
    assert resp.status == 401
    assert error_of(resp)["code"] == "key_revoked"


def test_record_activity_rules() -> None:
    _, rec = api_keys.mint("ten_x", "a", frozenset({"generate"}), NOW, expires_at=NOW + 10)
    assert rec.is_active(NOW)
    assert not rec.is_active(NOW + 10)
    assert not api_keys.revoked(rec, NOW).is_active(NOW)
    forever: ApiKeyRecord = replace(rec, expires_at=None)
    assert forever.is_active(NOW + 10**9)


@pytest.mark.parametrize("scopes", [["generate", "superuser"], ["root"], []])
def test_admin_api_rejects_unknown_or_no_scopes(harness: Harness, scopes: list[str]) -> None:
    resp = harness.call_json(
        "POST", f"/admin/tenants/{harness.tenant.id}/keys", {"name": "x", "scopes": scopes}, key=harness.admin_key
    )
    assert resp.status == 400
    assert error_of(resp)["param"] == "scopes"
    assert len(harness.store.list_keys(harness.tenant.id)) == 1


def test_admin_api_rejects_an_expiry_in_the_past(harness: Harness) -> None:
    resp = harness.call_json(
        "POST",
        f"/admin/tenants/{harness.tenant.id}/keys",
        {"name": "x", "expires_at": harness.clock.now() - 1},
        key=harness.admin_key,
    )
    assert resp.status == 400
    assert error_of(resp)["param"] == "expires_at"
