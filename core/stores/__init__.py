"""Store policy in core: what every Store decides the same way, on top of the primitives each adapter provides."""

from __future__ import annotations

from core.stores.base import CacheEntry, StoredDocument, StorePolicy, utc_day
from core.stores.transactional import Loaded, TransactionalCounters

__all__ = ["CacheEntry", "Loaded", "StorePolicy", "StoredDocument", "TransactionalCounters", "utc_day"]
