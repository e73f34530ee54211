"""Flask (functions-framework) requests to core Requests, and core Responses back, streams included.

Runs on the request's own thread (a gunicorn worker thread): reading the body and writing the answer block
that thread only. A stream's events come one by one from the instance's loop (``LoopThread``); a caller who
leaves closes the generator, which closes the stream on the loop (the backend stops, metering charges what
was delivered).
"""

from __future__ import annotations

import time
from collections.abc import Callable, Iterator
from typing import Any
from urllib.parse import parse_qsl

import flask

from core.http import Request, Response
from functions.gcp.event_loop import LoopThread

#: How long a stream may wait for its next event beyond its deadline before the request thread gives up on it.
STREAM_SLACK_S = 5.0


def to_request(req: flask.Request, limit_for: Callable[[str, str, dict[str, str]], int]) -> Request | None:
    """The core Request, or None when the body is above the route's limit (read no further than that)."""
    method = req.method.upper()
    path = req.path or "/"
    headers = {k.lower(): v for k, v in req.headers.items()}
    limit = limit_for(method, path, headers)
    declared = req.content_length
    if declared is not None and declared > limit:
        return None
    body = req.stream.read(limit + 1)
    if len(body) > limit:
        return None
    query = dict(parse_qsl(req.query_string.decode("latin-1"), keep_blank_values=True))
    return Request(method=method, path=path, headers=headers, query=query, body=body)


def to_flask(
    response: Response, loop: LoopThread, deadline: float | None, on_end: Callable[[], None]
) -> flask.Response:
    """The Flask response; ``on_end`` runs when the answer is complete (a stream: when it ends or is dropped)."""
    headers = list(response.headers.items())
    if response.stream is None:
        on_end()
        return flask.Response(response.body, status=response.status, headers=headers)
    return flask.Response(
        _events(response, loop, deadline, on_end), status=response.status, headers=headers, direct_passthrough=True
    )


def _events(
    response: Response, loop: LoopThread, deadline: float | None, on_end: Callable[[], None]
) -> Iterator[bytes]:
    stream = response.stream
    assert stream is not None  # nosec B101 - to_flask checked it
    iterator = aiter(stream)
    try:
        while True:
            timeout = None if deadline is None else max(1.0, deadline - time.monotonic() + STREAM_SLACK_S)
            chunk = loop.run(_next(iterator), timeout)
            if chunk is None:
                return
            yield chunk
    finally:
        closer: Any = getattr(stream, "aclose", None)
        try:
            if closer is not None:
                loop.run(closer(), 10.0)  # the caller left, or the stream ended: its settle step runs now
        finally:
            on_end()


async def _next(iterator: Any) -> bytes | None:
    """The next event, None at the end (StopAsyncIteration does not cross threads as a result)."""
    try:
        chunk: bytes = await anext(iterator)
    except StopAsyncIteration:
        return None
    return chunk
