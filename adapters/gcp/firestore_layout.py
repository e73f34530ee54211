"""Where FirestoreStore keeps what: document paths, every tenant's data under ``tenants/{tenant}``.

=================  ==========================================================  ===================================
what               path                                                        fields
=================  ==========================================================  ===================================
tenant             ``tenants/{tenant}``                                        id, name, created_at, limits, ...
API key            ``tenants/{tenant}/keys/{key id}``                          the record (``key_expires_at``)
counter item       ``tenants/{tenant}/counters/{item}``                        ``c`` (map), ``x``, ``expires_at``
usage record       ``tenants/{tenant}/usage/{request id}``                     the record, ``day``, ``shard``, ``w``
daily aggregate    ``tenants/{tenant}/daily/{day}|{writer shard}|{model}``     tenant_id, day, model, sums
cache entry        ``tenants/{tenant}/cache/{digest}``                         value, valid_until, ``expires_at``
document           ``tenants/{owner}/documents/{collection}/items/{doc id}``   id, owner, body, version, updated_at
key index          ``key_index/{key id}``                                      tenant_id
model              ``models/{model id}``                                       spec (JSON)
signing key        ``signing_keys/{kid}``                                      kid, pems, created_at, retired_at
counter, no tenant ``counters/{item}``                                         (items core names without a tenant)
=================  ==========================================================  ===================================

A counter item is named by core (``rl|<tenant>|<minute>``, its shards ``rl|<tenant>|<minute>|<n>``,
``q|<tenant>|<YYYY-MM>``): the second part is its tenant. Only what is read before the tenant is known (the
key index), the model catalog and the signing keys are global. ``expires_at`` is a Timestamp, the field the
TTL policies (Terraform) name, on counter items that expire and on cache entries; reads compare the exact
expiry (``x``, ``valid_until``: TTL deletion is lazy, up to a day late). Usage records are listed through a
composite index (``shard``, ``created_at``), in collection and collection-group scope, with no single-field
index on ``created_at``; the aggregates of every tenant need a collection-group index on ``daily.day``.

Names become document ids as they are, except ``/`` and ``%`` (percent-encoded) and the ids Firestore reserves
(``.``, ``..``, ``__*__``: the first character encoded): ids of keys, requests, models and cache digests never
hold those, so listings in id order stay in the names' order.
"""

from __future__ import annotations

TENANTS = "tenants"
KEY_INDEX = "key_index"
MODELS = "models"
SIGNING_KEYS = "signing_keys"
COUNTERS = "counters"
USAGE = "usage"
DAILY = "daily"
CACHE = "cache"


def doc_id(name: str) -> str:
    """A name as a document id: ``/`` and ``%`` encoded, and the reserved forms made ordinary."""
    quoted = name.replace("%", "%25").replace("/", "%2F")
    if quoted in (".", "..") or (len(quoted) > 3 and quoted.startswith("__") and quoted.endswith("__")):
        quoted = f"%{ord(quoted[0]):02X}{quoted[1:]}"
    return quoted


def tenant_path(tenant_id: str) -> str:
    return f"{TENANTS}/{doc_id(tenant_id)}"


def key_path(tenant_id: str, key_id: str) -> str:
    return f"{tenant_path(tenant_id)}/keys/{doc_id(key_id)}"


def key_index_path(key_id: str) -> str:
    return f"{KEY_INDEX}/{doc_id(key_id)}"


def counter_path(item: str) -> str:
    """A counter item under its tenant (the second ``|`` part of core's names), else at the root."""
    parts = item.split("|")
    if len(parts) >= 3 and parts[1]:
        return f"{tenant_path(parts[1])}/{COUNTERS}/{doc_id(item)}"
    return f"{COUNTERS}/{doc_id(item)}"


def usage_path(tenant_id: str, request_id: str) -> str:
    return f"{tenant_path(tenant_id)}/{USAGE}/{doc_id(request_id)}"


def daily_path(tenant_id: str, day: str, shard: str, model: str) -> str:
    return f"{tenant_path(tenant_id)}/{DAILY}/{doc_id(f'{day}|{shard}|{model}')}"


def cache_path(tenant_id: str, key: str) -> str:
    return f"{tenant_path(tenant_id)}/{CACHE}/{doc_id(key)}"


def documents_parent(collection: str, owner: str) -> str:
    """The document whose ``items`` subcollection holds one owner's documents of a collection."""
    return f"{tenant_path(owner)}/documents/{doc_id(collection)}"


def document_path(collection: str, owner: str, doc_id_: str) -> str:
    return f"{documents_parent(collection, owner)}/items/{doc_id(doc_id_)}"


def model_path(model_id: str) -> str:
    return f"{MODELS}/{doc_id(model_id)}"


def signing_key_path(kid: str) -> str:
    return f"{SIGNING_KEYS}/{doc_id(kid)}"
