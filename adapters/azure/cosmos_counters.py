"""CosmosCounters: the counter role (and a usage record's settlement) as single-item conditional writes.

Cosmos DB has no transaction across logical partitions (and the emulator's transactional batch is neither atomic
nor able to patch), so this implements ``StorePolicy``'s primitives, not ``TransactionalCounters``. Each change is
ONE conditional operation on its item, decided by ``core.counters``:

* the fast path, one round trip: a patch (``incr`` each field; ``set`` the expiry ``x`` and ``ttl``) whose filter
  predicate is ``admits`` written out (``c.x >= now`` AND each limit and floor on the value before the increment,
  an absent field counting as 0). It answers the item after the write.
* refused (412: a limit, or expired; 404: absent), or more than the 10 operations a patch takes: the item is read
  and decided here, then written create-only when absent (409: created meanwhile), else replaced on the etag read
  (412); an expired item counts as absent (its fields dropped). A lost race reads again, with jittered backoff,
  a bounded number of rounds, then ``StoreThrottled``.

``try_add_all`` applies the changes one after the other in core's order (takes before gives:
``core.budget_shards``) and, when one refuses, undoes those applied (an unconditional negative ``incr``). A
concurrent reservation may see increments about to be undone and be refused for them, but no interleaving pushes
a counter past its limit. A write whose answer was lost is never sent again (``MaybeApplied``, 503): it may hold
tokens until its window ends or its lease is reclaimed (``core.leases``), never charge twice.

An item: ``v`` (fields, names through ``field_name``), ``x`` (exact expiry; ``NEVER``: none) and ``ttl`` (whole
seconds past ``x`` plus ``TTL_SLACK_S`` for clock skew; a patch that leaves ``x`` leaves ``ttl``, which Cosmos
counts from the last write, so an item is only ever deleted later than its expiry).
"""

from __future__ import annotations

import contextlib
import json
import math
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from azure.core import MatchConditions
from azure.cosmos import exceptions as cex

from adapters.azure.cosmos_layout import Key, counter_key, field_from, field_name, placed
from adapters.azure.cosmos_retry import NOT_FOUND, PRECONDITION_FAILED, CosmosCalls, Doc, pause, query, read_item
from core.counters import admits, settled_increments
from core.domain import CounterChange
from core.errors import StoreThrottled

NEVER = 253_402_300_799.0  # 9999-12-31T23:59:59Z
TTL_SLACK_S = 300
MAX_PATCH_OPS = 10
Ops = list[dict[str, Any]]
#: Given the live values and item: (values, expiry) to write, "refuse", or "skip" (nothing to write).
Plan = Callable[[dict[str, int], Doc | None], "tuple[dict[str, int], float | None] | str"]


def values_of(doc: Doc | None) -> dict[str, int]:
    return {field_from(name): int(value) for name, value in ((doc or {}).get("v") or {}).items()}


def _expiry(doc: Doc) -> float | None:
    x = float(doc.get("x", NEVER))
    return None if x >= NEVER else x


def _live(doc: Doc | None, now: float) -> Doc | None:
    return doc if doc is not None and float(doc.get("x", NEVER)) >= now else None


def ttl_for(expires_at: float | None, now: float) -> int:
    return -1 if expires_at is None else max(1, math.ceil(expires_at - now)) + TTL_SLACK_S


def _plus(values: Mapping[str, int], increments: Mapping[str, int]) -> dict[str, int]:
    return {**values, **{n: values.get(n, 0) + int(v) for n, v in increments.items()}}


def _bound(name: str, op: str, bound: int) -> str:
    """Where 0 passes, an absent field passes (``NOT IS_DEFINED``); else the bare comparison refuses it."""
    field = f"c.v[{json.dumps(field_name(name))}]"
    if bound >= 0 if op == "<=" else bound <= 0:
        return f"(NOT IS_DEFINED({field}) OR {field} {op} {bound})"
    return f"{field} {op} {bound}"


def conditions(change: CounterChange) -> str:
    """``core.counters.admits`` on the item before the write: atoms joined by AND ('' when unconditional)."""
    atoms = [_bound(n, "<=", int(limit) - int(change.increments.get(n, 0))) for n, limit in change.limits.items()]
    atoms += [_bound(n, ">=", int(floor) - int(change.increments.get(n, 0))) for n, floor in change.floors.items()]
    return " AND ".join(atoms)


def predicate(now: float, condition: str = "", *, negate: bool = False) -> str:
    """Live, and ``condition`` (or, ``negate``, not it: an atom on an absent field is ``undefined``, so a negation
    may refuse where it should apply, never the reverse; the caller then reads). A flat AND chain: the emulator
    parses nested parentheses in exponential time."""
    live = f"FROM c WHERE c.x >= {float(now)!r}"
    return f"{live} AND {f'NOT ({condition})' if negate else condition}" if condition else live


def incr_ops(increments: Mapping[str, int]) -> Ops:
    return [{"op": "incr", "path": f"/v/{field_name(n)}", "value": int(v)} for n, v in increments.items()]


class CosmosCounters:
    """Mixin of CosmosStore: ``self._counters`` (the container), ``self._calls``, ``self._clock``."""

    _counters: Any
    _calls: CosmosCalls
    _clock: Callable[[], float]

    def _try_add_counters(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        now = self._clock()
        done: list[tuple[CounterChange, dict[str, int]]] = []
        for index, change in enumerate(changes):

            def plan(seen: dict[str, int], _: Doc | None, c: CounterChange = change) -> Any:
                return (_plus(seen, c.increments), c.expires_at) if admits(c, seen) else "refuse"

            x = change.expires_at
            ops = [*incr_ops(change.increments), {"op": "set", "path": "/x", "value": NEVER if x is None else x}]
            ops.append({"op": "set", "path": "/ttl", "value": ttl_for(x, now)})
            try:
                ok, values = self._apply(change.item, ops, predicate(now, conditions(change)), now, plan)
            except BaseException:
                with contextlib.suppress(Exception):  # best effort: the error that stopped us is the news
                    self._undo([c for c, _ in done])
                raise
            if not ok:
                self._undo([c for c, _ in done])
                before = [_plus(after, {n: -v for n, v in c.increments.items()}) for c, after in done]
                return False, [*before, values, *self._read_counters([c.item for c in changes[index + 1 :]])]
            done.append((change, values))
        return True, [values for _, values in done]

    def _add_counter(self, item: str, deltas: Mapping[str, int], expires_at: float | None) -> None:
        """A live item keeps its expiry; an absent or expired one is created expiring at ``expires_at``."""

        def plan(seen: dict[str, int], live: Doc | None) -> Any:
            return _plus(seen, deltas), _expiry(live) if live is not None else expires_at

        now = self._clock()
        self._apply(item, incr_ops(deltas), predicate(now), now, plan)

    def _read_counter(self, item: str) -> dict[str, int]:
        return values_of(_live(read_item(self._calls, self._counters, *counter_key(item)), self._clock()))

    def _read_counters(self, items: Sequence[str]) -> list[dict[str, int]]:
        """Items of one tenant (a window's shards) in ONE query over its partitions; else a point read each."""
        keys = [counter_key(item) for item in items]
        tenants = {partition_key[0] for _, partition_key in keys}
        if len(keys) < 2 or len(tenants) != 1:
            return [self._read_counter(item) for item in items]
        (tenant,) = tenants
        sql = "SELECT * FROM c WHERE c.tenant = @tenant AND ARRAY_CONTAINS(@ids, c.id)"
        ids = [item_id for item_id, _ in keys]
        docs = query(self._calls, self._counters, sql, {"@tenant": tenant, "@ids": ids}, [tenant])
        found = {doc["id"]: doc for doc in docs}
        now = self._clock()
        return [values_of(_live(found.get(item_id), now)) for item_id in ids]

    def _settle(self, change: CounterChange, now: float) -> None:
        """``settled_increments``: a patch of the increments under the conditions, else one of ``otherwise`` under
        their negation; a live item keeps its expiry, an absent one is created expiring at the change's."""

        def plan(seen: dict[str, int], live: Doc | None) -> Any:
            increments = settled_increments(change, seen)
            expiry = _expiry(live) if live is not None else change.expires_at
            return (_plus(seen, increments), expiry) if increments else "skip"

        condition = conditions(change)
        otherwise = None
        if condition and change.otherwise:
            otherwise = (incr_ops(change.otherwise), predicate(now, condition, negate=True))
        self._apply(change.item, incr_ops(change.increments), predicate(now, condition), now, plan, otherwise)

    def _apply(
        self, item: str, ops: Ops, condition: str, now: float, plan: Plan, otherwise: tuple[Ops, str] | None = None
    ) -> tuple[bool, dict[str, int]]:
        """One patch (else ``otherwise``'s); refused, or too big for a patch: read, decide, write conditionally."""
        key = counter_key(item)
        current: Doc | None = None
        if ops and len(ops) <= MAX_PATCH_OPS:
            status, doc = self._patch(key, ops, condition)
            if status == PRECONDITION_FAILED and otherwise is not None and len(otherwise[0]) <= MAX_PATCH_OPS:
                status, doc = self._patch(key, *otherwise)
            if doc is not None:
                return True, values_of(doc)
            if status != NOT_FOUND:
                current = read_item(self._calls, self._counters, *key)
        else:
            current = read_item(self._calls, self._counters, *key)
        for attempt in range(self._calls.rounds):
            live = _live(current, now)
            decided = plan(values_of(live), live)
            if isinstance(decided, str):
                return decided != "refuse", values_of(live)
            values, expires_at = decided
            if live is None and expires_at is not None and expires_at < now:
                return True, values  # it would be created expired: absent to every read anyway
            body = placed(key, {"k": "n", "item": item, "v": {field_name(n): v for n, v in values.items()}})
            body.update({"x": NEVER if expires_at is None else expires_at, "ttl": ttl_for(expires_at, now)})
            try:
                self._calls.write(self._writer(key, body, current))
                return True, values
            except cex.CosmosHttpResponseError as exc:
                if exc.status_code not in (409, 412, 404):  # lost a race: read again
                    raise
            self._calls.sleep(pause(attempt))
            current = read_item(self._calls, self._counters, *key)
        raise StoreThrottled(f"the counter item {item!r} is contended; retry shortly")

    def _writer(self, key: Key, body: Doc, current: Doc | None) -> Callable[[], Any]:
        """Create-only when there is no item (409 if created meanwhile), else replace on its etag (412)."""
        if current is None:
            return lambda: self._counters.create_item(body)
        etag = current["_etag"]
        return lambda: self._counters.replace_item(
            key[0], body, etag=etag, match_condition=MatchConditions.IfNotModified
        )

    def _undo(self, done: Sequence[CounterChange]) -> None:
        """Take back applied changes, newest first: unconditional negative increments, 10 per patch at most."""
        for change in reversed(done):
            ops = incr_ops({n: -int(v) for n, v in change.increments.items() if v})
            for start in range(0, len(ops), MAX_PATCH_OPS):
                self._patch(counter_key(change.item), ops[start : start + MAX_PATCH_OPS], None)

    def _patch(self, key: Key, ops: Ops, condition: str | None) -> tuple[int, Doc | None]:
        """(200, the item after) or (404 | 412, None)."""
        patch = self._counters.patch_item
        try:
            doc: Doc = self._calls.write(
                lambda: patch(key[0], partition_key=key[1], patch_operations=ops, filter_predicate=condition)
            )
        except cex.CosmosHttpResponseError as exc:
            if exc.status_code in (NOT_FOUND, PRECONDITION_FAILED):
                return int(exc.status_code), None
            raise
        return 200, doc
