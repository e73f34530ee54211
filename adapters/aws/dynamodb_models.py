"""The single-table layout of DynamoDBStore: item keys, pynamodb item models and the table's shape.

One table, ``pk`` (S) + ``sk`` (S), TTL on ``expires_at`` (whole epoch seconds), and one GSI ``gsi1`` on
``gsi1pk`` / ``gsi1sk`` (projection ALL): exactly what ``cdk/textnlp_cdk/storage.py`` creates.

=============  =============================  =================  ======================  ============================
item           pk                             sk                 gsi1pk                  gsi1sk
=============  =============================  =================  ======================  ============================
tenant         ``T#<tenant>``                 ``TENANT``         ``TENANTS``             ``<created_at>#<tenant>``
counters       ``T#<tenant>``                 ``LIMITS``         -                       -
counter shard  ``T#<tenant>#S#<shard>``       ``LIMITS``         -                       -
daily usage    ``T#<tenant>#A#n``             ``<day>#<model>``  ``DAILY#k``             ``<day>#<tenant>#<model>#n``
API key        ``T#<tenant>``                 ``KEY#<key id>``   -                       -
usage record   ``T#<tenant>#R#<request id>``  ``USAGE``          ``U#<tenant>#<day>#n``  ``<created_at>#<req id>``
cache entry    ``T#<tenant>#CACHE#<digest>``  ``CACHE``          -                       -
document       ``T#<owner>#D#<collection>``   ``<doc id>``       -                       -
key index      ``KEY#<key id>``               ``KEY``            -                       -
model          ``MODELS``                     ``<model id>``     -                       -
signing key    ``SIGNING_KEYS``               ``<kid>``          -                       -
=============  =============================  =================  ======================  ============================

Every partition key of a tenant's data begins with ``T#<tenant>``, so an IAM policy can confine a principal
to one tenant with ``dynamodb:LeadingKeys`` and no query can wander into another tenant's items. Three
kinds of item are global on purpose: the key index (which tenant an API key id belongs to: auth reads it
before it knows the tenant, and it holds nothing else), the model catalog and the JWT signing keys.
Usage records and cache entries get a partition each (``T#<tenant>#...``): they are many and written at
the request rate, and one partition per tenant would cap a tenant at one partition's throughput. For the
same reason a usage record's writes are spread by its shard ``n`` (a stable hash of its request id, of
``dynamodb_usage.AGGREGATE_SHARDS``): it adds to the daily aggregate's shard ``n``, an item in a partition
of its own, and its gsi1 entry goes to its day's partition ``n``; the aggregate's gsi1 entry goes to
``DAILY#k``, ``k`` = (hash of the tenant + ``n``) mod ``DAILY_SHARDS``, so that a tenant's shards are in as
many gsi1 partitions. The usage API adds the shards up and merges the partitions (``dynamodb_usage``).

Written before the shards had partitions, and still read (never written): daily usage in the tenant's own
partition (pk ``T#<tenant>``, sk ``A#<day>#<model>#n`` over 8 shards, gsi1pk ``DAILY#<0..3>``, gsi1sk
``<day>#<tenant>#<model>#n``) and usage records' gsi1 entries in one partition per tenant and day (gsi1pk
``U#<tenant>#<day>``).

``<created_at>`` is :func:`sortable` (16 hex digits that sort like the float). The models here only
(de)serialise: every read and write goes through ``DynamoDBTable``, whose table name is given at run time.
"""

from __future__ import annotations

import math
import struct
import zlib
from typing import Any

from pynamodb.attributes import (
    BinaryAttribute,
    BooleanAttribute,
    JSONAttribute,
    NumberAttribute,
    UnicodeAttribute,
)
from pynamodb.connection import Connection
from pynamodb.connection.base import MetaTable
from pynamodb.models import Model

GSI1 = "gsi1"
TTL_ATTRIBUTE = "expires_at"
COUNTER_PREFIX = "c_"  # counter fields are top-level attributes ``c_<field>`` (ADD works on top-level only)
DAILY_SHARDS = 32  # the all-tenant daily aggregates are spread over this many gsi1 partitions

_KEYS = (("pk", "HASH"), ("sk", "RANGE"))
_GSI_KEYS = (("gsi1pk", "HASH"), ("gsi1sk", "RANGE"))


def sortable(value: float) -> str:
    """A float as 16 hex digits whose string order is the numbers' order (negative ones too)."""
    (bits,) = struct.unpack(">Q", struct.pack(">d", value))
    bits = bits ^ 0xFFFF_FFFF_FFFF_FFFF if bits >> 63 else bits | 1 << 63
    return f"{bits:016x}"


def ttl_seconds(expires_at: float) -> int:
    """The TTL attribute's value: whole epoch seconds, rounded up so that nothing is swept early."""
    return math.ceil(expires_at)


def daily_shard(tenant_id: str, shard: int) -> str:
    """The gsi1 partition of a tenant's aggregate shard: shard ``n`` on the ``n``-th partition after the one the
    tenant's id hashes to (a stable hash, not Python's salted one), so that a tenant's shards are on as many
    partitions and tenants start on different ones."""
    return f"DAILY#{(zlib.crc32(tenant_id.encode()) + shard) % DAILY_SHARDS}"


def daily_shards() -> list[str]:
    return [f"DAILY#{n}" for n in range(DAILY_SHARDS)]


class _Item(Model):
    """The attributes every item may carry. ``Meta`` names no table: these models never do I/O."""

    class Meta:
        pass

    pk = UnicodeAttribute(hash_key=True)
    sk = UnicodeAttribute(range_key=True)
    gsi1pk = UnicodeAttribute(null=True)
    gsi1sk = UnicodeAttribute(null=True)
    expires_at = NumberAttribute(null=True)


class TenantItem(_Item):
    id = UnicodeAttribute()
    name = UnicodeAttribute()
    created_at = NumberAttribute()
    limits = JSONAttribute()
    suspended_at = NumberAttribute(null=True)


class KeyItem(_Item):
    """An API key; its own expiry is ``key_expires_at``: the TTL must not delete an expired key's record."""

    id = UnicodeAttribute()
    tenant_id = UnicodeAttribute()
    name = UnicodeAttribute()
    key_hash = UnicodeAttribute()
    scopes = JSONAttribute()  # a sorted list: DynamoDB has no empty sets
    created_at = NumberAttribute()
    key_expires_at = NumberAttribute(null=True)
    revoked_at = NumberAttribute(null=True)
    limits = JSONAttribute()
    prefix = UnicodeAttribute()


class KeyIndexItem(_Item):
    """Which tenant an API key id belongs to: what auth reads before it knows the tenant."""

    tenant_id = UnicodeAttribute()


class UsageItem(_Item):
    request_id = UnicodeAttribute()
    tenant_id = UnicodeAttribute()
    key_id = UnicodeAttribute()
    model = UnicodeAttribute()
    endpoint = UnicodeAttribute()
    prompt_tokens = NumberAttribute()
    completion_tokens = NumberAttribute()
    cached = BooleanAttribute()
    latency_ms = NumberAttribute()
    status = NumberAttribute()
    created_at = NumberAttribute()
    cost = NumberAttribute()
    ended = UnicodeAttribute(null=True)  # absent on records written before it existed: "completed"


class DailyItem(_Item):
    """A shard of a (tenant, day, model) aggregate, built by ``ADD`` only (so it needs no read)."""

    tenant_id = UnicodeAttribute()
    day = UnicodeAttribute()
    model = UnicodeAttribute()
    requests = NumberAttribute(default=0)
    prompt_tokens = NumberAttribute(default=0)
    completion_tokens = NumberAttribute(default=0)
    cached_requests = NumberAttribute(default=0)
    cost = NumberAttribute(default=0)


class CacheItem(_Item):
    """``expires_at`` (whole seconds) is for the TTL sweeper; ``valid_until`` is the exact expiry reads check."""

    value = BinaryAttribute(legacy_encoding=False)
    valid_until = NumberAttribute()


class ModelItem(_Item):
    spec = UnicodeAttribute()  # the ModelSpec as JSON, like the SQLite store keeps it


class SigningKeyItem(_Item):
    kid = UnicodeAttribute()
    private_pem = BinaryAttribute(legacy_encoding=False)
    public_pem = BinaryAttribute(legacy_encoding=False)
    created_at = NumberAttribute()
    retired_at = NumberAttribute(null=True)


class DocumentItem(_Item):
    id = UnicodeAttribute()
    owner = UnicodeAttribute()
    body = UnicodeAttribute()  # JSON text: exactly what was written, whatever its numbers
    version = NumberAttribute()
    updated_at = NumberAttribute()


def _key_schema(keys: tuple[tuple[str, str], ...]) -> list[dict[str, str]]:
    return [{"AttributeName": name, "KeyType": kind} for name, kind in keys]


def table_meta(table_name: str) -> MetaTable:
    """What pynamodb needs to know of the table, so that it never has to call DescribeTable."""
    return MetaTable(
        {
            "TableName": table_name,
            "KeySchema": _key_schema(_KEYS),
            "AttributeDefinitions": [{"AttributeName": name, "AttributeType": "S"} for name, _ in (*_KEYS, *_GSI_KEYS)],
            "GlobalSecondaryIndexes": [{"IndexName": GSI1, "KeySchema": _key_schema(_GSI_KEYS)}],
        }
    )


def create_table(connection: Connection, table_name: str) -> dict[str, Any]:
    """Create the table as the CDK stack does (on-demand, gsi1 projecting ALL, TTL on ``expires_at``).

    For tests and local development; deployed stacks get the table from CDK.
    """
    result: dict[str, Any] = connection.create_table(
        table_name,
        attribute_definitions=[{"attribute_name": name, "attribute_type": "S"} for name, _ in (*_KEYS, *_GSI_KEYS)],
        key_schema=[{"attribute_name": name, "key_type": kind} for name, kind in _KEYS],
        global_secondary_indexes=[
            {"index_name": GSI1, "key_schema": _key_schema(_GSI_KEYS), "projection": {"ProjectionType": "ALL"}}
        ],
        billing_mode="PAY_PER_REQUEST",
    )
    connection.update_time_to_live(table_name, TTL_ATTRIBUTE)
    return result
