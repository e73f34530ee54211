"""Store policy in core: what every Store decides the same way, on top of the primitives each adapter provides."""

from __future__ import annotations

from core.stores.base import CacheEntry, StoredDocument, StorePolicy, utc_day

__all__ = ["CacheEntry", "StorePolicy", "StoredDocument", "utc_day"]
