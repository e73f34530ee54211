"""The neutral request and response every function handler converts to and from."""

from __future__ import annotations

import re
from collections.abc import AsyncIterator, Mapping
from dataclasses import dataclass, field
from typing import Any

from pydantic import BaseModel

from core.errors import APIError

JSON = "application/json"


# What a caller's (or a platform's) request id may be to be echoed and logged: letters, digits and ._:=-
# ("=" because API Gateway's ids are base64 with padding), at most 128 characters. Anything else is replaced.
_SANE_REQUEST_ID = re.compile(r"^[A-Za-z0-9._:=-]{1,128}$")


def sane_request_id(value: str | None) -> str | None:
    """``value`` if it may serve as the correlation id of a request, else None."""
    return value if value is not None and _SANE_REQUEST_ID.match(value) else None


@dataclass(slots=True)
class Request:
    """An HTTP request, independent of the runtime that received it.

    Header names are lower-case. ``path_params`` is filled by the router. ``deadline``: the instant
    (``time.monotonic()`` seconds) by which the runtime must have answered, None if it sets no limit.
    """

    method: str
    path: str
    headers: Mapping[str, str] = field(default_factory=dict)
    query: Mapping[str, str] = field(default_factory=dict)
    body: bytes = b""
    path_params: dict[str, str] = field(default_factory=dict)
    request_id: str = ""
    deadline: float | None = None

    def header(self, name: str, default: str | None = None) -> str | None:
        return self.headers.get(name, default)


@dataclass(slots=True)
class Response:
    """A response; ``stream`` (server-sent events) replaces ``body`` when set."""

    status: int = 200
    headers: dict[str, str] = field(default_factory=dict)
    body: bytes = b""
    stream: AsyncIterator[bytes] | None = None

    @classmethod
    def json(cls, payload: BaseModel | Mapping[str, Any] | list[Any], status: int = 200) -> Response:
        if isinstance(payload, BaseModel):
            data = payload.model_dump_json(exclude_none=False).encode()
        else:
            data = _dumps(payload)
        return cls(status=status, headers={"content-type": JSON}, body=data)

    @classmethod
    def error(cls, err: APIError) -> Response:
        return cls(status=err.status, headers={"content-type": JSON, **err.headers}, body=_dumps(err.body()))

    @classmethod
    def sse(cls, events: AsyncIterator[bytes]) -> Response:
        return cls(
            status=200,
            headers={"content-type": "text/event-stream", "cache-control": "no-cache"},
            stream=events,
        )


def _dumps(payload: object) -> bytes:
    import json

    return json.dumps(payload, separators=(",", ":"), ensure_ascii=False).encode()
