"""Secret Manager adapters against a local server that speaks its v1 REST API (tests/gcp/secret_manager_server.py):
what the SigningKeyStore contract does not cover (it runs there too): the calls a read and a rotation cost, the
compare-and-swap when writers race, errors and retries, the default credentials, the admin key."""

from __future__ import annotations

import json
import subprocess
import sys
from typing import Any

import pytest
import requests

from adapters.gcp.secret_manager import (
    CURRENT,
    MAX_ATTEMPTS,
    ConcurrentUpdate,
    SecretManagerAdminKey,
    SecretManagerSigningKeys,
    admin_key_from_value,
    decode_keys,
    secret_name,
)
from adapters.gcp.secret_manager_rest import SecretManagerError, SecretManagerRest
from core.domain import SigningKey
from tests.gcp.conftest import SecretManager
from tests.gcp.secret_manager_server import PROJECT_NUMBER, secret_manager_server

pytestmark = pytest.mark.gcp
SECRET = secret_name("textnlp-test", "signing-keys")
T0 = 1_700_000_000.0


def key(kid: str, created_at: float = T0) -> SigningKey:
    pem = f"-----BEGIN PRIVATE KEY-----\n{kid}\n-----END PRIVATE KEY-----\n".encode()
    return SigningKey(kid, pem, pem.replace(b"PRIVATE", b"PUBLIC"), created_at, None)


def store(sm: SecretManager, **options: Any) -> SecretManagerSigningKeys:
    return SecretManagerSigningKeys(SECRET, session=requests.Session(), endpoint=sm.url, **options)


def stored(sm: SecretManager) -> Any:
    return sm.api.secrets[(PROJECT_NUMBER, "signing-keys")]


def test_a_rotation_is_four_calls_and_reads_are_cached(secret_manager: SecretManager) -> None:
    now = [0.0]
    keys = store(secret_manager, clock=lambda: now[0])
    assert keys.list_signing_keys() == []  # no secret yet: no keys
    keys.put_signing_key(key("a"))  # creates the secret
    secret_manager.api.calls.clear()
    keys.put_signing_key(key("b", T0 + 1))
    assert secret_manager.api.calls == ["GET access", "POST addVersion", "GET get", "PATCH patch"]
    secret_manager.api.calls.clear()
    assert [k.kid for k in keys.list_signing_keys()] == ["a", "b"]
    assert [k.kid for k in keys.list_signing_keys()] == ["a", "b"]
    now[0] += 31  # past the 30 s cache
    assert [k.kid for k in keys.list_signing_keys()] == ["a", "b"]
    assert secret_manager.api.calls == ["GET access", "GET access"]
    secret = stored(secret_manager)
    assert secret.aliases == {CURRENT: max(secret.versions)}
    assert all(v.state == "ENABLED" for v in secret.versions.values())  # earlier sets are kept (history)


@pytest.mark.parametrize("etag_status", ["FAILED_PRECONDITION", "ABORTED"])
def test_a_writer_that_loses_the_swap_starts_over_and_destroys_its_version(etag_status: str) -> None:
    """Another writer's swap lands between this writer's etag read and its patch: the patch is refused (400
    FAILED_PRECONDITION as Secret Manager documents it, or 409 ABORTED), this writer reads again, and both
    keys are kept."""
    with secret_manager_server(etag_status=etag_status) as (url, api):
        sm = SecretManager(url, api)
        store(sm).put_signing_key(key("k0"))
        writer, other = store(sm), store(sm)
        fired: list[bool] = []

        def meanwhile() -> None:
            if not fired:
                fired.append(True)
                other.put_signing_key(key("other", T0 + 2))

        api.hooks["patch"] = meanwhile
        writer.put_signing_key(key("mine", T0 + 1))
        api.hooks.clear()
        assert [k.kid for k in store(sm).list_signing_keys()] == ["k0", "mine", "other"]
        states = [v.state for _, v in sorted(stored(sm).versions.items())]
        assert states == ["ENABLED", "DESTROYED", "ENABLED", "ENABLED"]  # k0, mine (lost), other, mine again


def test_an_alias_moved_before_the_etag_is_read_is_a_lost_round_too(secret_manager: SecretManager) -> None:
    keys, other = store(secret_manager), store(secret_manager)
    keys.put_signing_key(key("k0"))
    fired: list[bool] = []

    def meanwhile() -> None:
        if not fired:
            fired.append(True)
            other.put_signing_key(key("other", T0 + 2))

    secret_manager.api.hooks["addVersion"] = meanwhile
    keys.put_signing_key(key("mine", T0 + 1))
    secret_manager.api.hooks.clear()
    assert [k.kid for k in store(secret_manager).list_signing_keys()] == ["k0", "mine", "other"]
    assert sum(v.state == "DESTROYED" for v in stored(secret_manager).versions.values()) == 1


def test_a_writer_always_overtaken_gives_up_and_leaves_nothing_behind(secret_manager: SecretManager) -> None:
    keys, other = store(secret_manager), store(secret_manager)
    keys.put_signing_key(key("k0"))
    rounds: list[int] = []

    def meanwhile() -> None:
        if len(rounds) < MAX_ATTEMPTS:  # the other writer's own patch must not fire this again
            rounds.append(1)
            secret_manager.api.hooks.pop("patch")
            other.put_signing_key(key(f"o{len(rounds)}", T0 + len(rounds)))
            secret_manager.api.hooks["patch"] = meanwhile

    secret_manager.api.hooks["patch"] = meanwhile
    with pytest.raises(ConcurrentUpdate, match="gave up after 5 tries"):
        keys.put_signing_key(key("mine", T0 + 10))
    secret_manager.api.hooks.clear()
    assert [k.kid for k in store(secret_manager).list_signing_keys()] == ["k0", "o1", "o2", "o3", "o4", "o5"]
    assert sum(v.state == "DESTROYED" for v in stored(secret_manager).versions.values()) == MAX_ATTEMPTS


def test_a_secret_made_by_terraform_without_an_alias_holds_no_keys_until_the_first_put(
    secret_manager: SecretManager,
) -> None:
    rest = SecretManagerRest(requests.Session(), endpoint=secret_manager.url)
    rest.create_secret(SECRET)
    rest.add_version(SECRET, b"{}")  # a placeholder version
    keys = store(secret_manager)
    assert keys.list_signing_keys() == []
    keys.put_signing_key(key("a"))
    assert [k.kid for k in store(secret_manager).list_signing_keys()] == ["a"]
    assert stored(secret_manager).aliases == {CURRENT: 2}


def test_reads_are_retried_on_unavailable_writes_are_not(secret_manager: SecretManager) -> None:
    keys = store(secret_manager)
    keys.put_signing_key(key("a"))
    secret_manager.api.faults["access"] = ["UNAVAILABLE", "RESOURCE_EXHAUSTED"]
    assert [k.kid for k in store(secret_manager).list_signing_keys()] == ["a"]
    versions = len(stored(secret_manager).versions)
    secret_manager.api.faults["addVersion"] = ["UNAVAILABLE"]
    with pytest.raises(SecretManagerError) as raised:
        keys.put_signing_key(key("b", T0 + 1))
    assert (raised.value.http_status, raised.value.status) == (503, "UNAVAILABLE")
    assert len(stored(secret_manager).versions) == versions
    secret_manager.api.faults["access"] = ["UNAVAILABLE"] * 3
    with pytest.raises(SecretManagerError, match="UNAVAILABLE"):
        store(secret_manager).list_signing_keys()


def test_errors_are_raised_never_read_as_no_keys() -> None:
    with secret_manager_server(token="right") as (url, _):
        keys = SecretManagerSigningKeys(SECRET, session=requests.Session(), endpoint=url)
        with pytest.raises(SecretManagerError) as raised:
            keys.list_signing_keys()
        assert (raised.value.http_status, raised.value.status) == (401, "UNAUTHENTICATED")


def test_without_a_session_it_uses_the_application_default_credentials(monkeypatch: pytest.MonkeyPatch) -> None:
    import google.auth
    from google.oauth2.credentials import Credentials

    asked: list[Any] = []

    def default(scopes: Any = None, **_: Any) -> Any:
        asked.append(scopes)
        return Credentials(token="ya29.test"), "textnlp-test"

    monkeypatch.setattr(google.auth, "default", default)
    with secret_manager_server(token="ya29.test") as (url, _):
        keys = SecretManagerSigningKeys(SECRET, endpoint=url)
        keys.put_signing_key(key("a"))
        assert [k.kid for k in keys.list_signing_keys()] == ["a"]
    assert asked == [["https://www.googleapis.com/auth/cloud-platform"]]  # once, for the instance


def test_a_payload_whose_checksum_does_not_match_is_refused() -> None:
    class Corrupting:
        def request(self, method: str, url: str, **kwargs: Any) -> Any:
            answer = requests.Response()
            answer.status_code = 200
            body = {"name": f"{SECRET}/versions/3", "payload": {"data": "e30=", "dataCrc32c": "1"}}
            answer._content = json.dumps(body).encode()
            return answer

    with pytest.raises(SecretManagerError, match="DATA_LOSS"):
        SecretManagerSigningKeys(SECRET, session=Corrupting()).list_signing_keys()


def test_names_are_checked_and_foreign_values_hold_no_keys() -> None:
    for bad in ("signing-keys", "projects/p/secrets/", "projects/p/secrets/a/versions/1", "projects//secrets/x"):
        with pytest.raises(ValueError, match="not a secret name"):
            SecretManagerSigningKeys(bad)
    assert decode_keys(b"not json") == decode_keys(b'{"keys": 3}') == decode_keys(None) == []


def test_importing_the_adapter_loads_no_google_client_library() -> None:
    heavy = ("grpc", "requests", "urllib3", "google_crc32c", "google.auth", "google.api_core", "google.cloud.")
    code = f"import sys, adapters.gcp.secret_manager; print([m for m in sys.modules if m.startswith({heavy!r})])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the admin key ---------------------------------------------------------------------------------------------


def test_the_admin_key_is_the_latest_version_of_its_secret(secret_manager: SecretManager) -> None:
    name = secret_name("textnlp-test", "admin-key")
    admin = SecretManagerAdminKey(name, session=requests.Session(), endpoint=secret_manager.url)
    assert admin.read() is None  # no secret yet
    rest = SecretManagerRest(requests.Session(), endpoint=secret_manager.url)
    rest.create_secret(name)
    assert admin.read() is None  # no version yet
    rest.add_version(name, b"k" * 48 + b"\n")
    assert admin.read() == "k" * 48
    rest.add_version(name, json.dumps({"key": "rotated-" + "r" * 40}).encode())
    assert admin.read() == "rotated-" + "r" * 40
    rest.destroy_version(f"{name}/versions/2")
    with pytest.raises(SecretManagerError, match="FAILED_PRECONDITION"):  # a destroyed latest is an error
        admin.read()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("  plain-key  ", "plain-key"),
        ('{"key": "k1"}', "k1"),
        ('{"api_key": " k2 "}', "k2"),
        ('{"other": "x"}', None),
        ("{not json", None),
        ("", None),
        (None, None),
    ],
)
def test_admin_key_values(value: str | None, expected: str | None) -> None:
    assert admin_key_from_value(value) == expected
