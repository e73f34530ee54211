"""``OpenAIRoute``: a registry ``backend`` entry for an OpenAI-compatible server, parsed and checked; and
``Target``: where the built-in HTTP/1.1 client sends a route's requests, when it can."""

from __future__ import annotations

import os
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

from adapters.openai_compat.wire import misconfigured

# The read timeout (inactivity) when the route sets none: the largest model timeout the admin API accepts
# (``ModelSpec.timeout_s`` <= 900), so the model's own timeout in core/model_router.py is always the one that fires.
DEFAULT_TIMEOUT_S = 900.0
_PROXY_ENV = ("http_proxy", "HTTP_PROXY", "all_proxy", "ALL_PROXY")


@dataclass(frozen=True, slots=True)
class OpenAIRoute:
    """The registry's ``backend`` entry for an OpenAI-compatible server."""

    base_url: str
    model: str
    api_key_env: str | None = None
    timeout_s: float = DEFAULT_TIMEOUT_S

    @classmethod
    def parse(cls, route: Mapping[str, Any]) -> OpenAIRoute:
        base_url, model = route.get("base_url"), route.get("model")
        if not (isinstance(base_url, str) and base_url and isinstance(model, str) and model):
            raise misconfigured("an OpenAI-compatible route needs 'base_url' and 'model'")
        key_env, timeout = route.get("api_key_env"), route.get("timeout_s")
        return cls(
            base_url=base_url.rstrip("/"),
            model=model,
            api_key_env=str(key_env) if key_env else None,
            timeout_s=float(timeout) if timeout is not None else DEFAULT_TIMEOUT_S,
        )


@dataclass(frozen=True, slots=True)
class Target:
    """Where the built-in client connects for a base URL: host, port and the path before the API's paths."""

    host: str
    port: int
    prefix: str

    @classmethod
    def of(cls, base_url: str) -> Target | None:
        """A plain-http URL the built-in client can serve; None for https, proxies, credentials."""
        try:
            parts = urlsplit(base_url)
            port = parts.port or 80
        except ValueError:
            return None
        if parts.scheme != "http" or not parts.hostname or parts.username or parts.query or parts.fragment:
            return None
        if any(os.environ.get(name) for name in _PROXY_ENV):
            return None  # httpx applies the proxy settings (and NO_PROXY)
        return cls(parts.hostname, port, parts.path.rstrip("/"))
