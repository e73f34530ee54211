"""DynamoDBStore: every Store role on ONE DynamoDB table, through pynamodb (layout in dynamodb_models).

Counters, usage and documents live in their own modules (``dynamodb_counters``, ``dynamodb_usage``,
``dynamodb_documents``); this one holds tenants, API keys, the response cache, models and signing keys.
Each access is a GetItem, a Query or one write; the only GSI reads are listings (tenants, a tenant's usage
records by day and the all-tenant usage reports), which DynamoDB serves eventually consistent.
"""

from __future__ import annotations

import dataclasses
import json
import time
import uuid
from collections.abc import Callable
from typing import Any

from botocore.client import BaseClient
from pynamodb.connection import Connection
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.operand import Path

from adapters.aws.dynamodb_counters import DynamoDBCounters
from adapters.aws.dynamodb_documents import DynamoDBDocuments
from adapters.aws.dynamodb_models import (
    CacheItem,
    KeyIndexItem,
    KeyItem,
    ModelItem,
    SigningKeyItem,
    TenantItem,
    sortable,
    ttl_seconds,
)
from adapters.aws.dynamodb_table import CONFLICT_ROUNDS, ConditionFailed, DynamoDBTable, Item, connect, unavailable
from adapters.aws.dynamodb_usage import DynamoDBUsage
from core.domain import ApiKeyRecord, Limits, ModelSpec, SigningKey, Tenant
from core.stores import CacheEntry, StorePolicy

TENANT_SK = "TENANT"
KEY_SK = "KEY"
KEY_SK_PREFIX = "KEY#"
_KEY_TENANTS_REMEMBERED = 100_000
CACHE_SK = "CACHE"
MODELS_PK = "MODELS"
SIGNING_KEYS_PK = "SIGNING_KEYS"
MAX_CACHE_VALUE = 390_000  # bytes: an item holds 400 KB, names and keys included
_MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelSpec))


def key_index_pk(key_id: str) -> str:
    return f"KEY#{key_id}"


def key_sk(key_id: str) -> str:
    return KEY_SK_PREFIX + key_id


def _limits(limits: Limits) -> dict[str, Any]:
    return dataclasses.asdict(limits)


def _tenant_from(item: Item) -> Tenant:
    t = TenantItem.from_raw_data(item)
    suspended_at = float(t.suspended_at) if t.suspended_at is not None else None
    return Tenant(
        id=t.id, name=t.name, created_at=float(t.created_at), limits=Limits(**t.limits), suspended_at=suspended_at
    )


def _key_from(item: Item) -> ApiKeyRecord:
    k = KeyItem.from_raw_data(item)
    return ApiKeyRecord(
        id=k.id,
        tenant_id=k.tenant_id,
        name=k.name,
        key_hash=k.key_hash,
        scopes=frozenset(k.scopes),
        created_at=float(k.created_at),
        expires_at=float(k.key_expires_at) if k.key_expires_at is not None else None,
        revoked_at=float(k.revoked_at) if k.revoked_at is not None else None,
        limits=Limits(**k.limits),
        prefix=k.prefix,
    )


def _model_from(item: Item) -> ModelSpec:
    data: dict[str, Any] = {
        k: v for k, v in json.loads(ModelItem.from_raw_data(item).spec).items() if k in _MODEL_FIELDS
    }
    data["fallbacks"] = tuple(data.get("fallbacks", ()))
    data["aliases"] = tuple(data.get("aliases", ()))  # JSON has lists; entries written before aliases have none
    return ModelSpec(**data)


def _signing_key_from(item: Item) -> SigningKey:
    s = SigningKeyItem.from_raw_data(item)
    retired = float(s.retired_at) if s.retired_at is not None else None
    return SigningKey(s.kid, bytes(s.private_pem), bytes(s.public_pem), float(s.created_at), retired)


class DynamoDBStore(DynamoDBCounters, DynamoDBUsage, DynamoDBDocuments, StorePolicy):
    """The gateway's Store on the DynamoDB table ``table_name`` (created by the CDK stack).

    ``connection`` is the pynamodb Connection (one botocore client) to use; without one, a Connection
    on ``host`` / ``region`` with standard-mode retries (``max_attempts``) is made, its client created on
    first use. ``clock`` gives "now" for counter expiry (the protocol passes no time to counters).
    IAM: dynamodb:GetItem, PutItem, UpdateItem, DeleteItem, Query (table and ``index/gsi1``) on the table;
    TransactWriteItems is authorised by the PutItem/UpdateItem it contains.
    """

    cache_value_limit = MAX_CACHE_VALUE

    def __init__(
        self,
        table_name: str,
        connection: Connection | None = None,
        *,
        host: str | None = None,
        region: str | None = None,
        max_attempts: int = 5,
        clock: Callable[[], float] = time.time,
    ) -> None:
        self._table = DynamoDBTable(table_name, connection or connect(host, region, max_attempts=max_attempts))
        self._clock = clock
        self._init_counters()
        self._init_keys()

    @property
    def table_name(self) -> str:
        return self._table.name

    @property
    def connection(self) -> Connection:
        return self._table.connection

    @property
    def client(self) -> BaseClient:
        """The botocore client every call goes through (``client.meta.events`` to observe the calls)."""
        client: BaseClient = self._table.connection.client
        return client

    def close(self) -> None:
        """Close the client's connection pool (present so every store can be closed alike)."""
        self.client.close()

    # -- tenants and keys ---------------------------------------------------------------------------

    def put_tenant(self, tenant: Tenant) -> None:
        item = TenantItem(
            pk=f"T#{tenant.id}",
            sk=TENANT_SK,
            gsi1pk="TENANTS",
            gsi1sk=f"{sortable(tenant.created_at)}#{tenant.id}",
            id=tenant.id,
            name=tenant.name,
            created_at=tenant.created_at,
            limits=_limits(tenant.limits),
            suspended_at=tenant.suspended_at,
        )
        self._table.put(item.serialize())

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        found = self._table.get(f"T#{tenant_id}", TENANT_SK)
        return _tenant_from(found) if found is not None else None

    def _load_tenants(self) -> list[Tenant]:
        return [_tenant_from(item) for item in self._table.query("TENANTS", index=True)]

    def put_key(self, key: ApiKeyRecord) -> None:
        """The record under its tenant, and the key's index entry naming that tenant.

        One transaction: a new key (or one moving to another tenant: an imported key's id derives from its
        text) writes both, dropping the other tenant's record; a revocation or an update writes the record,
        checking that the index still names its tenant.
        """
        record = KeyItem(
            pk=f"T#{key.tenant_id}",
            sk=key_sk(key.id),
            id=key.id,
            tenant_id=key.tenant_id,
            name=key.name,
            key_hash=key.key_hash,
            scopes=sorted(key.scopes),
            created_at=key.created_at,
            key_expires_at=key.expires_at,
            revoked_at=key.revoked_at,
            limits=_limits(key.limits),
            prefix=key.prefix,
        ).serialize()
        entry = KeyIndexItem(pk=key_index_pk(key.id), sk=KEY_SK, tenant_id=key.tenant_id).serialize()
        for _ in range(CONFLICT_ROUNDS):
            previous = self._indexed_tenant(key.id)
            # Every write is conditioned on the index still saying what was read, so that two admins moving or
            # updating one key at once can neither orphan a record nor revive one under its former tenant.
            still: Condition = (
                KeyIndexItem.pk.does_not_exist() if previous is None else KeyIndexItem.tenant_id == previous
            )
            if previous == key.tenant_id:
                checks = [self._table.delete_kwargs(key_index_pk(key.id), KEY_SK, still)]
                writes, moved = [self._table.put_kwargs(record)], []
            else:
                checks = []
                writes = [self._table.put_kwargs(record), self._table.put_kwargs(entry, still)]
                moved = [] if previous is None else [self._table.delete_kwargs(f"T#{previous}", key_sk(key.id))]
            try:
                self._table.transact(writes, [], uuid.uuid4().hex, deletes=moved, checks=checks)
            except ConditionFailed:
                continue  # the index changed between our read and our write: read it again
            self._remember_tenant(key.id, key.tenant_id)
            return
        raise unavailable()

    def get_key(self, key_id: str) -> ApiKeyRecord | None:
        """The index entry (remembered: a key's tenant only changes on a re-import) then the record."""
        tenant = self._key_tenants.get(key_id)
        if tenant is not None:
            found = self._table.get(f"T#{tenant}", key_sk(key_id))
            if found is not None:
                return _key_from(found)
        tenant = self._indexed_tenant(key_id)
        if tenant is None:
            return None
        self._remember_tenant(key_id, tenant)
        found = self._table.get(f"T#{tenant}", key_sk(key_id))
        return _key_from(found) if found is not None else None

    def _load_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        items = self._table.query(f"T#{tenant_id}", Path(["sk"]).startswith(KEY_SK_PREFIX))
        return list(map(_key_from, items))

    def _init_keys(self) -> None:
        self._key_tenants: dict[str, str] = {}

    def _indexed_tenant(self, key_id: str) -> str | None:
        found = self._table.get(key_index_pk(key_id), KEY_SK)
        return KeyIndexItem.from_raw_data(found).tenant_id if found is not None else None

    def _remember_tenant(self, key_id: str, tenant_id: str) -> None:
        if len(self._key_tenants) >= _KEY_TENANTS_REMEMBERED:
            self._key_tenants.clear()
        self._key_tenants[key_id] = tenant_id

    # -- cache --------------------------------------------------------------------------------------

    def _load_cache_entry(self, tenant_id: str, key: str) -> CacheEntry | None:
        # An eventually consistent read: an entry written a moment ago may be missed, which is a miss.
        found = self._table.get(f"T#{tenant_id}#CACHE#{key}", CACHE_SK, consistent=False)
        if found is None:
            return None
        # ``valid_until`` is the exact expiry (core compares it): DynamoDB's TTL deletes late.
        entry = CacheItem.from_raw_data(found)
        return CacheEntry(bytes(entry.value), float(entry.valid_until))

    def _save_cache_entry(self, tenant_id: str, key: str, entry: CacheEntry) -> None:
        item = CacheItem(
            pk=f"T#{tenant_id}#CACHE#{key}",
            sk=CACHE_SK,
            value=entry.value,
            valid_until=entry.expires_at,
            expires_at=ttl_seconds(entry.expires_at),
        )
        self._table.put(item.serialize())

    # -- models and signing keys --------------------------------------------------------------------

    def put_model(self, spec: ModelSpec) -> None:
        document = json.dumps(dataclasses.asdict(spec), sort_keys=True)
        self._table.put(ModelItem(pk=MODELS_PK, sk=spec.id, spec=document).serialize())

    def get_model(self, model_id: str) -> ModelSpec | None:
        found = self._table.get(MODELS_PK, model_id)
        return _model_from(found) if found is not None else None

    def _load_models(self) -> list[ModelSpec]:
        return [_model_from(item) for item in self._table.query(MODELS_PK)]

    def delete_model(self, model_id: str) -> bool:
        return self._table.delete(MODELS_PK, model_id)

    def put_signing_key(self, key: SigningKey) -> None:
        item = SigningKeyItem(
            pk=SIGNING_KEYS_PK,
            sk=key.kid,
            kid=key.kid,
            private_pem=key.private_pem,
            public_pem=key.public_pem,
            created_at=key.created_at,
            retired_at=key.retired_at,
        )
        self._table.put(item.serialize())

    def _load_signing_keys(self) -> list[SigningKey]:
        return [_signing_key_from(item) for item in self._table.query(SIGNING_KEYS_PK)]
