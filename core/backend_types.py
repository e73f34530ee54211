"""Backend types and the catalog that resolves a registry route to its backend.

A model's registry entry names its backend by a route: ``{"type": "sagemaker", "endpoint_name": ...}``. Which
types exist is not core's knowledge: each adapter package declares its own ``BackendType`` (its name, the route
fields it needs, and how to build it, importing the adapter only then), and each runtime's composition root
hands the types its cloud serves to ``BackendCatalog``. The catalog is written once for every runtime:

* ``check_route`` refuses, at registration, a route no backend of this deployment can serve (400, naming the
  types it has, or the fields a type needs);
* ``backend_for`` builds a backend on first use, once per process (many requests may ask at once), and keeps
  it: a backend holds connection pools and loaded models;
* ``count`` gives exact prompt token counts where a type's backend has the tokenizer (the local models).
"""

from __future__ import annotations

import threading
from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from core.errors import BackendError, InvalidRequest
from core.inference import Prompt
from core.ports import InferenceBackend


def _by_type(route: Mapping[str, Any]) -> str:
    return str(route.get("type", ""))


@dataclass(frozen=True)
class BackendType:
    """One kind of backend a runtime can serve, declared by the adapter that implements it.

    ``build(instance)`` imports and constructs the backend (called once per instance name, under a lock);
    ``instance(route)`` names the built backend that serves a route (by default one per type; the local type
    has one per engine). ``choices``: the values a route field may take when it is given.
    ``counts_tokens``: the built backend has ``count(route, prompt)``.
    """

    name: str
    build: Callable[[str], InferenceBackend]
    required: tuple[str, ...] = ()
    choices: Mapping[str, tuple[str, ...]] = field(default_factory=dict)
    instance: Callable[[Mapping[str, Any]], str] = _by_type
    counts_tokens: bool = False


class BackendCatalog:
    """``BackendResolver`` and ``TokenCounter`` over the backend types one runtime serves."""

    def __init__(self, types: Iterable[BackendType], where: str) -> None:
        self._types = {t.name: t for t in types}
        self._where = where  # "the local runtime", "AWS": said in errors
        self._lock = threading.Lock()
        self._built: dict[str, InferenceBackend] = {}

    @property
    def names(self) -> tuple[str, ...]:
        return tuple(self._types)

    def _known(self) -> str:
        return ", ".join(repr(n) for n in self._types)

    def check_route(self, route: Mapping[str, Any]) -> None:
        """A route this deployment can serve, or a 400 that says what is wrong with it."""
        kind = route.get("type")
        backend_type = self._types.get(kind) if isinstance(kind, str) else None
        if backend_type is None:
            raise InvalidRequest(
                f"backend.type must be one of {self._known()} on {self._where}, not {kind!r}",
                param="backend.type",
                code="invalid_value",
            )
        missing = [f for f in backend_type.required if not route.get(f)]
        if missing:
            raise InvalidRequest(
                f"a backend of type {kind!r} needs {', '.join(missing)}", param="backend", code="invalid_value"
            )
        for name, allowed in backend_type.choices.items():
            if name in route and route[name] not in allowed:
                raise InvalidRequest(
                    f"backend.{name} of type {kind!r} must be one of {', '.join(map(repr, allowed))}",
                    param=f"backend.{name}",
                    code="invalid_value",
                )

    def _type_of(self, route: Mapping[str, Any]) -> BackendType:
        backend_type = self._types.get(_by_type(route))
        if backend_type is None:
            raise BackendError(
                f"backend type {_by_type(route)!r} is not available on {self._where}; it serves {self._known()}",
                status=501,
                code="backend_unavailable",
            )
        return backend_type

    def _instance(self, backend_type: BackendType, route: Mapping[str, Any]) -> InferenceBackend:
        name = backend_type.instance(route)
        built = self._built.get(name)
        if built is None:
            with self._lock:
                built = self._built.get(name)
                if built is None:
                    built = self._built[name] = backend_type.build(name)
        return built

    def backend_for(self, route: Mapping[str, Any]) -> InferenceBackend:
        return self._instance(self._type_of(route), route)

    def count(self, route: Mapping[str, Any], prompt: Prompt) -> int | None:
        backend_type = self._types.get(_by_type(route))
        if backend_type is None or not backend_type.counts_tokens:
            return None
        counted: int | None = getattr(self._instance(backend_type, route), "count")(route, prompt)  # noqa: B009
        return counted

    def warm(self, route: Mapping[str, Any]) -> None:
        """Build a route's backend now, and load its model if it has one, rather than on the first request."""
        load = getattr(self.backend_for(route), "load", None)
        if load is not None:
            load()
