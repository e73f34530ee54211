"""SigningKeyStore contract: keys round trip, retire by kid, concurrent writers lose nothing, and TokenService
issues and verifies access tokens on every store (the keys every gateway instance shares)."""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterator
from contextlib import AbstractContextManager, contextmanager
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import pytest

from core.auth.access_tokens import TokenService, generate_signing_key
from core.clock import FixedClock
from core.domain import Principal, SigningKey
from core.errors import Unauthorized
from core.ports import SigningKeyStore

T0 = 1_700_000_000.0


@dataclass
class Subject:
    """``store`` and ``peer()``: another handle on the same keys (another process, another instance)."""

    store: SigningKeyStore
    peer: Callable[[], SigningKeyStore]


@contextmanager
def _memory(tmp: Path) -> Iterator[Subject]:
    from adapters.local.memory_store import MemoryStore

    store = MemoryStore()
    yield Subject(store, lambda: store)  # one process: the same object is the only handle


@contextmanager
def _sqlite(tmp: Path) -> Iterator[Subject]:
    from adapters.local.sqlite_store import SQLiteStore

    opened: list[SQLiteStore] = []

    def handle() -> SQLiteStore:
        opened.append(SQLiteStore(tmp / "keys.db"))
        return opened[-1]

    try:
        yield Subject(handle(), handle)
    finally:
        for store in opened:
            store.close()


@contextmanager
def _secrets_manager(tmp: Path) -> Iterator[Subject]:
    from adapters.aws.secrets import SecretsManagerSigningKeys
    from tests.contract._backends import boto_client, shared_moto_url

    secret = f"textnlp/signing-keys-{uuid.uuid4().hex}"
    client = boto_client("secretsmanager", shared_moto_url())

    def handle() -> SecretsManagerSigningKeys:
        return SecretsManagerSigningKeys(secret, client)  # its default 30 s read cache

    yield Subject(handle(), handle)


@contextmanager
def _secret_manager(tmp: Path) -> Iterator[Subject]:
    import requests

    from adapters.gcp.secret_manager import SecretManagerSigningKeys, secret_name
    from tests.gcp.secret_manager_server import shared_secret_manager

    url, _ = shared_secret_manager()  # a local server that speaks the Secret Manager v1 REST API
    secret = secret_name("textnlp-test", f"signing-keys-{uuid.uuid4().hex}")
    session = requests.Session()

    def handle() -> SecretManagerSigningKeys:
        return SecretManagerSigningKeys(secret, session=session, endpoint=url)  # its default 30 s read cache

    try:
        yield Subject(handle(), handle)
    finally:
        session.close()


@contextmanager
def _firestore(tmp: Path) -> Iterator[Subject]:
    """The Firestore store keeps the keys where no Secret Manager secret is configured (``make serve CLOUD=gcp``)."""
    from adapters.gcp.firestore import FirestoreStore
    from tests.gcp.firestore_emulator import firestore_client, new_project

    project = new_project()  # the session's emulator, started on first use; one project per test
    opened: list[FirestoreStore] = []

    def handle() -> FirestoreStore:
        opened.append(FirestoreStore(firestore_client(project)))
        return opened[-1]

    try:
        yield Subject(handle(), handle)
    finally:
        for store in opened:
            store.close()


@contextmanager
def _key_vault(tmp: Path) -> Iterator[Subject]:
    import requests

    from adapters.azure.keyvault import KeyVaultSigningKeys
    from tests.azure.keyvault_server import TOKEN, shared_keyvault

    url, _ = shared_keyvault()  # a local server that speaks the Key Vault secrets REST API (7.4)
    secret = f"signing-keys-{uuid.uuid4().hex}"
    session = requests.Session()

    def handle() -> KeyVaultSigningKeys:
        return KeyVaultSigningKeys(url, secret, token_provider=lambda: TOKEN, session=session)

    try:
        yield Subject(handle(), handle)
    finally:
        session.close()


#: Every SigningKeyStore adapter: add one entry and the suite runs on it.
ADAPTERS: list[Any] = [
    pytest.param(_memory, id="memory"),
    pytest.param(_sqlite, id="sqlite"),
    pytest.param(_secrets_manager, id="secrets-manager", marks=pytest.mark.aws),
    pytest.param(_secret_manager, id="secret-manager", marks=pytest.mark.gcp),
    pytest.param(_firestore, id="firestore", marks=pytest.mark.gcp),
    pytest.param(_key_vault, id="key-vault", marks=pytest.mark.azure),
]


@pytest.fixture(params=ADAPTERS)
def subject(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Subject]:
    factory: Callable[[Path], AbstractContextManager[Subject]] = request.param
    with factory(tmp_path) as made:
        yield made


def _key(kid: str, created_at: float, retired_at: float | None = None) -> SigningKey:
    pem = f"-----BEGIN PRIVATE KEY-----\n{kid}\n-----END PRIVATE KEY-----\n".encode()
    return SigningKey(kid, pem, pem.replace(b"PRIVATE", b"PUBLIC"), created_at, retired_at)


def test_keys_round_trip_ordered_by_creation(subject: Subject) -> None:
    store = subject.store
    assert store.list_signing_keys() == []
    second, first = _key("kid-b", T0 + 10), _key("kid-a", T0)
    store.put_signing_key(second)
    store.put_signing_key(first)
    assert store.list_signing_keys() == [first, second]
    assert subject.peer().list_signing_keys() == [first, second]  # every instance sees the same keys


def test_putting_a_kid_again_replaces_it_so_keys_are_retired_in_place(subject: Subject) -> None:
    store = subject.store
    store.put_signing_key(_key("old", T0))
    store.put_signing_key(_key("new", T0 + 5))
    retired = _key("old", T0, retired_at=T0 + 5)
    store.put_signing_key(retired)
    assert store.list_signing_keys() == [retired, _key("new", T0 + 5)]
    assert [k.retired_at for k in subject.peer().list_signing_keys()] == [T0 + 5, None]


def test_real_key_material_survives_byte_for_byte(subject: Subject) -> None:
    key = generate_signing_key(T0)
    subject.store.put_signing_key(key)
    (stored,) = subject.peer().list_signing_keys()
    assert stored == key


def test_concurrent_writers_lose_no_key(subject: Subject) -> None:
    subject.store.put_signing_key(_key("k0", T0))
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            subject.peer().put_signing_key(_key(f"k{i}", T0 + i))
        except BaseException as exc:  # reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(1, 5)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [k.kid for k in subject.peer().list_signing_keys()] == ["k0", "k1", "k2", "k3", "k4"]


# -- TokenService on each store -------------------------------------------------------------------------------

PRINCIPAL = Principal(tenant_id="t1", key_id="key1", scopes=frozenset({"generate"}))


def test_token_service_issues_and_verifies_on_the_store(subject: Subject) -> None:
    clock = FixedClock(T0)
    tokens = TokenService(subject.store, clock)
    token, ttl = tokens.issue(PRINCIPAL)
    assert ttl > 0
    verified = tokens.verify(token)
    assert (verified.tenant_id, verified.key_id, verified.scopes) == ("t1", "key1", frozenset({"generate"}))
    # Another instance on the same keys verifies it too (a token is issued by one Lambda, checked by another).
    other = TokenService(subject.peer(), FixedClock(T0 + 1))
    assert other.verify(token).tenant_id == "t1"
    assert [k["kid"] for k in other.jwks()["keys"]] == [k.kid for k in subject.peer().list_signing_keys()]


def test_rotation_keeps_old_tokens_valid_and_signs_with_the_new_key(subject: Subject) -> None:
    clock = FixedClock(T0)
    tokens = TokenService(subject.store, clock)
    old_token, _ = tokens.issue(PRINCIPAL)
    old = tokens.active_key()
    clock.advance(60)
    new = tokens.rotate()
    assert new.kid != old.kid
    stored = {k.kid: k for k in subject.peer().list_signing_keys()}
    assert stored[old.kid].retired_at == T0 + 60
    assert stored[new.kid].retired_at is None
    assert tokens.verify(old_token).key_id == "key1"  # a retired key verifies until its tokens expire
    new_token, _ = tokens.issue(PRINCIPAL)
    assert TokenService(subject.peer(), FixedClock(T0 + 61)).verify(new_token).key_id == "key1"
    assert tokens.active_key() == stored[new.kid]


def test_a_key_removed_from_every_instance_no_longer_verifies(subject: Subject) -> None:
    """Past its retirement plus the tokens' lifetime, a retired key verifies nothing."""
    clock = FixedClock(T0)
    tokens = TokenService(subject.store, clock)
    token, ttl = tokens.issue(PRINCIPAL)
    active = tokens.active_key()
    subject.store.put_signing_key(replace(active, retired_at=T0))
    later = TokenService(subject.peer(), FixedClock(T0 + ttl + 3600))
    with pytest.raises(Unauthorized):
        later.verify(token)
