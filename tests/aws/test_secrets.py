"""SecretsManagerSigningKeys against moto: JSON round trip, compare-and-swap writes, cached reads."""

from __future__ import annotations

import threading
from typing import TYPE_CHECKING

import pytest

from adapters.aws.secrets import SecretsManagerSigningKeys, decode_keys, encode_keys
from core.domain import SigningKey

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager.client import SecretsManagerClient

pytestmark = pytest.mark.aws
SECRET = "textnlp/signing-keys"


def key(kid: str, created_at: float = 1.0, retired_at: float | None = None) -> SigningKey:
    pem = f"-----BEGIN PRIVATE KEY-----\n{kid}\n-----END PRIVATE KEY-----\n".encode()
    return SigningKey(kid, pem, pem.replace(b"PRIVATE", b"PUBLIC"), created_at, retired_at)


class Clock:
    def __init__(self) -> None:
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_keys_round_trip_as_json_with_base64_pems() -> None:
    keys = [key("a"), key("b", 2.0, 5.0)]
    text = encode_keys(keys)
    assert "BEGIN" not in text
    assert decode_keys(text) == keys
    for other in (None, "", "random-password", "[]", '{"keys": 3}'):
        assert decode_keys(other) == []


def test_put_creates_the_secret_then_adds_and_replaces(secretsmanager: SecretsManagerClient) -> None:
    store = SecretsManagerSigningKeys(SECRET, secretsmanager)
    assert store.list_signing_keys() == []
    store.put_signing_key(key("k1", 1.0))
    store.put_signing_key(key("k2", 2.0))
    store.put_signing_key(key("k1", 1.0, retired_at=3.0))  # retiring replaces by kid
    assert store.list_signing_keys() == [key("k1", 1.0, 3.0), key("k2", 2.0)]
    # (moto's default without VersionStage does not follow a moved AWSCURRENT; AWS's does)
    stored = secretsmanager.get_secret_value(SecretId=SECRET, VersionStage="AWSCURRENT")["SecretString"]
    assert decode_keys(stored) == [key("k1", 1.0, 3.0), key("k2", 2.0)]
    stages = secretsmanager.describe_secret(SecretId=SECRET)["VersionIdsToStages"]
    assert sum("AWSCURRENT" in labels for labels in stages.values()) == 1


def test_a_secret_created_by_the_stack_is_used(secretsmanager: SecretsManagerClient) -> None:
    secretsmanager.create_secret(Name=SECRET, SecretString='{"keys": []}')
    store = SecretsManagerSigningKeys(SECRET, secretsmanager)
    store.put_signing_key(key("k1"))
    assert [k.kid for k in store.list_signing_keys()] == ["k1"]


def test_a_secret_without_a_value_gets_its_first_one(secretsmanager: SecretsManagerClient) -> None:
    secretsmanager.create_secret(Name=SECRET)
    store = SecretsManagerSigningKeys(SECRET, secretsmanager)
    assert store.list_signing_keys() == []
    store.put_signing_key(key("k1"))
    assert [k.kid for k in store.list_signing_keys()] == ["k1"]


def test_reads_are_cached_briefly(secretsmanager: SecretsManagerClient) -> None:
    clock = Clock()
    writer = SecretsManagerSigningKeys(SECRET, secretsmanager)
    reader = SecretsManagerSigningKeys(SECRET, secretsmanager, cache_ttl_s=30, clock=clock)
    writer.put_signing_key(key("k1"))
    assert [k.kid for k in reader.list_signing_keys()] == ["k1"]
    writer.put_signing_key(key("k2", 2.0))
    clock.now = 29.0
    assert [k.kid for k in reader.list_signing_keys()] == ["k1"]  # still cached
    clock.now = 31.0
    assert [k.kid for k in reader.list_signing_keys()] == ["k1", "k2"]


def test_a_writer_that_lost_the_race_retries_on_the_new_value(secretsmanager: SecretsManagerClient) -> None:
    SecretsManagerSigningKeys(SECRET, secretsmanager).put_signing_key(key("k0"))
    slow = SecretsManagerSigningKeys(SECRET, secretsmanager)
    other = SecretsManagerSigningKeys(SECRET, secretsmanager)
    real_read = slow._read
    raced: list[bool] = []

    def read_then_get_overtaken() -> tuple[str | None, str | None]:
        seen = real_read()
        if not raced:  # between this writer's read and its swap, another writer commits
            raced.append(True)
            other.put_signing_key(key("k1", 1.5))
        return seen

    slow._read = read_then_get_overtaken  # type: ignore[method-assign]
    slow.put_signing_key(key("k2", 2.0))
    assert [k.kid for k in other.list_signing_keys()] == ["k0", "k1", "k2"]  # nothing was lost


def test_concurrent_writers_lose_nothing(secretsmanager: SecretsManagerClient) -> None:
    SecretsManagerSigningKeys(SECRET, secretsmanager).put_signing_key(key("k0", 0.0))
    errors: list[BaseException] = []

    def write(i: int) -> None:
        try:
            SecretsManagerSigningKeys(SECRET, secretsmanager).put_signing_key(key(f"k{i}", float(i)))
        except BaseException as exc:  # pragma: no cover - reported below
            errors.append(exc)

    threads = [threading.Thread(target=write, args=(i,)) for i in range(1, 4)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert errors == []
    assert [k.kid for k in SecretsManagerSigningKeys(SECRET, secretsmanager).list_signing_keys()] == [
        "k0",
        "k1",
        "k2",
        "k3",
    ]
