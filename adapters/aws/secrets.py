"""SecretsManagerSigningKeys: the SigningKeyStore port as one JSON secret in AWS Secrets Manager."""

from __future__ import annotations

import base64
import json
import threading
import time
import uuid
from collections.abc import Callable
from typing import TYPE_CHECKING, Any

from botocore.exceptions import ClientError

from core.domain import SigningKey

if TYPE_CHECKING:
    from mypy_boto3_secretsmanager.client import SecretsManagerClient

CACHE_TTL_S = 30.0
MAX_ATTEMPTS = 5
CURRENT = "AWSCURRENT"
PENDING = "TEXTNLP_PENDING"


def encode_keys(keys: list[SigningKey]) -> str:
    """``{"keys": [{"kid", "private_pem", "public_pem" (base64 PEM), "created_at", "retired_at"}]}``."""
    return json.dumps(
        {
            "keys": [
                {
                    "kid": key.kid,
                    "private_pem": base64.b64encode(key.private_pem).decode(),
                    "public_pem": base64.b64encode(key.public_pem).decode(),
                    "created_at": key.created_at,
                    "retired_at": key.retired_at,
                }
                for key in keys
            ]
        },
        separators=(",", ":"),
    )


def decode_keys(secret: str | None) -> list[SigningKey]:
    """The keys in a secret's value; a value that is not this document (a fresh secret) holds none."""
    try:
        data = json.loads(secret or "{}")
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
    """Another writer moved the secret's AWSCURRENT between this writer's read and its swap."""


class SecretsManagerSigningKeys:
    """All signing keys in one secret (a few kB each; the secret holds up to 64 kB).

    ``put_signing_key`` is a compare-and-swap: read AWSCURRENT (value and version id), write the new
    value as a version labelled only ``TEXTNLP_PENDING``, then move AWSCURRENT to it with
    ``RemoveFromVersionId`` set to the version read, which Secrets Manager refuses when another writer
    moved AWSCURRENT meanwhile; then it starts over. Reads are cached for ``cache_ttl_s``.
    IAM: secretsmanager:GetSecretValue, PutSecretValue, UpdateSecretVersionStage (and CreateSecret if
    the stack does not create the secret).
    """

    def __init__(
        self,
        secret_id: str,
        client: SecretsManagerClient | None = None,
        *,
        cache_ttl_s: float = CACHE_TTL_S,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self._secret_id = secret_id
        self._given = client
        self._client: SecretsManagerClient | None = None
        self._ttl = cache_ttl_s
        self._clock = clock
        self._lock = threading.Lock()
        self._cached: tuple[float, list[SigningKey]] | None = None

    @property
    def client(self) -> SecretsManagerClient:
        """The client passed in, else one created on first use and kept for the container."""
        if self._given is not None:
            return self._given
        with self._lock:
            if self._client is None:
                import boto3

                self._client = boto3.client("secretsmanager")
            return self._client

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
            try:
                self._swap(version, encode_keys(keys))
            except ConcurrentUpdate:
                time.sleep(0.05 * (attempt + 1))
                continue
            self._cached = None
            return
        raise ConcurrentUpdate(f"the secret {self._secret_id} kept changing; gave up after {MAX_ATTEMPTS} tries")

    def _read(self) -> tuple[str | None, str | None]:
        """AWSCURRENT's version id and value; (None, None) when the secret has no value yet."""
        try:
            found = self.client.get_secret_value(SecretId=self._secret_id, VersionStage=CURRENT)
        except ClientError as exc:
            if _code(exc) == "ResourceNotFoundException":
                return None, None
            raise
        return found["VersionId"], found.get("SecretString")

    def _swap(self, version: str | None, value: str) -> None:
        """Make ``value`` current if AWSCURRENT is still on ``version`` (None: on no version at all)."""
        token = str(uuid.uuid4())
        try:
            if version is None and self._created(token, value):
                return
            self.client.put_secret_value(
                SecretId=self._secret_id, ClientRequestToken=token, SecretString=value, VersionStages=[PENDING]
            )
            move: dict[str, str] = {"RemoveFromVersionId": version} if version else {}
            # Refused (InvalidParameterException) when AWSCURRENT is not where this writer read it.
            self.client.update_secret_version_stage(
                SecretId=self._secret_id, VersionStage=CURRENT, MoveToVersionId=token, **move
            )
        except ClientError as exc:
            if _code(exc) in ("InvalidParameterException", "ResourceExistsException"):
                raise ConcurrentUpdate(str(exc)) from None
            raise

    def _created(self, token: str, value: str) -> bool:
        """Create the secret with this first value; False when it exists (without a value)."""
        try:
            self.client.create_secret(Name=self._secret_id, ClientRequestToken=token, SecretString=value)
        except ClientError as exc:
            if _code(exc) != "ResourceExistsException":
                raise
            return False
        return True


def _code(exc: ClientError) -> str:
    error: Any = exc.response.get("Error", {})
    return str(error.get("Code", ""))
