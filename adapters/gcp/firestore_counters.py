"""FirestoreCounters: the counter role and the usage write's settlement, on Firestore transactions.

Core decides (``core.stores.TransactionalCounters``: ``core.counters.admits``, ``settled_increments``); this
mixin gives it its four primitives on a ``FirestoreTx``: a transaction that begins in its first read and reads
every document the call will need in that one ``BatchGetDocuments`` (each call names them before it starts), and
whose writes are held until one ``Commit``. So a conditional change over several items (a tenant's minute and
month, a shard and its window) or a usage record with its settlement is ONE transaction of two round trips, all
applied or none. A counter item is one document (``firestore_layout.counter_path``): its fields in the map ``c``
(any names: they are map keys, never field paths), its exact expiry ``x`` and, when it expires, the Timestamp
``expires_at`` the TTL policy deletes it by; a document whose ``x`` passed is absent to every read.

Each call is retried whole by ``FirestoreRpc.retried`` (contention, unavailability: jittered backoff, bounded,
then 503). Every write carries the call's token ``w``: after a commit whose answer was lost, the retry reads the
documents first and, finding its token, reports what that commit did instead of doing it twice.
"""

from __future__ import annotations

import threading
import uuid
from collections.abc import Callable, Iterable, Iterator, Mapping, Sequence
from contextlib import contextmanager
from typing import Any

from adapters.gcp.firestore_layout import counter_path
from adapters.gcp.firestore_rpc import Fields, FirestoreRpc, Refused, Retry, timestamp
from core.domain import CounterChange, UsageRecord
from core.stores import Loaded, TransactionalCounters


class _Plan(threading.local):
    """What the next transaction on this thread reads first and the token it writes (set by the calls below)."""

    prefetch: tuple[str, ...] = ()
    read_only: bool = False
    token: str = ""


class FirestoreTx:
    """One Firestore transaction: reads (the first begins it, with everything planned), writes held to commit."""

    def __init__(self, rpc: FirestoreRpc, prefetch: Sequence[str], read_only: bool, token: str) -> None:
        self.rpc = rpc
        self.prefetch = list(prefetch)
        self.read_only = read_only
        self.token = token
        self.id: bytes | None = None
        self.docs: dict[str, Fields | None] = {}
        self.writes: dict[str, Any] = {}  # path -> Write: one write per document, the last one
        self.items: dict[str, tuple[dict[str, int], float | None]] = {}  # counter items as this transaction sees them

    def get(self, path: str) -> Fields | None:
        if path not in self.docs:
            wanted = [path, *(p for p in dict.fromkeys(self.prefetch) if p not in self.docs and p != path)]
            if self.read_only:
                found, _ = self.rpc.get(wanted)
            elif self.id is None:
                found, self.id = self.rpc.get(wanted, begin=True)
            else:
                found, _ = self.rpc.get(wanted, transaction=self.id)
            for p in wanted:
                self.docs[p] = found.get(p)
        return self.docs[path]

    def write(self, path: str, pb: Any) -> None:
        if self.read_only:
            raise RuntimeError("a read-only transaction cannot write")
        self.writes[path] = pb

    def commit(self) -> None:
        if self.writes:
            try:
                self.rpc.commit(list(self.writes.values()), self.id)
            except (Retry, Refused):
                self.rollback()  # a commit that failed or went unanswered must not keep its documents locked
                raise
        elif self.id is not None:
            self.rpc.rollback(self.id)  # nothing to write (a refusal): release the documents at once

    def rollback(self) -> None:
        if self.id is not None:
            self.rpc.rollback(self.id)


def counter_fields(values: Mapping[str, int], expires_at: float | None, token: str) -> Fields:
    """A counter item's document: its fields, its exact expiry and, when it expires, the TTL Timestamp."""
    fields: Fields = {"c": dict(values), "x": expires_at, "w": token}
    if expires_at is not None:
        fields["expires_at"] = timestamp(expires_at)
    return fields


def live(doc: Fields | None, now: float) -> Loaded:
    """A counter document's fields and expiry, or None when absent or expired (``x < now``)."""
    if doc is None:
        return None
    expires_at = doc.get("x")
    if expires_at is not None and float(expires_at) < now:
        return None
    return {name: int(value) for name, value in (doc.get("c") or {}).items()}, (
        float(expires_at) if expires_at is not None else None
    )


class FirestoreCounters(TransactionalCounters[FirestoreTx]):
    """``TransactionalCounters`` on Firestore. Mixin of FirestoreStore: ``self._rpc``, ``self._clock``."""

    _rpc: FirestoreRpc
    _clock: Callable[[], float]
    _plan: _Plan
    _usage_token: Callable[[UsageRecord], str | None]  # FirestoreUsage's: the token its record was written with

    def _init_counters(self) -> None:
        self._plan = _Plan()

    # -- TransactionalCounters' primitives -------------------------------------------------------------

    @contextmanager
    def _transaction(self) -> Iterator[FirestoreTx]:
        plan = self._plan
        tx = FirestoreTx(self._rpc, plan.prefetch, plan.read_only, plan.token)
        try:
            yield tx
        except BaseException:
            tx.rollback()
            raise
        tx.commit()

    def _load_item(self, tx: FirestoreTx, item: str, now: float) -> Loaded:
        if item not in tx.items:
            loaded = live(tx.get(counter_path(item)), now)
            if loaded is None:
                return None
            tx.items[item] = (dict(loaded[0]), loaded[1])
        return tx.items[item]

    def _save_item(
        self, tx: FirestoreTx, item: str, fields: Mapping[str, int], expires_at: float | None, *, replace: bool
    ) -> None:
        values = dict(fields) if replace else {**tx.items[item][0], **fields}
        tx.items[item] = (values, expires_at)
        tx.write(counter_path(item), self._rpc.put(counter_path(item), counter_fields(values, expires_at, tx.token)))

    # -- StorePolicy's primitives: the mixin's, each one retried transaction -------------------------------

    def _try_add_counters(self, changes: Sequence[CounterChange]) -> tuple[bool, list[dict[str, int]]]:
        paths = [counter_path(change.item) for change in changes]
        token = uuid.uuid4().hex
        decide = super()._try_add_counters

        def attempt(_: int, failed: Retry | None) -> tuple[bool, list[dict[str, int]]]:
            if failed is not None and failed.ambiguous:
                applied = self._applied(paths, token)
                if applied is not None:
                    return True, [applied[path] for path in paths]
            with self._planned(paths, token):
                return decide(changes)

        return self._rpc.retried(attempt)

    def _add_counter(self, item: str, deltas: Mapping[str, int], expires_at: float | None) -> None:
        paths = [counter_path(item)]
        token = uuid.uuid4().hex
        add = super()._add_counter

        def attempt(_: int, failed: Retry | None) -> None:
            if failed is not None and failed.ambiguous and self._applied(paths, token) is not None:
                return
            with self._planned(paths, token):
                add(item, deltas, expires_at)

        self._rpc.retried(attempt)

    def _read_counter(self, item: str) -> dict[str, int]:
        read = super()._read_counter

        def attempt(_: int, __: Retry | None) -> dict[str, int]:
            with self._planned([counter_path(item)], "", read_only=True):
                return read(item)

        return self._rpc.retried(attempt)

    def _read_counters(self, items: Sequence[str]) -> list[dict[str, int]]:
        """Every item in ONE BatchGetDocuments (a read-only transaction that fetches them all at once)."""
        read = super()._read_counters

        def attempt(_: int, __: Retry | None) -> list[dict[str, int]]:
            with self._planned([counter_path(item) for item in items], "", read_only=True):
                return read(items)

        return self._rpc.retried(attempt)

    def _record_usage(self, record: UsageRecord, day: str, settle: Sequence[CounterChange]) -> bool:
        """The record (create-only), its aggregate shard and the settlement: one transaction, retried whole.

        A record that exists refuses the commit (its create's precondition): nothing is written. If it holds
        this call's token, an earlier attempt whose answer was lost wrote it, with its settlement: True."""
        paths = [counter_path(change.item) for change in settle]
        token = uuid.uuid4().hex
        write = super()._record_usage

        def attempt(_: int, __: Retry | None) -> bool:
            try:
                with self._planned(paths, token):
                    return write(record, day, settle)
            except Refused as refused:
                if refused.why != "exists":
                    raise
                return self._usage_token(record) == token

        return self._rpc.retried(attempt)

    # -- helpers ---------------------------------------------------------------------------------------

    @contextmanager
    def _planned(self, paths: Iterable[str], token: str, *, read_only: bool = False) -> Iterator[None]:
        plan = self._plan
        plan.prefetch, plan.read_only, plan.token = tuple(paths), read_only, token
        try:
            yield
        finally:
            plan.prefetch, plan.read_only, plan.token = (), False, ""

    def _applied(self, paths: Sequence[str], token: str) -> dict[str, dict[str, int]] | None:
        """After a commit whose answer was lost: the items as they are if that commit applied (a document holds
        its token: commits are atomic), else None."""
        found, _ = self._rpc.get(dict.fromkeys(paths))
        if not any(doc is not None and doc.get("w") == token for doc in found.values()):
            return None
        now = self._clock()
        return {path: dict(loaded[0]) if (loaded := live(found.get(path), now)) else {} for path in paths}
