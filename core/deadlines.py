"""The deadline of the request being served: what the runtime's time limit and the caller leave for models.

A function entry point knows when its platform stops it (Lambda's remaining time, a Cloud Run or Azure
Functions request timeout) and puts that instant on ``Request.deadline``; ``Gateway.handle`` keeps a margin
to settle and answer, narrows it with the caller's ``x-textnlp-timeout`` header, and sets it here for the
request (a ``ContextVar``: the request's tasks see it, other requests do not). ``core.model_router`` bounds every
call to a backend by ``bounded(model timeout)``. Instants are ``time.monotonic()`` seconds.
"""

from __future__ import annotations

import math
import time
from collections.abc import Iterator
from contextlib import contextmanager
from contextvars import ContextVar

from core.errors import InvalidRequest

#: The caller's bound on the request, in seconds (a decimal number > 0).
TIMEOUT_HEADER = "x-textnlp-timeout"
#: A caller's timeout above this counts as this: the longest model timeout the registry accepts.
MAX_CALLER_TIMEOUT_S = 900.0
#: An attempt (or a retry's backoff) is not started with less time than this left: it could not finish.
MIN_ATTEMPT_S = 0.25

_DEADLINE: ContextVar[float | None] = ContextVar("textnlp_deadline", default=None)


def current() -> float | None:
    """The current request's deadline (monotonic seconds), None where nothing limits it."""
    return _DEADLINE.get()


def time_left(deadline: float | None) -> float | None:
    """Seconds until ``deadline`` (negative once passed), None for no deadline."""
    return None if deadline is None else deadline - time.monotonic()


def bounded(timeout_s: float, deadline: float | None) -> float:
    """A call's timeout: ``timeout_s``, or less if the deadline comes first (0 or below: no time left)."""
    left = time_left(deadline)
    return timeout_s if left is None else min(timeout_s, left)


def can_start(deadline: float | None, after_s: float = 0.0) -> bool:
    """Whether an attempt starting ``after_s`` from now would still have ``MIN_ATTEMPT_S`` before the deadline."""
    left = time_left(deadline)
    return left is None or left - after_s >= MIN_ATTEMPT_S


@contextmanager
def narrowed(deadline: float | None) -> Iterator[float | None]:
    """Within the block, the deadline is the earlier of the current one and ``deadline`` (never a later one)."""
    found = _DEADLINE.get()
    effective = found if deadline is None else deadline if found is None else min(found, deadline)
    token = _DEADLINE.set(effective)
    try:
        yield effective
    finally:
        _DEADLINE.reset(token)


@contextmanager
def cleared() -> Iterator[None]:
    """No deadline within the block: work that outlives the request that started it (an in-process job)."""
    token = _DEADLINE.set(None)
    try:
        yield
    finally:
        _DEADLINE.reset(token)


def caller_timeout(value: str | None) -> float | None:
    """The seconds of an ``x-textnlp-timeout`` header (None if absent); 400 ``invalid_timeout`` if unusable."""
    if value is None:
        return None
    try:
        seconds = float(value.strip())
    except ValueError:
        seconds = math.nan
    if not math.isfinite(seconds) or seconds <= 0:
        raise InvalidRequest(
            f"the {TIMEOUT_HEADER} header must be a number of seconds above 0, not {value[:40]!r}",
            param=TIMEOUT_HEADER,
            code="invalid_timeout",
        )
    return min(seconds, MAX_CALLER_TIMEOUT_S)
