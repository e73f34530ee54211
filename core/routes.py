"""Routes: method + path template -> handler, with the scope it needs and its body model."""

from __future__ import annotations

import importlib
import re
import threading
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from pydantic import BaseModel

from core.errors import MethodNotAllowed, NotFound
from core.http import Request, Response

if TYPE_CHECKING:
    from core.app import RequestContext

Handler = Callable[["RequestContext"], Awaitable[Response]]
# ``{name}`` matches one path segment; ``{name:path}`` also matches slashes (model ids such as ``org/model``).
_PARAM = re.compile(r"\{([a-z_]+)(:path)?\}")


@dataclass(frozen=True)
class Route:
    method: str
    path: str
    handler: Handler
    scope: str | None
    summary: str
    body: type[BaseModel] | None = None
    response: type[BaseModel] | None = None
    public: bool = False
    tags: tuple[str, ...] = ()
    query: dict[str, str] = field(default_factory=dict)
    # A route that takes uploads allows a larger body than the gateway's JSON limit.
    max_body_bytes: int | None = None

    def pattern(self) -> re.Pattern[str]:
        return re.compile("^" + _PARAM.sub(lambda m: f"(?P<{m[1]}>{'.+' if m[2] else '[^/]+'})", self.path) + "$")

    @property
    def template(self) -> str:
        """The path as OpenAPI writes it: ``/v1/models/{model_id}``."""
        return _PARAM.sub(r"{\1}", self.path)


class Router:
    """Static paths are a dict lookup; templated ones are tried in order.

    Areas of routes may be included lazily (``include``): a module's routes are registered the first time a
    request needs them, so a cold start imports only the handlers and schemas of the route it serves.
    """

    def __init__(self) -> None:
        self._routes: list[Route] = []
        self._static: dict[str, dict[str, Route]] = {}
        self._dynamic: list[tuple[re.Pattern[str], dict[str, Route]]] = []
        self._areas: list[tuple[str, tuple[str, ...]]] = []  # (module, path prefixes), not imported yet
        self._order: dict[str, int] = {}  # module -> its place in listings
        self._loading = threading.Lock()

    def include(self, module: str, *prefixes: str) -> None:
        """Register ``module``'s routes (its ``register(router)``) on first need: a request whose path starts
        with one of ``prefixes``, a request no loaded route matches, or a listing of every route."""
        self._order[module] = len(self._order) + 1
        self._areas.append((module, prefixes))

    @property
    def routes(self) -> list[Route]:
        """Every route, in the order their areas were included (routes added directly first)."""
        self._load(lambda _: True)
        return sorted(self._routes, key=lambda r: self._order.get(r.handler.__module__, 0))

    def _load(self, wanted: Callable[[tuple[str, ...]], bool]) -> None:
        """Import the areas ``wanted`` picks by their prefixes (one thread at a time; an area once)."""
        if not self._areas:
            return
        with self._loading:
            for area in [area for area in self._areas if wanted(area[1])]:
                importlib.import_module(area[0]).register(self)
                self._areas.remove(area)

    def add(self, route: Route) -> None:
        self._routes.append(route)
        if "{" not in route.path:
            self._static.setdefault(route.path, {})[route.method] = route
            return
        for pattern, by_method in self._dynamic:
            if pattern.pattern == route.pattern().pattern:
                by_method[route.method] = route
                return
        self._dynamic.append((route.pattern(), {route.method: route}))

    def route(
        self, method: str, path: str, *, scope: str | None, summary: str, **kw: Any
    ) -> Callable[[Handler], Handler]:
        def decorate(handler: Handler) -> Handler:
            self.add(Route(method, path, handler, scope, summary, **kw))
            return handler

        return decorate

    def largest_body(self, default: int) -> int:
        """The largest body any route accepts: what a runtime may buffer before the gateway sees it."""
        return max([default, *(r.max_body_bytes for r in self.routes if r.max_body_bytes is not None)])

    def match(self, request: Request) -> Route:
        try:
            return self._match(request)
        except (NotFound, MethodNotAllowed):
            # The area the path names; failing that (an unknown path), every area still to load. Matched again
            # either way: another thread may have registered the area between our miss and our load.
            path = request.path
            self._load(lambda prefixes: path.startswith(prefixes))
        try:
            return self._match(request)
        except (NotFound, MethodNotAllowed):
            self._load(lambda _: True)
        return self._match(request)

    def _match(self, request: Request) -> Route:
        path = request.path.rstrip("/") or "/"
        by_method = self._static.get(path)
        if by_method is None:
            for pattern, candidates in self._dynamic:
                m = pattern.match(path)
                if m:
                    by_method = candidates
                    request.path_params = m.groupdict()
                    break
        if by_method is None:
            raise NotFound(f"no route for {request.method} {request.path}", code="unknown_route")
        route = by_method.get(request.method)
        if route is None:
            allowed = ", ".join(sorted(by_method))
            raise MethodNotAllowed(
                f"{request.method} is not allowed on {request.path}; use {allowed}", headers={"allow": allowed}
            )
        return route
