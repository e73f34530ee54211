"""CosmosStore: every Store role on Cosmos DB (NoSQL API) with tenant-first hierarchical keys (``cosmos_layout``).

Counters, usage and documents are in ``cosmos_counters``, ``cosmos_usage`` and ``cosmos_documents``; this module
holds tenants, API keys, the response cache, models and signing keys, and builds the client (``open_cosmos_store``).
Every call goes through ``cosmos_retry.CosmosCalls``. The client and this store are safe to share between threads
(core runs store calls off the event loop). Nothing here logs: no key, prompt or output reaches a log line.

The emulator (cosmosdb-server)'s quirks are met by code that runs unchanged on Cosmos DB: a point read of a
missing id is a 500 (``cosmos_retry.read_item``); a partition-key query is not scoped (every query names the
tenant, or owner and part, in its WHERE clause); filter predicates are lowercased (``cosmos_layout.field_name``);
items are keyed by the first partition key path only (ids unique per tenant); TTL is not enforced (reads compare
the exact expiry); the transactional batch is not used. Hierarchical (MultiHash) keys work there as they are.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import time
from collections.abc import Callable, Mapping
from typing import TYPE_CHECKING, Any

from azure.cosmos import CosmosClient, PartitionKey
from azure.cosmos._retry_options import RetryOptions
from azure.cosmos.documents import ConnectionPolicy

from adapters.azure.cosmos_counters import CosmosCounters, ttl_for
from adapters.azure.cosmos_documents import CosmosDocuments
from adapters.azure.cosmos_layout import (
    CACHE,
    CONTAINERS,
    COUNTERS,
    DATABASE,
    DOCUMENTS,
    GLOBAL,
    PARTITION_PATHS,
    USAGE,
    Key,
    cache_key,
    global_key,
    key_index_key,
    key_key,
    placed,
)
from adapters.azure.cosmos_retry import CosmosCalls, Doc, delete_item, query, read_item
from adapters.azure.cosmos_usage import CosmosUsage
from core.domain import ApiKeyRecord, Limits, ModelSpec, SigningKey, Tenant
from core.stores import CacheEntry, StorePolicy

MAX_CACHE_VALUE = 1_000_000  # bytes (base64 in the item: 1.33 MB of Cosmos DB's 2 MB)
_KEY_TENANTS_REMEMBERED = 100_000
_MODEL_FIELDS = frozenset(f.name for f in dataclasses.fields(ModelSpec))


def _b64(data: bytes) -> str:
    return base64.b64encode(data).decode()


def _time(value: Any) -> float | None:
    return float(value) if value is not None else None


def _tenant_from(d: Doc) -> Tenant:
    r = d["r"]
    return Tenant(r["id"], r["name"], float(r["created_at"]), Limits(**r["limits"]), _time(r["suspended_at"]))


def _key_from(d: Doc) -> ApiKeyRecord:
    r = {**d["r"], "scopes": frozenset(d["r"]["scopes"]), "limits": Limits(**d["r"]["limits"])}
    r.update(created_at=float(r["created_at"]), expires_at=_time(r["expires_at"]), revoked_at=_time(r["revoked_at"]))
    return ApiKeyRecord(**r)


def _model_from(d: Doc) -> ModelSpec:
    data: dict[str, Any] = {k: v for k, v in json.loads(d["spec"]).items() if k in _MODEL_FIELDS}
    data["fallbacks"] = tuple(data.get("fallbacks", ()))
    data["aliases"] = tuple(data.get("aliases", ()))
    return ModelSpec(**data)


def _signing_key_from(d: Doc) -> SigningKey:
    private, public = base64.b64decode(d["private_pem"]), base64.b64decode(d["public_pem"])
    return SigningKey(d["kid"], private, public, float(d["created_at"]), _time(d["retired_at"]))


def cosmos_client(endpoint: str, *, key: str | None = None, credential: Any = None, **kwargs: Any) -> CosmosClient:
    """A client whose only retries are the store's (``cosmos_retry``): the SDK's throttling retries and its
    cross-region resends of writes are off. ``key`` (the emulator, or an account key) wins; else ``credential``,
    else ``DefaultAzureCredential`` (the Function App's managed identity; ``azure-identity`` imported only then).
    ``kwargs`` go to ``CosmosClient`` (tests pass a ``transport``)."""
    if key is None and credential is None:
        from azure.identity import DefaultAzureCredential

        credential = DefaultAzureCredential()
    policy = ConnectionPolicy()
    policy.RetryOptions = RetryOptions(max_retry_attempt_count=0)
    options: dict[str, Any] = {
        "connection_policy": policy,
        "enable_endpoint_discovery": False,
        "connection_timeout": 5,
        "read_timeout": 10,
        **kwargs,
    }
    return CosmosClient(endpoint, credential=key if key is not None else credential, **options)


def create_containers(database: Any) -> None:
    """The containers ``terraform/azure`` creates (the local server and the tests create them here)."""
    partition_key = PartitionKey(path=list(PARTITION_PATHS), kind="MultiHash")
    for name, default_ttl in CONTAINERS.items():
        extra = {"default_ttl": default_ttl} if default_ttl is not None else {}
        database.create_container_if_not_exists(name, partition_key=partition_key, **extra)


class CosmosStore(CosmosUsage, CosmosCounters, CosmosDocuments, StorePolicy):
    """The gateway's Store on one Cosmos DB database (containers in ``cosmos_layout``).

    ``client`` is a ``CosmosClient`` (``cosmos_client``); ``clock`` gives "now" for counter and cache expiry;
    ``create`` creates the database and containers if missing (the local server and tests; in Azure, Terraform).
    RBAC: "Cosmos DB Built-in Data Contributor" on the account, for the Function App's identity.
    """

    cache_value_limit = MAX_CACHE_VALUE

    def __init__(
        self,
        client: Any,
        *,
        database: str = DATABASE,
        clock: Callable[[], float] = time.time,
        create: bool = False,
        calls: CosmosCalls | None = None,
    ) -> None:
        self._client = client
        self._database = (
            client.create_database_if_not_exists(database) if create else client.get_database_client(database)
        )
        if create:
            create_containers(self._database)
        self._counters = self._database.get_container_client(COUNTERS)
        self._usage = self._database.get_container_client(USAGE)
        self._documents = self._database.get_container_client(DOCUMENTS)
        self._cache = self._database.get_container_client(CACHE)
        self._calls = calls or CosmosCalls()
        self._clock = clock
        self._key_tenants: dict[str, str] = {}

    @property
    def client(self) -> Any:
        return self._client

    @property
    def database(self) -> Any:
        return self._database

    def close(self) -> None:
        self._client.close()

    # -- plain reads and writes ------------------------------------------------------------------------

    def _get(self, key: Key) -> Doc | None:
        return read_item(self._calls, self._documents, *key)

    def _put(self, key: Key, fields: Mapping[str, object], container: Any = None) -> None:
        """Upsert a whole item: the same whether applied once or twice, so resent after a lost answer."""
        body = placed(key, dict(fields))
        self._calls.write(lambda: (container or self._documents).upsert_item(body), idempotent=True)

    def _all(self, partition_key: list[str]) -> list[Doc]:
        sql = "SELECT * FROM c WHERE c.tenant = @tenant AND c.part = @part"
        return query(
            self._calls, self._documents, sql, {"@tenant": partition_key[0], "@part": partition_key[1]}, partition_key
        )

    # -- tenants and keys ---------------------------------------------------------------------------

    def put_tenant(self, tenant: Tenant) -> None:
        self._put(global_key("t", tenant.id), {"k": "t", "r": dataclasses.asdict(tenant)})

    def get_tenant(self, tenant_id: str) -> Tenant | None:
        found = self._get(global_key("t", tenant_id))
        return _tenant_from(found) if found is not None else None

    def _load_tenants(self) -> list[Tenant]:
        return list(map(_tenant_from, self._all([GLOBAL, "tenants"])))

    def put_key(self, key: ApiKeyRecord) -> None:
        """The record under its tenant, then its index entry; a key imported again for another tenant moves there
        (its former record deleted last: a crash in between leaves it listed there, never authenticating)."""
        fields = {"k": "k", "r": {**dataclasses.asdict(key), "scopes": sorted(key.scopes)}}
        entry = self._get(key_index_key(key.id))
        previous = entry.get("tenant_id") if entry is not None else None
        self._put(key_key(key.tenant_id, key.id), fields)
        if previous != key.tenant_id:
            self._put(key_index_key(key.id), {"k": "i", "tenant_id": key.tenant_id})
        if previous is not None and previous != key.tenant_id:
            delete_item(self._calls, self._documents, *key_key(previous, key.id))
        self._remember_tenant(key.id, key.tenant_id)

    def get_key(self, key_id: str) -> ApiKeyRecord | None:
        """The record under the remembered tenant (a key's tenant only changes on a re-import), else the index's."""
        tenant = self._key_tenants.get(key_id)
        if tenant is not None:
            found = self._get(key_key(tenant, key_id))
            if found is not None:
                return _key_from(found)
        entry = self._get(key_index_key(key_id))
        if entry is None:
            return None
        self._remember_tenant(key_id, entry["tenant_id"])
        found = self._get(key_key(entry["tenant_id"], key_id))
        return _key_from(found) if found is not None else None

    def _load_keys(self, tenant_id: str) -> list[ApiKeyRecord]:
        return list(map(_key_from, self._all([tenant_id, "keys"])))

    def _remember_tenant(self, key_id: str, tenant_id: str) -> None:
        if len(self._key_tenants) >= _KEY_TENANTS_REMEMBERED:
            self._key_tenants = {}
        self._key_tenants[key_id] = tenant_id

    # -- cache --------------------------------------------------------------------------------------

    def _load_cache_entry(self, tenant_id: str, key: str) -> CacheEntry | None:
        found = read_item(self._calls, self._cache, *cache_key(tenant_id, key))
        if found is None:
            return None
        return CacheEntry(base64.b64decode(found["value"]), float(found["valid_until"]))

    def _save_cache_entry(self, tenant_id: str, key: str, entry: CacheEntry) -> None:
        """``valid_until`` is the exact expiry core compares; ``ttl`` the container's (whole seconds, later)."""
        fields: dict[str, object] = {"k": "c", "value": _b64(entry.value), "valid_until": float(entry.expires_at)}
        fields["ttl"] = ttl_for(entry.expires_at, self._clock())
        self._put(cache_key(tenant_id, key), fields, self._cache)

    # -- models and signing keys --------------------------------------------------------------------

    def put_model(self, spec: ModelSpec) -> None:
        fields = {"k": "m", "model_id": spec.id, "spec": json.dumps(dataclasses.asdict(spec), sort_keys=True)}
        self._put(global_key("m", spec.id), fields)

    def get_model(self, model_id: str) -> ModelSpec | None:
        found = self._get(global_key("m", model_id))
        return _model_from(found) if found is not None else None

    def _load_models(self) -> list[ModelSpec]:
        return list(map(_model_from, self._all([GLOBAL, "models"])))

    def delete_model(self, model_id: str) -> bool:
        return delete_item(self._calls, self._documents, *global_key("m", model_id))

    def put_signing_key(self, key: SigningKey) -> None:
        pems = {"private_pem": _b64(key.private_pem), "public_pem": _b64(key.public_pem)}
        fields = {"k": "s", "kid": key.kid, **pems, "created_at": key.created_at, "retired_at": key.retired_at}
        self._put(global_key("s", key.kid), fields)

    def _load_signing_keys(self) -> list[SigningKey]:
        return list(map(_signing_key_from, self._all([GLOBAL, "signing_keys"])))


def open_cosmos_store(
    endpoint: str,
    *,
    key: str | None = None,
    credential: Any = None,
    database: str = DATABASE,
    create: bool = False,
    clock: Callable[[], float] = time.time,
) -> CosmosStore:
    """The store the Azure runtime uses: ``key`` for the emulator (or an account key), else ``credential`` (an
    azure-identity TokenCredential; ``DefaultAzureCredential`` when neither is given). ``create`` makes the
    database and its containers (the local server, tests); in Azure, Terraform has made them."""
    return CosmosStore(
        cosmos_client(endpoint, key=key, credential=credential), database=database, clock=clock, create=create
    )


if TYPE_CHECKING:
    from core.ports import Store

    def _as_store(store: CosmosStore) -> Store:
        """Never called: mypy checks here that CosmosStore has every role of the Store protocol."""
        return store


__all__ = ["CosmosStore", "cosmos_client", "create_containers", "open_cosmos_store"]
