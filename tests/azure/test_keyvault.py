"""Key Vault adapters against a local server that speaks its secrets REST API (tests/azure/keyvault_server.py):
what the SigningKeyStore contract does not cover (it runs there too): writers racing, compaction, the calls a
read and a put cost, a missing secret, errors and retries, the token provider, the admin key."""

from __future__ import annotations

import json
import subprocess
import sys
import types
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from adapters.azure.keyvault import (
    KeyVaultAdminKey,
    KeyVaultSigningKeys,
    admin_key_from_value,
    covers,
    decode_keys,
    dominated,
    join,
)
from adapters.azure.keyvault_rest import KeyVaultError, KeyVaultRest
from core.domain import SigningKey
from core.errors import ServiceUnavailable
from tests.azure.keyvault_server import TOKEN, KeyVaultServer, keyvault_server

pytestmark = pytest.mark.azure
SECRET = "signing-keys"
T0 = 1_700_000_000.0


def key(kid: str, created_at: float = T0, retired_at: float | None = None) -> SigningKey:
    pem = f"-----BEGIN PRIVATE KEY-----\n{kid}\n-----END PRIVATE KEY-----\n".encode()
    return SigningKey(kid, pem, pem.replace(b"PRIVATE", b"PUBLIC"), created_at, retired_at)


@pytest.fixture
def vault() -> Iterator[tuple[str, KeyVaultServer]]:
    with keyvault_server() as started:
        yield started


def store(vault: tuple[str, KeyVaultServer], **options: Any) -> KeyVaultSigningKeys:
    return KeyVaultSigningKeys(vault[0], SECRET, token_provider=lambda: TOKEN, session=requests.Session(), **options)


def enabled(api: KeyVaultServer) -> int:
    return sum(v.enabled for v in api.secrets[SECRET])


def test_a_missing_secret_holds_no_keys_and_the_first_put_creates_it(vault: tuple[str, KeyVaultServer]) -> None:
    keys = store(vault)
    assert keys.list_signing_keys() == []
    assert SECRET not in vault[1].secrets
    keys.put_signing_key(key("a"))
    assert [k.kid for k in store(vault).list_signing_keys()] == ["a"]
    assert vault[1].secrets[SECRET][0].content_type == "application/json"


def test_a_put_is_four_calls_reads_are_cached_and_one_version_stays_enabled(
    vault: tuple[str, KeyVaultServer],
) -> None:
    now = [0.0]
    keys = store(vault, clock=lambda: now[0])
    keys.put_signing_key(key("a"))
    vault[1].calls.clear()
    keys.put_signing_key(key("b", T0 + 1))
    assert vault[1].calls == ["GET list", "PUT set", "GET list", "PATCH update"]
    vault[1].calls.clear()
    assert [k.kid for k in keys.list_signing_keys()] == ["a", "b"]
    assert [k.kid for k in keys.list_signing_keys()] == ["a", "b"]
    now[0] += 31  # past the 30 s cache: one list, no GET (versions never change, each is read once)
    assert [k.kid for k in keys.list_signing_keys()] == ["a", "b"]
    assert vault[1].calls == ["GET list", "GET list"]
    assert enabled(vault[1]) == 1
    assert len(vault[1].secrets[SECRET]) == 2


def test_two_writers_racing_lose_no_key_and_the_next_put_compacts(vault: tuple[str, KeyVaultServer]) -> None:
    """The second writer's PUT lands between the first one's read and its PUT: both versions stay enabled
    (neither covers the other), every reader joins them, and a later put leaves one version."""
    store(vault).put_signing_key(key("k0"))
    writer, other = store(vault), store(vault)
    fired: list[bool] = []

    def meanwhile() -> None:
        if not fired:
            fired.append(True)
            other.put_signing_key(key("other", T0 + 2))

    vault[1].hooks["set"] = meanwhile
    writer.put_signing_key(key("mine", T0 + 1))
    vault[1].hooks.clear()
    assert [k.kid for k in store(vault).list_signing_keys()] == ["k0", "mine", "other"]
    assert enabled(vault[1]) == 2
    store(vault).put_signing_key(key("k3", T0 + 3))
    assert enabled(vault[1]) == 1
    assert [k.kid for k in store(vault).list_signing_keys()] == ["k0", "mine", "other", "k3"]


def test_a_retirement_racing_a_new_key_keeps_both(vault: tuple[str, KeyVaultServer]) -> None:
    """A rotation on two instances at once: one retires the old key while the other adds its new one."""
    store(vault).put_signing_key(key("old"))
    retirer, adder = store(vault), store(vault)
    fired: list[bool] = []

    def meanwhile() -> None:
        if not fired:
            fired.append(True)
            adder.put_signing_key(key("new", T0 + 5))

    vault[1].hooks["set"] = meanwhile
    retirer.put_signing_key(key("old", T0, retired_at=T0 + 5))
    vault[1].hooks.clear()
    assert store(vault).list_signing_keys() == [key("old", T0, T0 + 5), key("new", T0 + 5)]


def test_a_version_disabled_under_a_read_makes_it_list_again(vault: tuple[str, KeyVaultServer]) -> None:
    store(vault).put_signing_key(key("a"))
    reader, writer = store(vault), store(vault)
    fired: list[bool] = []

    def meanwhile() -> None:
        if not fired:
            fired.append(True)
            vault[1].hooks.pop("get")
            writer.put_signing_key(key("b", T0 + 1))  # disables the version the reader listed

    vault[1].hooks["get"] = meanwhile
    assert [k.kid for k in reader.list_signing_keys()] == ["a", "b"]
    assert vault[1].calls.count("GET list") >= 4  # the reader's two lists, the writer's two


def test_retirement_is_final_and_versions_compare_by_coverage() -> None:
    active, retired = key("a"), key("a", retired_at=T0 + 9)
    assert join([retired], [active]) == join([active], [retired]) == [retired]
    assert join([key("a", retired_at=T0 + 9)], [key("a", retired_at=T0 + 1)]) == [key("a", retired_at=T0 + 1)]
    assert covers([retired, key("b")], [active])
    assert not covers([active], [retired])
    assert dominated({"v1": [active], "v2": [retired], "v3": [key("b")]}) == ["v1"]
    assert dominated({"v1": [active], "v2": [active]}) == ["v1"]  # equal sets: the greater id stays


def test_throttling_is_retried_then_a_503_and_auth_errors_are_raised(vault: tuple[str, KeyVaultServer]) -> None:
    keys = store(vault)
    keys.put_signing_key(key("a"))
    vault[1].faults["list"] = [429, 503]
    assert [k.kid for k in store(vault).list_signing_keys()] == ["a"]  # retried, honouring Retry-After
    vault[1].faults["set"] = [503, 503, 503]
    with pytest.raises(ServiceUnavailable) as raised:
        keys.put_signing_key(key("b", T0 + 1))
    assert raised.value.status == 503
    assert raised.value.code == "store_unavailable"
    assert isinstance(raised.value.__cause__, KeyVaultError)
    wrong = KeyVaultSigningKeys(vault[0], SECRET, token_provider=lambda: "wrong", session=requests.Session())
    with pytest.raises(KeyVaultError) as denied:
        wrong.list_signing_keys()
    assert (denied.value.http_status, denied.value.code) == (401, "Unauthorized")
    assert "wrong" not in str(denied.value)  # never the token


def test_the_list_is_followed_across_pages(vault: tuple[str, KeyVaultServer]) -> None:
    rest = KeyVaultRest(vault[0], token_provider=lambda: TOKEN, session=requests.Session())
    for _ in range(30):
        rest.set_secret(SECRET, json.dumps({"keys": []}))
    assert len(list(rest.list_versions(SECRET))) == 30


def test_without_a_provider_azure_identity_is_imported_on_first_use(
    vault: tuple[str, KeyVaultServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    asked: list[str] = []

    class Credential:
        def get_token(self, scope: str) -> Any:
            asked.append(scope)
            return types.SimpleNamespace(token=TOKEN, expires_on=4_000_000_000)

    fake = types.ModuleType("azure.identity")
    fake.DefaultAzureCredential = Credential  # type: ignore[attr-defined]
    monkeypatch.setitem(sys.modules, "azure", types.ModuleType("azure"))
    monkeypatch.setitem(sys.modules, "azure.identity", fake)
    keys = KeyVaultSigningKeys(vault[0], SECRET, session=requests.Session())
    assert asked == []  # nothing at construction
    keys.put_signing_key(key("a"))
    assert [k.kid for k in keys.list_signing_keys()] == ["a"]
    assert asked == ["https://vault.azure.net/.default"]  # one token, reused until near its expiry


def test_names_and_urls_are_checked_and_foreign_values_hold_no_keys() -> None:
    for bad in ("", "a_b", "a/b", "x" * 128):
        with pytest.raises(ValueError, match="not a Key Vault secret name"):
            KeyVaultSigningKeys("https://v.vault.azure.net", bad)
    with pytest.raises(ValueError, match="not a vault URL"):
        KeyVaultSigningKeys("http://v.vault.azure.net")
    assert decode_keys("not json") == decode_keys('{"keys": 3}') == decode_keys(None) == []


def test_importing_the_adapter_loads_no_azure_or_http_library() -> None:
    heavy = ("azure", "requests", "urllib3")
    code = f"import sys, adapters.azure.keyvault; print([m for m in sys.modules if m.startswith({heavy!r})])"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "[]"


# -- the admin key ---------------------------------------------------------------------------------------------


def test_the_admin_key_is_the_latest_version_of_its_secret(vault: tuple[str, KeyVaultServer]) -> None:
    admin = KeyVaultAdminKey(vault[0], "admin-key", token_provider=lambda: TOKEN, session=requests.Session())
    assert admin.read() is None  # no secret yet
    rest = KeyVaultRest(vault[0], token_provider=lambda: TOKEN, session=requests.Session())
    rest.set_secret("admin-key", "k" * 48 + "\n")
    assert admin.read() == "k" * 48
    rotated = rest.set_secret("admin-key", json.dumps({"key": "rotated-" + "r" * 40}))
    assert admin.read() == "rotated-" + "r" * 40
    rest.update_version("admin-key", rotated["id"].rsplit("/", 1)[-1], enabled=False)
    with pytest.raises(KeyVaultError) as raised:  # a disabled latest version is an error, not "no key"
        admin.read()
    assert raised.value.disabled
    assert "rotated" not in str(raised.value)


@pytest.mark.parametrize(
    ("value", "expected"),
    [("  plain-key  ", "plain-key"), ('{"api_key": " k2 "}', "k2"), ('{"other": "x"}', None), ("", None), (None, None)],
)
def test_admin_key_values(value: str | None, expected: str | None) -> None:
    assert admin_key_from_value(value) == expected
