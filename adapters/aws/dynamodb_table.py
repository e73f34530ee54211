"""DynamoDBTable: the calls DynamoDBStore makes on its one table, through pynamodb's Connection.

Every call goes through ``pynamodb.connection.Connection`` (its expression builders and ``dispatch``), so
attribute names always travel as ``ExpressionAttributeNames``. Two things pynamodb's convenience methods
cannot say, and which are therefore built with ``Connection.get_operation_kwargs`` and sent with
``Connection.dispatch``: ``ReturnValuesOnConditionCheckFailure=ALL_OLD`` on UpdateItem (the item a refused
conditional update saw) and the items of TransactWriteItems on a table no pynamodb Model is bound to.

Retries are botocore's "standard" mode (throttling and transient errors, exponential backoff with
jitter, ``max_attempts`` in all). What still fails is raised as ``core.errors.ServiceUnavailable`` (503):
throttling, DynamoDB's 5xx, connection errors and timeouts. Every write is one atomic call (an item, or a
transaction), so a failure leaves nothing half-written. botocore does not retry a write that met an
item a transaction holds (``TransactionConflictException``): that is retried here, with jitter.
"""

from __future__ import annotations

import contextlib
import random
import time
from collections.abc import Callable, Iterator, Sequence
from contextlib import contextmanager
from typing import Any, TypeVar

from botocore.exceptions import BotoCoreError, ClientError
from pynamodb.connection import Connection
from pynamodb.exceptions import PynamoDBException, TransactWriteError
from pynamodb.expressions.condition import Condition
from pynamodb.expressions.update import Action

from adapters.aws.dynamodb_models import GSI1, table_meta
from core.errors import ServiceUnavailable, StoreThrottled

Item = dict[str, dict[str, Any]]  # a raw item: attribute name -> typed value ({"S": "..."})
T = TypeVar("T")

CONDITION_FAILED = "ConditionalCheckFailedException"
BATCH_GET_KEYS = 100  # BatchGetItem's most keys per call
CONFLICT_ROUNDS = 8  # transaction conflicts are retried here (botocore does not), with jitter
_UNAVAILABLE = frozenset(
    {
        "ProvisionedThroughputExceededException",
        "ThrottlingException",
        "RequestLimitExceeded",
        "InternalServerError",
        "ServiceUnavailable",
        "TransactionInProgressException",
    }
)
_THROTTLED = frozenset({"ProvisionedThroughputExceededException", "ThrottlingException", "RequestLimitExceeded"})
_THROTTLED_REASONS = frozenset({"ThrottlingError", "ProvisionedThroughputExceeded", "RequestLimitExceeded"})


def connect(
    host: str | None = None,
    region: str | None = None,
    *,
    max_attempts: int = 5,
    connect_timeout_s: float = 2.0,
    read_timeout_s: float = 5.0,
) -> Connection:
    """A pynamodb Connection (one botocore client) with standard-mode retries; the client is made lazily."""
    return Connection(
        region=region,
        host=host,
        connect_timeout_seconds=connect_timeout_s,
        read_timeout_seconds=read_timeout_s,
        retry_configuration={"mode": "standard", "total_max_attempts": max_attempts},
    )


def error_code(exc: BaseException) -> str | None:
    """DynamoDB's error code behind a pynamodb or botocore exception (None for connection errors)."""
    cause = exc.cause if isinstance(exc, PynamoDBException) else exc
    if isinstance(cause, ClientError):
        code = cause.response.get("Error", {}).get("Code")
        return str(code) if code is not None else None
    return None


def old_item(exc: BaseException) -> Item | None:
    """The item a refused conditional write saw (``ALL_OLD``), or None when there was none.

    pynamodb re-raises botocore's error without the response's ``Item``; the original is its cause.
    """
    seen: BaseException | None = exc
    while seen is not None:
        if isinstance(seen, ClientError) and "Item" in seen.response:
            item: Item = seen.response["Item"]  # type: ignore[typeddict-item]
            return item
        seen = seen.__cause__ or (seen.cause if isinstance(seen, PynamoDBException) else None)
    return None


class _Conflict(Exception):
    """A single-item write met an item that a transaction is writing; it is tried again."""


class ConditionFailed(Exception):
    """A conditional write was refused; ``item`` is what it saw when ``ALL_OLD`` was asked for."""

    def __init__(self, item: Item | None = None, reasons: Sequence[str | None] = ()) -> None:
        super().__init__("conditional check failed")
        self.item = item
        self.reasons = list(reasons)


@contextmanager
def _translated() -> Iterator[None]:
    try:
        yield
    except TransactWriteError as exc:
        found = getattr(exc.cause, "cancellation_reasons", None) or []
        reasons = [r.code if r is not None else None for r in found]
        if "ConditionalCheckFailed" in reasons or "TransactionConflict" in reasons:
            raise ConditionFailed(None, reasons) from exc
        if _THROTTLED_REASONS.intersection(reasons):
            raise StoreThrottled() from exc
        _raise_unavailable(exc)
        raise
    except (PynamoDBException, ClientError, BotoCoreError) as exc:
        code = error_code(exc)
        if code == CONDITION_FAILED:
            raise ConditionFailed(old_item(exc)) from exc
        if code == "TransactionConflictException":
            raise _Conflict() from exc
        _raise_unavailable(exc)
        raise


def conflict_pause(attempt: int) -> None:
    """Exponential backoff with full jitter for transaction conflicts: up to 5, 10, 20 ... ms."""
    time.sleep(random.uniform(0, 0.005 * 2**attempt))  # noqa: S311  # nosec B311 - jitter, not a secret


def unavailable() -> ServiceUnavailable:
    return ServiceUnavailable(
        "the database is busy or unreachable; retry shortly", code="store_unavailable", headers={"retry-after": "1"}
    )


def _raise_unavailable(exc: Exception) -> None:
    code = error_code(exc)
    cause = exc.cause if isinstance(exc, PynamoDBException) else exc
    if code in _THROTTLED:
        raise StoreThrottled() from exc
    if code in _UNAVAILABLE or (code is None and isinstance(cause, BotoCoreError)):
        raise unavailable() from exc


_REFUSE_ID = "textnlp-refuse-blind-retry"


class MaybeApplied(BotoCoreError):
    """An UpdateItem whose answer was lost (a timeout, a dropped connection, a 5xx): it may have been applied."""

    fmt = "an UpdateItem got no answer and may have been applied: it is not sent again"


def _refuse_blind_retry(response: Any = None, caught_exception: Exception | None = None, **_: Any) -> None:
    """``needs-retry`` of UpdateItem, before botocore's retry handler: an attempt that got no answer is not sent
    again. An UpdateItem that ADDs is not idempotent (a budget given twice is a quota overspent), so "maybe
    applied" reaches the store as a 503: a reservation then waits for its lease, a give-back is lost, and never
    more is spent than allowed. A refusal DynamoDB answered (throttled, conditional check) applied nothing and
    is left to botocore's retries."""
    if caught_exception is not None:
        raise MaybeApplied() from caught_exception
    if response is not None and response[0].status_code >= 500:
        raise MaybeApplied()


class DynamoDBTable:
    """One table: strongly consistent reads, conditional writes, paged queries and two-item transactions."""

    def __init__(self, name: str, connection: Connection) -> None:
        self.name = name
        self.connection = connection
        self._guarded: Any = None  # the client _refuse_blind_retry is registered on (pynamodb may make another)
        with contextlib.suppress(ValueError):  # another store on this connection registered it (same shape)
            connection.add_meta_table(table_meta(name))

    def _call(self, fn: Callable[..., T], *args: Any, **kwargs: Any) -> T:
        for attempt in range(CONFLICT_ROUNDS):
            try:
                with _translated():
                    return fn(*args, **kwargs)
            except _Conflict:
                # A transaction (a usage record settling this counter) holds the item for a few ms.
                conflict_pause(attempt)
        raise unavailable()

    def get(self, pk: str, sk: str, *, consistent: bool = True) -> Item | None:
        """GetItem; strongly consistent unless ``consistent`` is False (half the read cost)."""
        data = self._call(self.connection.get_item, self.name, pk, sk, consistent_read=consistent)
        item: Item | None = data.get("Item")
        return item

    def get_many(self, keys: Sequence[tuple[str, str]], *, consistent: bool = True) -> dict[tuple[str, str], Item]:
        """BatchGetItem (100 keys a call); keys the service left unprocessed (throttled) are asked again, then
        a 503. The items found, by (pk, sk)."""
        found: dict[tuple[str, str], Item] = {}
        wanted = list(dict.fromkeys(keys))
        for start in range(0, len(wanted), BATCH_GET_KEYS):
            request = [{"pk": {"S": pk}, "sk": {"S": sk}} for pk, sk in wanted[start : start + BATCH_GET_KEYS]]
            for attempt in range(CONFLICT_ROUNDS):
                params = {"RequestItems": {self.name: {"Keys": request, "ConsistentRead": consistent}}}
                data = self._call(self.connection.dispatch, "BatchGetItem", params)
                for item in data.get("Responses", {}).get(self.name, []):
                    found[(item["pk"]["S"], item["sk"]["S"])] = item
                request = data.get("UnprocessedKeys", {}).get(self.name, {}).get("Keys", [])
                if not request:
                    break
                conflict_pause(attempt)
            else:
                raise StoreThrottled()  # keys left unprocessed round after round: the partitions' read rate
        return found

    def put(self, item: Item, condition: Condition | None = None) -> None:
        """Write a whole item (``pk`` and ``sk`` included); raises ConditionFailed when refused."""
        attributes = dict(item)
        pk, sk = attributes.pop("pk")["S"], attributes.pop("sk")["S"]
        self._call(self.connection.put_item, self.name, pk, sk, attributes=attributes, condition=condition)

    def update(
        self,
        pk: str,
        sk: str,
        actions: Sequence[Action],
        condition: Condition | None = None,
        *,
        return_values: str = "NONE",
        old_on_failure: bool = False,
    ) -> Item:
        """UpdateItem; the item as ``return_values`` asks. Raises ConditionFailed (with ALL_OLD if asked)."""
        kwargs = self.connection.get_operation_kwargs(
            self.name,
            pk,
            range_key=sk,
            actions=actions,
            condition=condition,
            return_values=return_values,
            return_values_on_condition_failure="ALL_OLD" if old_on_failure else None,
        )
        client = self.connection.client
        if client is not self._guarded:
            events = client.meta.events
            events.register_first("needs-retry.dynamodb.UpdateItem", _refuse_blind_retry, unique_id=_REFUSE_ID)
            self._guarded = client
        data = self._call(self.connection.dispatch, "UpdateItem", kwargs)
        attributes: Item = data.get("Attributes", {})
        return attributes

    def delete(self, pk: str, sk: str) -> bool:
        """Delete an item; whether it existed."""
        data = self._call(self.connection.delete_item, self.name, pk, sk, return_values="ALL_OLD")
        return bool(data.get("Attributes"))

    def query(
        self,
        pk: str,
        sk_condition: Condition | None = None,
        *,
        index: bool = False,
        limit: int | None = None,
    ) -> Iterator[Item]:
        """Items of one partition (of the table, or of gsi1 when ``index``) in sort-key order.

        Pages are fetched as they are consumed; ``limit`` caps the items asked for in all.
        """
        start: Item | None = None
        remaining = limit
        while remaining is None or remaining > 0:
            data = self._call(
                self.connection.query,
                self.name,
                pk,
                range_key_condition=sk_condition,
                consistent_read=not index,  # a GSI cannot be read consistently
                exclusive_start_key=start,
                index_name=GSI1 if index else None,
                limit=remaining,
            )
            items: list[Item] = data.get("Items", [])
            yield from items
            if remaining is not None:
                remaining -= len(items)
            start = data.get("LastEvaluatedKey")
            if not start:
                return

    def put_kwargs(self, item: Item, condition: Condition | None = None) -> dict[str, Any]:
        """A Put of a transaction."""
        attributes = dict(item)
        pk, sk = attributes.pop("pk")["S"], attributes.pop("sk")["S"]
        kwargs: dict[str, Any] = self.connection.get_operation_kwargs(
            self.name, pk, range_key=sk, key="Item", attributes=attributes, condition=condition
        )
        return kwargs

    def update_kwargs(
        self, pk: str, sk: str, actions: Sequence[Action], condition: Condition | None = None
    ) -> dict[str, Any]:
        """An Update of a transaction."""
        kwargs: dict[str, Any] = self.connection.get_operation_kwargs(
            self.name, pk, range_key=sk, actions=actions, condition=condition
        )
        return kwargs

    def delete_kwargs(self, pk: str, sk: str, condition: Condition | None = None) -> dict[str, Any]:
        """A Delete of a transaction, or with a ``condition`` a ConditionCheck (the same shape)."""
        kwargs: dict[str, Any] = self.connection.get_operation_kwargs(self.name, pk, range_key=sk, condition=condition)
        return kwargs

    def transact(
        self,
        puts: Sequence[dict[str, Any]],
        updates: Sequence[dict[str, Any]],
        token: str,
        *,
        deletes: Sequence[dict[str, Any]] = (),
        checks: Sequence[dict[str, Any]] = (),
    ) -> None:
        """TransactWriteItems: all or nothing. Raises ConditionFailed with each item's cancellation reason.

        ``token`` (ClientRequestToken, 1-36 characters, unique per call) makes botocore's own retries of
        this call idempotent: if an attempt was applied but its answer was lost (a timeout), the retry
        succeeds without applying it twice, instead of failing its conditions on what that attempt wrote.
        """
        self._call(
            self.connection.transact_write_items,
            condition_check_items=list(checks),
            delete_items=list(deletes),
            put_items=list(puts),
            update_items=list(updates),
            client_request_token=token,
        )
