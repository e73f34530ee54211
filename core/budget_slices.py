"""Budget slices: a function instance that serves many requests at once spends a slice of budget in memory.

Why: on a store that takes about one sustained write per second per document (Firestore), no design that
writes a counter item for every request can serve a busy tenant, however many shards it spreads over. An
instance of Cloud Run functions or Azure Functions serves tens of requests at once, so it can draw a slice
(several requests' worth of requests and tokens) with ONE ordinary reservation (``core.limits``, sharded as
``core.budget_shards`` says), hand it out to its requests in memory, and give back what is left when the
slice closes: one write per slice instead of two per request.

The guarantees, and what they cost:

- **Zero overspend.** A slice is a reservation like any other, made under every limit at once; its quota
  part is charged outright, not leased (``LimitEnforcer.reserve(leased=False)``: a lease reclaimed after its
  holder died would give back tokens its requests used). Requests take from the slice under a lock and
  never more than it holds; a request the slice cannot cover draws a new slice, or, when the budget is too
  short for a slice, reserves for itself alone (the plain per-request reservation).
- **A refusal while budget is left** happens only as ``core.budget_shards`` bounds it, plus what the slices
  of other instances hold: at most ``share`` of each limit per instance and key, for at most ``max_age_s``
  (then the slice closes, and gives back once its requests have settled), or until the instance dies
  (a crashed instance's unused slice is not given back: never an overspend, a bounded underspend;
  ``close_all`` gives everything back on a graceful shutdown).
- **Revocation within ``guard_read_s``** (0.1 s): requests read the window's own minute item (``guard_reads``,
  one read serving an instance's requests for that long): the guards a revocation or a suspension writes there
  refuse the requests that follow, with no write. A read of one document scales where its writes do not.
- **Settlements** are in memory while the slice is open; the slice's give-back rides with the usage record of
  its last request to settle (``settlement``), or is written alone when the slice closes idle.
"""

from __future__ import annotations

import contextlib
import threading

from core.domain import ApiKeyRecord, CounterChange, Tenant
from core.errors import QuotaExceeded, RateLimited, ServiceUnavailable, StoreThrottled
from core.leases import LeaseClock
from core.limit_changes import Reservation, minute_expiry, minute_item
from core.limit_refusals import MINUTE, refuse_guarded
from core.limits import LimitEnforcer
from core.ports import Clock, CounterStore
from core.slice_parts import SCARCE, Pauses, Slice, SlicePolicy, SliceShare

_GIVE_BACKS = ""  # the give-backs' key among the pauses (no tenant id is empty)


class SlicedLimits:
    """A ``LimitEnforcer`` whose reservations are taken from per-instance budget slices (see the module).

    The same interface as ``LimitEnforcer`` (``reserve``, ``settlement``, ``release``, the guards); safe to
    call from many threads at once."""

    def __init__(
        self, enforcer: LimitEnforcer, counters: CounterStore, clock: Clock, policy: SlicePolicy | None = None
    ) -> None:
        self.enforcer = enforcer
        self.policy = policy or SlicePolicy()
        self._counters = counters
        self._clock = clock
        self._lock = threading.Lock()
        self._slices: dict[tuple[str, str], Slice] = {}
        self._sizes: dict[tuple[str, str], int] = {}  # requests per slice, per tenant and key
        self._drawing: dict[tuple[str, str], threading.Lock] = {}
        self._unwritten: list[CounterChange] = []  # give-backs the store throttled: written with the next ones
        self._guards: dict[str, tuple[float, dict[str, int]]] = {}  # minute item -> (read at, its values)
        self._scarce: dict[str, int] = {}  # tenant -> the minute window in which its budget is scarce
        # Draws per tenant, and the give-backs (key ""), paused after the store throttled them.
        self._pauses = Pauses(self.policy.throttle_backoff_s, self.policy.throttle_backoff_max_s)

    @property
    def leases(self) -> LeaseClock:
        """The enforcer's lease clock (the runtime bounds a request's time by it)."""
        return self.enforcer.leases

    def reserve(self, tenant: Tenant, key: ApiKeyRecord, tokens: int) -> Reservation:
        """Take one request and ``tokens`` tokens from this instance's slice, drawing one if needed; or raise
        as ``LimitEnforcer.reserve`` does."""
        now = self._clock.now()
        # A key without limits of its own spends the tenant's slices: fewer, bigger slices. Its revocation is
        # then seen by the guard read (without guard reads, a slice is drawn, and checked, per key).
        key_limited = any(v is not None for v in (key.limits.requests_per_minute, key.limits.tokens_per_minute))
        shared = self.policy.guard_reads and not key_limited and key.limits.token_quota is None
        slot = (tenant.id, "" if shared else key.id)
        if self.policy.guard_reads and self._holds(slot):
            # Served from memory: the guards are read (a reservation, a slice's included, checks them itself).
            values = self._guard_values(minute_item(tenant.id, int(now // MINUTE)), now)
            refuse_guarded(values, key.id)
            if values.get(SCARCE, 0) > 0:
                self._close_tenant(tenant.id, int(now // MINUTE))
        share = self._take(slot, key.id, tokens, now)
        if share is not None:
            return share
        with self._drawing_lock(slot):  # one draw at a time per tenant and key; the others wait and take
            share = self._take(slot, key.id, tokens, now)
            if share is not None:
                return share
            return self._draw_or_back_off(slot, tenant, key, tokens, now)

    def _draw_or_back_off(
        self, slot: tuple[str, str], tenant: Tenant, key: ApiKeyRecord, tokens: int, now: float
    ) -> Reservation:
        """``_draw``, unless the store throttled this tenant's counters a moment ago: then a 503 with no store
        call. Without the pause every request of a throttled instance would try a draw of its own, each a
        write to the tenant's hot items, and slices would never form; with it an instance asks at most once
        per pause (``throttle_backoff_s``, doubled while the store keeps refusing, up to
        ``throttle_backoff_max_s``)."""
        with self._lock:
            if self._pauses.waiting(tenant.id, now):
                raise StoreThrottled()
        try:
            reservation = self._draw(slot, tenant, key, tokens, now)
        except StoreThrottled:
            with self._lock:
                self._pauses.throttled(tenant.id, self._clock.now())
            raise
        with self._lock:
            self._pauses.written(tenant.id)
        return reservation

    def settlement(self, reservation: Reservation, used_tokens: int) -> list[CounterChange]:
        """A request's settlement: nothing while its slice is open (the tokens it did not use go back into the
        slice); the slice's give-back when it is the last request of a closed slice."""
        if not isinstance(reservation, SliceShare):
            return self.enforcer.settlement(reservation, used_tokens)
        with self._lock:
            if reservation.settled:
                return []
            reservation.settled = True
            slice_ = reservation.slice
            reservation.used = max(0, min(used_tokens, reservation.tokens))
            slice_.spent += reservation.used
            slice_.outstanding -= reservation.tokens
            slice_.in_flight -= 1
            reservation.carried = self._give_back(slice_)
            return list(reservation.carried)

    def release(self, reservation: Reservation) -> None:
        """Give a whole share back to its slice, the request included (it was charged under another attempt),
        before or after its settlement (a settlement whose usage record was not written: a duplicate)."""
        if not isinstance(reservation, SliceShare):
            self.enforcer.release(reservation)
            return
        with self._lock:
            if reservation.released:
                return
            reservation.released = True
            slice_ = reservation.slice
            if not reservation.settled:
                reservation.settled = True
                slice_.outstanding -= reservation.tokens
                slice_.in_flight -= 1
                slice_.taken -= 1
                changes = self._give_back(slice_)
            elif slice_.given_back:  # the slice went back: this share's part goes alone, with what it carried
                changes = [*reservation.carried, *self._changes(slice_, reservation.used, 1)]
            else:  # the slice is still out: its give-back will count this share's part as unused
                slice_.spent -= reservation.used
                slice_.taken -= 1
                changes = []
        self._write(changes)

    def close_all(self) -> bool:
        """Close every slice (a graceful shutdown): what no request holds goes back now, the rest with the
        slices' last settlements. Whether everything due was written (else call again a little later)."""
        with self._lock:
            slices = list(self._slices.values())
            self._slices.clear()
            changes = []
            for slice_ in slices:
                slice_.closed = True
                changes += self._give_back(slice_)
        return self._write(changes, now_or_never=True)

    def guard_key(self, tenant_id: str, key_id: str) -> None:
        self.enforcer.guard_key(tenant_id, key_id)

    def guard_tenant(self, tenant_id: str, suspended_at: float) -> None:
        self.enforcer.guard_tenant(tenant_id, suspended_at)

    def unguard_tenant(self, tenant_id: str, suspended_at: float) -> None:
        self.enforcer.unguard_tenant(tenant_id, suspended_at)

    # -- the slices ---------------------------------------------------------------------------------------

    def _holds(self, slot: tuple[str, str]) -> bool:
        with self._lock:
            return slot in self._slices

    def _take(self, slot: tuple[str, str], key_id: str, tokens: int, now: float) -> SliceShare | None:
        """A share of the slot's open slice, or None (closing the slice when it can serve no more)."""
        changes: list[CounterChange] = []
        share = None
        with self._lock:
            slice_ = self._slices.get(slot)
            if slice_ is not None:
                if slice_.room(tokens, now):
                    slice_.taken += 1
                    slice_.in_flight += 1
                    slice_.outstanding += tokens
                    share = SliceShare(tokens, key_id, slice_)
                else:
                    self._resize(slot, slice_, now)
                    slice_.closed = True
                    del self._slices[slot]
                    changes = self._give_back(slice_)
        self._write(changes)
        return share

    def _draw(self, slot: tuple[str, str], tenant: Tenant, key: ApiKeyRecord, tokens: int, now: float) -> Reservation:
        """A new slice for the slot, with this request's share taken; or this request's own reservation when
        the budget cannot spare a slice (then a refusal is the enforcer's, as without slices)."""
        window = int(now // MINUTE)
        requests = self._slice_requests(slot, tenant, key, tokens)
        if self._scarce.get(tenant.id) == window:  # slices small and short-lived: they strand little
            requests = min(requests, self.policy.scarce_requests)
        if requests > 1:
            try:
                reservation = self.enforcer.reserve(tenant, key, tokens * requests, requests=requests, leased=False)
            except (QuotaExceeded, RateLimited):  # too big for what is left: this request alone may still fit
                with self._lock:
                    self._sizes[slot] = max(1, requests // 4)
                self._signal_scarce(tenant.id, window)
            else:
                scarce = self._scarce.get(tenant.id) == window
                max_age_s = self.policy.scarce_age_s if scarce else self.policy.max_age_s
                slice_ = Slice(reservation, requests, now, window, max_age_s, taken=1, in_flight=1)
                slice_.outstanding = tokens
                with self._lock:
                    self._slices[slot] = slice_
                return SliceShare(tokens, key.id, slice_)
        try:
            return self.enforcer.reserve(tenant, key, tokens)
        except (QuotaExceeded, RateLimited):
            self._signal_scarce(tenant.id, window)
            raise

    def _signal_scarce(self, tenant_id: str, window: int) -> None:
        """The budget is too short for a slice: say so on the window's own minute item, where every instance's
        guard read sees it within ``guard_read_s`` and gives back what its slices hold (once per instance and
        minute; best effort), and stop slicing here for the rest of the minute."""
        if self._scarce.get(tenant_id) == window:
            return
        self._close_tenant(tenant_id, window)
        if self.policy.guard_reads:
            with contextlib.suppress(ServiceUnavailable):  # throttled, or the store unavailable
                self._counters.add(minute_item(tenant_id, window), {SCARCE: 1}, minute_expiry(window))

    def _close_tenant(self, tenant_id: str, window: int) -> None:
        """Close a tenant's slices, what no request holds going back now; reservations one by one this minute."""
        changes: list[CounterChange] = []
        with self._lock:
            if self._scarce.get(tenant_id) == window:
                return
            if len(self._scarce) > 4096:
                self._scarce.clear()
            self._scarce[tenant_id] = window
            for slot in [slot for slot in self._slices if slot[0] == tenant_id]:
                slice_ = self._slices.pop(slot)
                slice_.closed = True
                self._sizes[slot] = max(1, self._sizes.get(slot, self.policy.first_requests) // 4)
                changes += self._give_back(slice_)
        self._write(changes)

    def _slice_requests(self, slot: tuple[str, str], tenant: Tenant, key: ApiKeyRecord, tokens: int) -> int:
        """How many requests of ``tokens`` the slot's next slice holds: its size, within ``share`` of every
        limit."""
        with self._lock:
            requests = self._sizes.get(slot, self.policy.first_requests)
        for limits in (tenant.limits, key.limits):
            for limit, per_request in (
                (limits.token_quota, tokens),
                (limits.tokens_per_minute, tokens),
                (limits.requests_per_minute, 1),
            ):
                if limit is not None:
                    requests = min(requests, int(limit * self.policy.share) // max(1, per_request))
        return max(1, requests)

    def _resize(self, slot: tuple[str, str], slice_: Slice, now: float) -> None:
        """Double a slice's successor when it ran out within half its age; halve it when it closes half unused."""
        size = self._sizes.get(slot, self.policy.first_requests)
        if slice_.taken >= slice_.requests and now - slice_.drawn_at < self.policy.max_age_s / 2:
            size = min(self.policy.max_requests, size * 2)
        elif slice_.taken * 2 < slice_.requests:
            size = max(1, size // 2)
        self._sizes[slot] = size

    def _give_back(self, slice_: Slice) -> list[CounterChange]:
        """What a closed slice holds that no request of it holds: given back as it closes, and the rest as its
        last request settles."""
        reservation = slice_.reservation
        last = slice_.in_flight == 0
        if not slice_.closed or slice_.given_back or (not last and slice_.returned_once):
            return []
        slice_.returned_once, slice_.given_back = True, last
        tokens = reservation.tokens - slice_.spent - slice_.outstanding - slice_.returned_tokens
        requests = slice_.requests - slice_.taken - slice_.returned_requests
        slice_.returned_tokens += tokens
        slice_.returned_requests += requests
        return self._changes(slice_, tokens, requests)

    def _changes(self, slice_: Slice, tokens: int, requests: int) -> list[CounterChange]:
        """The writes that give back ``tokens`` and ``requests`` of a slice (its quota part was charged outright:
        a plain give-back)."""
        reservation = slice_.reservation
        changes = []
        if reservation.minute_item is not None and reservation.minute_expires_at > self._clock.now():
            tokens_fields = set(reservation.minute_token_fields)
            back = {
                f: v * requests // slice_.requests
                for f, v in reservation.minute_release.items()
                if f not in tokens_fields
            }
            back |= dict.fromkeys(tokens_fields, -reservation.sign * tokens)
            if back := {f: v for f, v in back.items() if v}:
                changes.append(CounterChange(reservation.minute_item, back, expires_at=reservation.minute_expires_at))
        if reservation.period_item is not None and tokens:
            changes.append(
                CounterChange(
                    reservation.period_item,
                    dict.fromkeys(reservation.period_fields, -reservation.sign * tokens),
                    expires_at=reservation.period_expires_at,
                )
            )
        return changes

    def _write(self, changes: list[CounterChange], *, now_or_never: bool = False) -> bool:
        """Give-backs written alone (no usage record to ride with), with any the store throttled before: each an
        add (a slice's quota part is charged outright: no lease to settle on a condition). After the
        store throttled one, the rest wait a pause (``throttle_backoff_s``, doubled while the store keeps
        refusing) before they are tried again, with whatever came meanwhile (``now_or_never``: try at once, a
        shutdown): every request of the instance passes here, and trying on each would keep the very item that
        is throttled throttled. A give-back costs the tenant budget until written, never an overspend. Whether
        everything was written."""
        now = self._clock.now()
        with self._lock:
            if self._pauses.waiting(_GIVE_BACKS, now) and not now_or_never:
                self._unwritten += changes
                return False
            if not changes and not self._unwritten:
                return True
            changes, self._unwritten = self._unwritten + changes, []
        for i, change in enumerate(changes):
            try:
                self._counters.add(change.item, change.increments, change.expires_at)
            except ServiceUnavailable:  # throttled, or the store unavailable
                with self._lock:
                    self._unwritten += changes[i:]
                    self._pauses.throttled(_GIVE_BACKS, now)
                return False
        with self._lock:
            self._pauses.written(_GIVE_BACKS)
        return True

    def _guard_values(self, item: str, now: float) -> dict[str, int]:
        """The minute item as read at most ``guard_read_s`` ago (one read serves the instance's requests)."""
        with self._lock:
            read_at, values = self._guards.get(item, (-1.0, {}))
        if now - read_at < self.policy.guard_read_s:
            return values
        values = self._counters.read(item)
        with self._lock:
            if len(self._guards) > 4096:
                self._guards.clear()
            self._guards[item] = (now, values)
        return values

    def _drawing_lock(self, slot: tuple[str, str]) -> threading.Lock:
        with self._lock:
            return self._drawing.setdefault(slot, threading.Lock())


__all__ = ["SlicePolicy", "SliceShare", "SlicedLimits"]
