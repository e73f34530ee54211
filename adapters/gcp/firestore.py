"""FirestoreStore: every Store role on Firestore (Native mode), tenant-first paths (layout in firestore_layout).

Counters, usage and documents live in their own modules (``firestore_counters``, ``firestore_usage``,
``firestore_documents``); this one holds tenants, API keys, the response cache, models and signing keys, and
builds the client. Calls go through ``FirestoreRpc`` (one round trip each, retried with jittered backoff, then
503). The hot path of a generation with the key, tenant and model in core's per-process caches: the cache's
read (deterministic requests), the reservation (one transaction: a read and a commit), the usage record with its
settlement (one transaction: a read of the settled items and a commit) and the cache's write.

The client (``google.cloud.firestore.Client``) is safe to share between threads, and so is this store: per-call
state lives in the call (a thread-local plan for the transaction a call is about to open), and the remembered
tenants of keys are a dict replaced whole. Core runs store calls off the event loop (``core.offload``).
"""

from __future__ import annotations

import dataclasses
import json
import math
import time
from collections.abc import Callable
from typing import Any

from adapters.gcp.firestore_counters import FirestoreCounters, FirestoreTx
from adapters.gcp.firestore_documents import FirestoreDocuments
from adapters.gcp.firestore_layout import (
    MODELS,
    SIGNING_KEYS,
    TENANTS,
    cache_path,
    key_index_path,
    key_path,
    model_path,
    signing_key_path,
    tenant_path,
)
from adapters.gcp.firestore_rpc import Fields, FirestoreRpc, Refused, Retry, timestamp
from adapters.gcp.firestore_usage import USAGE_SHARDS, FirestoreUsage
from core.domain import ApiKeyRecord, Limits, ModelSpec, SigningKey, Tenant
from core.stores import CacheEntry, StorePolicy
from core.writer_shards import WriterShards

MAX_CACHE_VALUE = 1_000_000  # bytes: a document holds 1 MiB, names and other fields included
_KEY_TENANTS_REMEMBERED = 100_000
_MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelSpec))


def _tenant_from(d: Fields) -> Tenant:
    suspended = d.get("suspended_at")
    return Tenant(
        id=d["id"],
        name=d["name"],
        created_at=float(d["created_at"]),
        limits=Limits(**d["limits"]),
        suspended_at=float(suspended) if suspended is not None else None,
    )


def _key_from(d: Fields) -> ApiKeyRecord:
    expires, revoked = d.get("key_expires_at"), d.get("revoked_at")
    return ApiKeyRecord(
        id=d["id"],
        tenant_id=d["tenant_id"],
        name=d["name"],
        key_hash=d["key_hash"],
        scopes=frozenset(d["scopes"]),
        created_at=float(d["created_at"]),
        expires_at=float(expires) if expires is not None else None,
        revoked_at=float(revoked) if revoked is not None else None,
        limits=Limits(**d["limits"]),
        prefix=d["prefix"],
    )


def _key_fields(key: ApiKeyRecord) -> Fields:
    """A key's own expiry is ``key_expires_at``: a TTL policy on ``expires_at`` must never delete a key."""
    return {
        "id": key.id,
        "tenant_id": key.tenant_id,
        "name": key.name,
        "key_hash": key.key_hash,
        "scopes": sorted(key.scopes),
        "created_at": float(key.created_at),
        "key_expires_at": key.expires_at,
        "revoked_at": key.revoked_at,
        "limits": dataclasses.asdict(key.limits),
        "prefix": key.prefix,
    }


def _model_from(d: Fields) -> ModelSpec:
    data: dict[str, Any] = {k: v for k, v in json.loads(d["spec"]).items() if k in _MODEL_FIELDS}
    data["fallbacks"] = tuple(data.get("fallbacks", ()))
    data["aliases"] = tuple(data.get("aliases", ()))
    return ModelSpec(**data)


def _signing_key_from(d: Fields) -> SigningKey:
    retired = d.get("retired_at")
    return SigningKey(
        d["kid"],
        bytes(d["private_pem"]),
        bytes(d["public_pem"]),
        float(d["created_at"]),
        float(retired) if retired is not None else None,
    )


def firestore_client(project: str | None = None, database: str | None = None) -> Any:
    """A client with Application Default Credentials (``FIRESTORE_EMULATOR_HOST`` points it at an emulator)."""
    from google.cloud.firestore_v1 import Client

    return Client(project=project, database=database)


class FirestoreStore(FirestoreUsage, FirestoreCounters, FirestoreDocuments, StorePolicy):
    """The gateway's Store on one Firestore database.

    ``client`` is a ``google.cloud.firestore.Client`` (made with ``project`` / ``database`` when not given);
    ``clock`` gives "now" for counter expiry; ``timeout_s`` bounds each call; ``usage_shards`` is how many
    index shards a tenant's usage records are spread over; ``writer_shards`` names this process's daily
    aggregate documents (``core.writer_shards``; a new writer by default).
    IAM: ``roles/datastore.user`` on the database.
    """

    cache_value_limit = MAX_CACHE_VALUE

    def __init__(
        self,
        client: Any = None,
        *,
        project: str | None = None,
        database: str | None = None,
        clock: Callable[[], float] = time.time,
        timeout_s: float = 10.0,
        usage_shards: int = USAGE_SHARDS,
        writer_shards: WriterShards | None = None,
    ) -> None:
        self._client = client if client is not None else firestore_client(project, database)
        self._rpc = FirestoreRpc(self._client, timeout_s)
        self._clock = clock
        self._usage_shards = usage_shards
        self._writer_shards = writer_shards if writer_shards is not None else WriterShards()
        self._key_tenants: dict[str, str] = {}
        self._init_counters()

    @property
    def client(self) -> Any:
        return self._client

    @property
    def rpc(self) -> FirestoreRpc:
        """Every call of the store goes through ``rpc.api`` (tests observe it)."""
        return self._rpc

    def close(self) -> None:
        self._client.close()

    # -- plain reads and writes ------------------------------------------------------------------------

    def _get(self, path: str) -> Fields | None:
        found, _ = self._rpc.retried(lambda _, __: self._rpc.get([path]))
        doc: Fields | None = found.get(path)
        return doc

    def _put(self, path: str, fields: Fields) -> None:
        self._rpc.retried(lambda _, __: self._rpc.commit([self._rpc.put(path, fields)]))

    def _all(self, parent: str, collection: str) -> list[Fields]:
        found: list[Fields] = self._rpc.retried(lambda _, __: self._rpc.query(parent, collection, {}))
        return found

    # -- tenants and keys ---------------------------------------------------------------------------

    def put_tenant(self, tenant: Tenant) -> None:
        self._put(
            tenant_path(tenant.id),
            {
                "id": tenant.id,
                "name": tenant.name,
                "created_at": float(tenant.created_at),
                "limits": dataclasses.asdict(tenant.limits),
                "suspended_at": tenant.suspended_at,
            },
        )

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        found = self._get(tenant_path(tenant_id))
        return _tenant_from(found) if found is not None else None

    def _load_tenants(self) -> list[Tenant]:
        return list(map(_tenant_from, self._all("", TENANTS)))

    def put_key(self, key: ApiKeyRecord) -> None:
        """The record under its tenant and the key's index entry, in one transaction that reads the entry first:
        a key imported again for another tenant moves there (its former record deleted in the same commit)."""
        index = key_index_path(key.id)
        rpc = self._rpc

        def attempt(_: int, __: Retry | None) -> None:
            tx = FirestoreTx(rpc, [index], False, "")
            try:
                entry = tx.get(index)
                previous = entry.get("tenant_id") if entry is not None else None
                tx.write(key_path(key.tenant_id, key.id), rpc.put(key_path(key.tenant_id, key.id), _key_fields(key)))
                if previous != key.tenant_id:
                    tx.write(index, rpc.put(index, {"tenant_id": key.tenant_id}))
                if previous is not None and previous != key.tenant_id:
                    tx.write(key_path(previous, key.id), rpc.delete(key_path(previous, key.id)))
            except BaseException:
                tx.rollback()
                raise
            tx.commit()

        rpc.retried(attempt)
        self._remember_tenant(key.id, key.tenant_id)

    def get_key(self, key_id: str) -> ApiKeyRecord | None:
        """The record under the remembered tenant (a key's tenant only changes on a re-import), else the index's."""
        tenant = self._key_tenants.get(key_id)
        if tenant is not None:
            found = self._get(key_path(tenant, key_id))
            if found is not None:
                return _key_from(found)
        entry = self._get(key_index_path(key_id))
        if entry is None:
            return None
        self._remember_tenant(key_id, entry["tenant_id"])
        found = self._get(key_path(entry["tenant_id"], key_id))
        return _key_from(found) if found is not None else None

    def _load_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        return list(map(_key_from, self._all(tenant_path(tenant_id), "keys")))

    def _remember_tenant(self, key_id: str, tenant_id: str) -> None:
        if len(self._key_tenants) >= _KEY_TENANTS_REMEMBERED:
            self._key_tenants = {}
        self._key_tenants[key_id] = tenant_id

    # -- cache --------------------------------------------------------------------------------------

    def _load_cache_entry(self, tenant_id: str, key: str) -> CacheEntry | None:
        found = self._get(cache_path(tenant_id, key))
        if found is None:
            return None
        return CacheEntry(bytes(found["value"]), float(found["valid_until"]))

    def _save_cache_entry(self, tenant_id: str, key: str, entry: CacheEntry) -> None:
        """``valid_until`` is the exact expiry core compares; ``expires_at`` the TTL policy's (whole seconds up)."""
        fields = {
            "value": entry.value,
            "valid_until": float(entry.expires_at),
            "expires_at": timestamp(math.ceil(entry.expires_at)),
        }
        self._put(cache_path(tenant_id, key), fields)

    # -- models and signing keys --------------------------------------------------------------------

    def put_model(self, spec: ModelSpec) -> None:
        self._put(model_path(spec.id), {"spec": json.dumps(dataclasses.asdict(spec), sort_keys=True)})

    def get_model(self, model_id: str) -> ModelSpec | None:
        found = self._get(model_path(model_id))
        return _model_from(found) if found is not None else None

    def _load_models(self) -> list[ModelSpec]:
        return list(map(_model_from, self._all("", MODELS)))

    def delete_model(self, model_id: str) -> bool:
        pb = self._rpc.delete(model_path(model_id), exists=True)

        def attempt(_: int, failed: Retry | None) -> bool:
            try:
                self._rpc.commit([pb])
            except Refused:
                return failed is not None and failed.ambiguous  # an earlier attempt deleted it
            return True

        return self._rpc.retried(attempt)

    def put_signing_key(self, key: SigningKey) -> None:
        self._put(
            signing_key_path(key.kid),
            {
                "kid": key.kid,
                "private_pem": key.private_pem,
                "public_pem": key.public_pem,
                "created_at": float(key.created_at),
                "retired_at": key.retired_at,
            },
        )

    def _load_signing_keys(self) -> list[SigningKey]:
        return list(map(_signing_key_from, self._all("", SIGNING_KEYS)))


__all__ = ["FirestoreStore", "firestore_client"]
