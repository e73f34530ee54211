"""The model registry: which models exist, their limits and prices, how to reach them, and their aliases."""

from __future__ import annotations

from collections.abc import Iterable

from core.cache import TTLCache
from core.domain import ModelSpec
from core.errors import Conflict, InvalidRequest, NotFound
from core.ports import Clock, ModelStore

# A model whose metadata names a tenant here (a fine-tuned model) exists only for that tenant.
OWNER_KEY = "tenant_id"


def visible_to(spec: ModelSpec, tenant_id: str | None) -> bool:
    """Whether ``tenant_id`` may see and call ``spec`` (``None``: the gateway itself, which sees all)."""
    owner = spec.metadata.get(OWNER_KEY)
    return owner is None or tenant_id is None or owner == tenant_id


def alias_index(models: Iterable[ModelSpec]) -> dict[str, ModelSpec]:
    """alias -> model. The admin API keeps aliases unique; should two models still claim one (a direct store
    write, two racing admin calls), a model every tenant sees wins over a tenant's own, then the smaller id:
    an alias never hands one tenant's model to everyone, nor everyone's model to one tenant's."""
    index: dict[str, ModelSpec] = {}
    for spec in sorted(models, key=lambda m: (OWNER_KEY in m.metadata, m.id)):
        for alias in spec.aliases:
            index.setdefault(alias, spec)
    return index


class ModelRegistry:
    """Reads models through a short per-process cache; writes go straight to the store.

    A name is a model's id or one of its aliases. The store is keyed by id only, so aliases resolve
    through an index built from the model list, itself cached: in steady state a name, alias or not,
    costs no store call (an id, as before, one ``get_model`` per cache period; an alias, one
    ``list_models`` per period shared by all aliases). An id always wins over an alias.
    """

    def __init__(self, store: ModelStore, clock: Clock, cache_ttl_s: float = 5.0) -> None:
        self._store = store
        self._clock = clock
        self._ttl = cache_ttl_s
        self._cache: TTLCache[str, ModelSpec | None] = TTLCache(1024, cache_ttl_s, clock)
        self._aliases: TTLCache[str, dict[str, ModelSpec]] = TTLCache(1, cache_ttl_s, clock)

    def find(self, name: str) -> ModelSpec | None:
        """The model called ``name`` (its id or an alias), whoever owns it; ``None`` if nothing is."""
        found, spec = self._cache.lookup(name)
        if not found:
            spec = self._store.get_model(name) or self._alias_index().get(name)
            self._cache.put(name, spec)
        return spec

    def cached(self, name: str) -> bool:
        """Whether ``find(name)`` is answered from this process's cache (no store call)."""
        return self._cache.lookup(name)[0]

    def _alias_index(self) -> dict[str, ModelSpec]:
        found, index = self._aliases.lookup("")
        if index is None or not found:
            index = alias_index(self._store.list_models())
            self._aliases.put("", index)
        return index

    def get(self, name: str, kind: str | None = None, tenant: str | None = None) -> ModelSpec:
        """The model called ``name``, as seen by ``tenant``: another tenant's fine-tuned model is as absent as
        a missing one, whether it is named by its id or by an alias."""
        spec = self.find(name)
        if spec is None or not visible_to(spec, tenant):
            raise NotFound(f"the model '{name}' does not exist", param="model", code="model_not_found")
        if kind is not None and spec.kind != kind:
            raise InvalidRequest(
                f"the model '{name}' is an {spec.kind} model and cannot serve this endpoint",
                param="model",
                code="model_not_supported",
            )
        return spec

    def by_id(self, model_id: str) -> ModelSpec | None:
        """The entry stored under exactly this id, read from the store (no alias, no cache): for admin writes."""
        return self._store.get_model(model_id)

    def all(self, tenant: str | None = None) -> list[ModelSpec]:
        """Every model ``tenant`` may see (all of them for ``None``), by id."""
        return sorted((m for m in self._store.list_models() if visible_to(m, tenant)), key=lambda m: m.id)

    def check_names(self, spec: ModelSpec) -> None:
        """Refuse (409) a model whose id or aliases another model already answers to.

        Read from the store, not the cache: the answer must hold for what is stored now.
        """
        for other in self._store.list_models():
            if other.id == spec.id:
                continue
            if spec.id in other.aliases:
                raise Conflict(f"the id '{spec.id}' is already an alias of the model '{other.id}'", param="id")
            for alias in spec.aliases:
                if alias == other.id:
                    raise Conflict(f"the alias '{alias}' is the id of the model '{other.id}'", param="aliases")
                if alias in other.aliases:
                    raise Conflict(
                        f"the alias '{alias}' already belongs to the model '{other.id}'; remove it there first",
                        param="aliases",
                    )

    def put(self, spec: ModelSpec) -> None:
        self._store.put_model(spec)
        self._forget()

    def delete(self, model_id: str) -> bool:
        deleted = self._store.delete_model(model_id)
        self._forget()
        return deleted

    def _forget(self) -> None:
        """After a write, this process forgets every name: an alias may have moved, appeared or gone.
        (Other processes see the change within the cache period, as for any model change.)"""
        self._cache = TTLCache(1024, self._ttl, self._clock)
        self._aliases = TTLCache(1, self._ttl, self._clock)
