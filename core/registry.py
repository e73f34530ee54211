"""The model registry: which models exist, their limits and prices, and how to reach them."""

from __future__ import annotations

from core.cache import TTLCache
from core.domain import ModelSpec
from core.errors import InvalidRequest, NotFound
from core.ports import Clock, ModelStore

# A model whose metadata names a tenant here (a fine-tuned model) exists only for that tenant.
OWNER_KEY = "tenant_id"


def visible_to(spec: ModelSpec, tenant_id: str | None) -> bool:
    """Whether ``tenant_id`` may see and call ``spec`` (``None``: the gateway itself, which sees all)."""
    owner = spec.metadata.get(OWNER_KEY)
    return owner is None or tenant_id is None or owner == tenant_id


class ModelRegistry:
    """Reads models through a short per-process cache; writes go straight to the store."""

    def __init__(self, store: ModelStore, clock: Clock, cache_ttl_s: float = 5.0) -> None:
        self._store = store
        self._cache: TTLCache[str, ModelSpec | None] = TTLCache(1024, cache_ttl_s, clock)

    def find(self, model_id: str) -> ModelSpec | None:
        found, spec = self._cache.lookup(model_id)
        if not found:
            spec = self._store.get_model(model_id)
            self._cache.put(model_id, spec)
        return spec

    def get(self, model_id: str, kind: str | None = None, tenant: str | None = None) -> ModelSpec:
        """The model, as seen by ``tenant``: another tenant's fine-tuned model is as absent as a missing one."""
        spec = self.find(model_id)
        if spec is None or not visible_to(spec, tenant):
            raise NotFound(f"the model '{model_id}' does not exist", param="model", code="model_not_found")
        if kind is not None and spec.kind != kind:
            raise InvalidRequest(
                f"the model '{model_id}' is an {spec.kind} model and cannot serve this endpoint",
                param="model",
                code="model_not_supported",
            )
        return spec

    def all(self, tenant: str | None = None) -> list[ModelSpec]:
        """Every model ``tenant`` may see (all of them for ``None``), by id."""
        return sorted((m for m in self._store.list_models() if visible_to(m, tenant)), key=lambda m: m.id)

    def put(self, spec: ModelSpec) -> None:
        self._store.put_model(spec)
        self._cache.pop(spec.id)

    def delete(self, model_id: str) -> bool:
        self._cache.pop(model_id)
        return self._store.delete_model(model_id)
