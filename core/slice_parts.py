"""What budget slices are made of (``core.budget_slices``): the policy, a slice, and a request's share of one."""

from __future__ import annotations

from dataclasses import dataclass

from core.domain import CounterChange
from core.limit_changes import Reservation
from core.limit_refusals import MINUTE

SCARCE = "z"  # on a window's own minute item: an instance could not draw a slice in this minute


@dataclass(frozen=True)
class SlicePolicy:
    """How big a slice grows and how long it serves.

    ``first_requests``: a new (tenant, key)'s first slice, in requests; it doubles while slices run out
    within half their age, up to ``max_requests``, and halves when one closes less than half spent.
    ``share``: no slice holds more than this share of any of the tenant's or key's limits.
    ``max_age_s``: a slice older than this takes no new request (what slices hold, and can strand while
    another instance is refused, is about this long of the tenant's traffic). ``guard_reads``: read the minute
    item's guards for requests (revocation within ``guard_read_s``: a read serves the instance's requests
    that long) rather than only when a slice is drawn. ``scarce_requests``, ``scarce_age_s``: a slice's size
    and age for the rest of a minute in which an instance could not draw one (the budget is running out).
    ``throttle_backoff_s``: after the store throttled a draw, the instance draws nothing for the tenant this long
    (its requests without a slice get a 503 at once), doubled while it keeps throttling, up to
    ``throttle_backoff_max_s``."""

    first_requests: int = 4
    max_requests: int = 64
    share: float = 1 / 64
    max_age_s: float = 2.0
    guard_reads: bool = True
    guard_read_s: float = 0.1
    scarce_requests: int = 4
    scarce_age_s: float = 0.25
    throttle_backoff_s: float = 0.25
    throttle_backoff_max_s: float = 2.0


class SliceShare(Reservation):
    """A request's part of a slice: what it took, and the slice it took it from."""

    def __init__(self, tokens: int, key_id: str, slice_: Slice) -> None:
        super().__init__(tokens, None, None, key_id, headers=dict(slice_.reservation.headers))
        self.slice = slice_
        self.used = 0  # what its settlement charged
        self.carried: list[CounterChange] = []  # the slice's give-back, when its settlement carried it
        self.released = False


@dataclass(eq=False)
class Slice:
    reservation: Reservation
    requests: int
    drawn_at: float
    window: int
    max_age_s: float
    taken: int = 0  # requests handed out
    spent: int = 0  # tokens used by the requests that settled
    outstanding: int = 0  # tokens held by requests in flight
    in_flight: int = 0
    closed: bool = False
    returned_once: bool = False  # what was free when it closed went back
    given_back: bool = False  # everything went back
    returned_tokens: int = 0
    returned_requests: int = 0

    def room(self, tokens: int, now: float) -> bool:
        return (
            not self.closed
            and self.taken < self.requests
            and self.reservation.tokens - self.spent - self.outstanding >= tokens
            and now - self.drawn_at < self.max_age_s
            and int(now // MINUTE) == self.window
        )


__all__ = ["SCARCE", "Slice", "SlicePolicy", "SliceShare"]


class Pauses:
    """Per key, a pause after the store throttled a write, doubled while it keeps refusing (``first_s`` up to
    ``max_s``) and ended by the next write it takes. Not locked: the caller holds its own lock."""

    def __init__(self, first_s: float, max_s: float) -> None:
        self._first_s, self._max_s = first_s, max_s
        self._pauses: dict[str, tuple[float, float]] = {}  # key -> (not before, that pause's length)

    def waiting(self, key: str, now: float) -> bool:
        return now < self._pauses.get(key, (0.0, 0.0))[0]

    def throttled(self, key: str, now: float) -> None:
        length = min(self._max_s, 2 * self._pauses.get(key, (0.0, 0.0))[1] or self._first_s)
        if len(self._pauses) > 4096:
            self._pauses.clear()
        self._pauses[key] = (now + length, length)

    def written(self, key: str) -> None:
        self._pauses.pop(key, None)
