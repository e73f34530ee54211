"""Where CosmosStore keeps what: four containers partitioned by ``[tenant, part]`` (MultiHash), and item ids.

Every item carries ``tenant`` and ``part``: the tenant first, then a part that spreads a busy tenant over many
logical partitions (each capped at 20 GB and 10,000 RU/s). ``terraform/azure`` creates the same containers.

=============  ===============  ================================  ======================================
container      item             ``[tenant, part]``                id
=============  ===============  ================================  ======================================
``counters``   counter item     ``[t, "<kind>|<shard or 0>"]``    ``<item>`` (core's name)
``usage``      usage record     ``[t, "r|<00-63>"]``              ``r|<request id>``
``usage``      day aggregate    ``[t, "a|<00-31>"]``              ``a|<day>|<model>|<shard>``
``cache``      cache entry      ``[t, "<00-63>"]``                ``<key>``
``documents``  document         ``[owner, "d|<collection>"]``     ``d|<owner>|<collection>|<id>``
``documents``  API key          ``[t, "keys"]``                   ``k|<key id>``
``documents``  tenant, model,   ``["~", "tenants" | "models" |    ``t|<id>``, ``m|<id>``, ``s|<kid>``,
               signing key,     "signing_keys" | "key_index|nn"]``  ``i|<key id>`` (-> its tenant)
               key index
=============  ===============  ================================  ======================================

Counter items are named by core (``rl|<tenant>|<minute>[|<shard>]``, ``q|<tenant>|<YYYY-MM>[|<shard>]``): the
second part is the tenant; one named without a tenant lives under ``~`` (no tenant id: they are ``ten_<hex>``
and ``admin``). ``nn`` is a stable hash (crc32) of the request id, key or key id. ``counters`` and ``cache``
have default TTL -1 (each item's ``ttl`` counts); ``usage`` and ``documents`` none.

For the emulator (cosmosdb-server), which keys items by the first partition key path only and checks a patch's
filter predicate against every item with its id, ids are unique per tenant, and those patched with a predicate
(counters, documents) unique in their container. Names are escaped in ids (``quote``) and in counter field
names (``field_name``: all but ``[a-z0-9_-|@.:#]`` percent-encoded, so a name is the same lowercased, as the
emulator lowercases filter predicates, and needs no JSON-pointer escape in a patch path).
"""

from __future__ import annotations

import zlib
from urllib.parse import unquote

DATABASE = "textnlp"
COUNTERS, USAGE, DOCUMENTS, CACHE = "counters", "usage", "documents", "cache"
PARTITION_PATHS = ["/tenant", "/part"]
CONTAINERS: dict[str, int | None] = {COUNTERS: -1, USAGE: None, DOCUMENTS: None, CACHE: -1}  # default TTL
GLOBAL = "~"
AGGREGATE_SHARDS = 32  # daily aggregate items per (tenant, day, model)
_ID_SPECIAL = frozenset("~%/\\?#|")
_FIELD_SAFE = frozenset("abcdefghijklmnopqrstuvwxyz0123456789_-|@.:#")

Key = tuple[str, list[str]]  # (item id, [tenant, part])


def quote(name: str) -> str:
    """A name as a piece of an id: ``~xx`` for ``~ % / \\ ? # |`` and control characters (``~``: a URL has no
    reason to encode it; ``%`` in an id is allowed but best kept out of URLs)."""
    return "".join(f"~{ord(c):02x}" if c in _ID_SPECIAL or ord(c) < 0x20 or ord(c) == 0x7F else c for c in name)


def field_name(name: str) -> str:
    return "".join(c if c in _FIELD_SAFE else "".join(f"%{b:02x}" for b in c.encode()) for c in name)


def field_from(stored: str) -> str:
    return unquote(stored)


def bucket(name: str, buckets: int) -> str:
    return f"{zlib.crc32(name.encode()) % buckets:02d}"


def counter_key(item: str) -> Key:
    parts = item.split("|")
    if len(parts) >= 3 and parts[1]:
        return quote(item), [parts[1], f"{parts[0]}|{'|'.join(parts[3:]) or '0'}"]
    return quote(item), [GLOBAL, f"c|{quote(item)}"]


def record_key(tenant_id: str, request_id: str) -> Key:
    return f"r|{quote(request_id)}", [tenant_id, f"r|{bucket(request_id, 64)}"]


def aggregate_key(tenant_id: str, day: str, model: str, request_id: str) -> Key:
    shard = bucket(request_id, AGGREGATE_SHARDS)
    return f"a|{quote(day)}|{quote(model)}|{shard}", [tenant_id, f"a|{shard}"]


def cache_key(tenant_id: str, key: str) -> Key:
    return quote(key), [tenant_id, bucket(key, 64)]


def documents_part(collection: str) -> str:
    return f"d|{quote(collection)}"


def document_key(collection: str, owner: str, doc_id: str) -> Key:
    return f"d|{quote(owner)}|{quote(collection)}|{quote(doc_id)}", [owner, documents_part(collection)]


def key_key(tenant_id: str, key_id: str) -> Key:
    return f"k|{quote(key_id)}", [tenant_id, "keys"]


def key_index_key(key_id: str) -> Key:
    return f"i|{quote(key_id)}", [GLOBAL, f"key_index|{bucket(key_id, 16)}"]


def global_key(kind: str, name: str) -> Key:
    """A tenant (``t``), model (``m``) or signing key (``s``)."""
    return f"{kind}|{quote(name)}", [GLOBAL, {"t": "tenants", "m": "models", "s": "signing_keys"}[kind]]


def placed(key: Key, fields: dict[str, object]) -> dict[str, object]:
    """An item's body: its id, its partition key fields and ``fields``."""
    return {"id": key[0], "tenant": key[1][0], "part": key[1][1], **fields}
