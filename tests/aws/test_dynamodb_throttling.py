"""DynamoDBStore when DynamoDB throttles or is unreachable: botocore retries, then 503, nothing half-written."""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterator
from typing import Any, cast

import pytest
from botocore.awsrequest import AWSResponse
from botocore.compat import HTTPHeaders
from pynamodb.exceptions import PynamoDBException

from adapters.aws.dynamodb import DynamoDBStore
from adapters.aws.dynamodb_table import connect
from core.domain import CounterChange, UsageRecord
from core.errors import ServiceUnavailable
from tests.aws.support import REGION
from tests.aws.test_dynamodb_store import dynamodb_store, dynamodb_url
from tests.contract.test_store_contract import T0

pytestmark = pytest.mark.aws
__all__ = ["dynamodb_url"]  # fixtures used here, defined with the store tests
FAR = T0 + 3600


class _Body:
    """The raw body of a canned HTTP response, as botocore reads it."""

    def __init__(self, data: bytes) -> None:
        self._data = data

    def stream(self, **_: Any) -> Iterator[bytes]:
        yield self._data


class _Switch:
    on = False


def throttle(
    store: DynamoDBStore,
    monkeypatch: pytest.MonkeyPatch,
    *operations: str,
    code: str = "ThrottlingException",
    times: int | None = None,
    only: bytes = b"",
    **fields: Any,
) -> Counter[str]:
    """Answer the attempts of ``operations`` with DynamoDB's ``code`` error (HTTP 400); count them.

    The answer replaces the HTTP exchange (``before-send``), so botocore's retry logic runs for real;
    its backoff is set to zero to keep the test fast. ``times`` answers only the first attempts, ``only``
    the requests whose body holds those bytes; ``fields`` go into the error body. ``monkeypatch.undo()``
    ends it.
    """
    from botocore.retries import standard

    attempts: Counter[str] = Counter()
    switch = _Switch()
    error = {"__type": f"com.amazonaws.dynamodb.v20120810#{code}", "message": "injected", **fields}
    body = json.dumps(error).encode()

    def answer(request: Any, event_name: str, **_: Any) -> AWSResponse | None:
        operation = event_name.rsplit(".", 1)[-1]
        if not switch.on or operation not in operations or only not in (request.body or b""):
            return None
        if times is not None and attempts[operation] >= times:
            return None
        attempts[operation] += 1
        headers = HTTPHeaders()
        headers["x-amzn-ErrorType"] = code
        headers["Content-Type"] = "application/x-amz-json-1.0"
        return AWSResponse(request.url, 400, headers, _Body(body))

    store.client.meta.events.register_first("before-send.dynamodb.*", cast(Any, answer))
    monkeypatch.setattr(switch, "on", True)
    monkeypatch.setattr(standard.ExponentialBackoff, "delay_amount", lambda self, context: 0.0)
    return attempts


@pytest.fixture
def store(dynamodb_url: str) -> Iterator[DynamoDBStore]:
    s = dynamodb_store(dynamodb_url, lambda: T0, max_attempts=5)
    yield s
    s.close()


def _usage(request_id: str) -> UsageRecord:
    return UsageRecord(request_id, "t1", "k1", "m", "/v1/generate", 3, 4, False, 1.0, 200, T0, 0.5)


@pytest.mark.parametrize(
    "code", ["ThrottlingException", "ProvisionedThroughputExceededException", "RequestLimitExceeded"]
)
def test_a_throttled_reservation_is_retried_then_503_and_writes_nothing(
    store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch, code: str
) -> None:
    store.try_add("w", {"n": 1}, {"n": 10}, FAR)
    attempts = throttle(store, monkeypatch, "UpdateItem", code=code)
    with pytest.raises(ServiceUnavailable) as raised:
        store.try_add_all([CounterChange("w", {"n": 1}, {"n": 10}, FAR), CounterChange("q", {"u": 1}, {}, FAR)])
    assert raised.value.status == 503
    assert raised.value.headers["retry-after"] == "1"
    assert attempts["UpdateItem"] == 5  # max_attempts, botocore's standard mode
    monkeypatch.undo()
    assert store.read("w") == {"n": 1}
    assert store.read("q") == {}


def test_a_reservation_failing_on_its_second_item_undoes_the_first(
    store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.try_add("m", {"req": 3}, {}, FAR)
    throttle(store, monkeypatch, "UpdateItem", only=b'"C#q"')
    with pytest.raises(ServiceUnavailable):
        store.try_add_all([CounterChange("m", {"req": 1}, {"req": 10}, FAR), CounterChange("q", {"u": 1}, {}, FAR)])
    monkeypatch.undo()
    assert store.read("m") == {"req": 3}
    assert store.read("q") == {}


def test_a_throttled_usage_transaction_writes_no_part_of_it(
    store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.try_add("q", {"used": 100}, {}, FAR)
    attempts = throttle(store, monkeypatch, "TransactWriteItems")
    with pytest.raises(ServiceUnavailable):
        store.record_usage(_usage("r1"), [CounterChange("q", {"used": -60}, expires_at=FAR)])
    assert attempts["TransactWriteItems"] == 5
    monkeypatch.undo()
    assert store.get_usage("t1", "r1") is None
    assert store.daily_usage("t1", "2024-01-01", "2024-12-31") == []
    assert store.read("q") == {"used": 100}
    # The retry a client makes later writes it all, once.
    assert store.record_usage(_usage("r1"), [CounterChange("q", {"used": -60}, expires_at=FAR)]) is True
    assert store.read("q") == {"used": 40}


def test_throttled_reads_are_503_too(store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch) -> None:
    throttle(store, monkeypatch, "GetItem", "Query")
    with pytest.raises(ServiceUnavailable):
        store.get_key("k1")
    with pytest.raises(ServiceUnavailable):
        store.list_tenants()


def test_an_unreachable_endpoint_is_503(dynamodb_url: str) -> None:
    store = DynamoDBStore("textnlp-test", connect("http://127.0.0.1:9", REGION, max_attempts=2))
    with pytest.raises(ServiceUnavailable):
        store.get_tenant("t1")


def test_other_errors_are_not_disguised_as_503(dynamodb_url: str) -> None:
    """A missing table is a deployment bug: it surfaces as it is (500), not as "retry later"."""
    store = DynamoDBStore("no-such-table", connect(dynamodb_url, REGION, max_attempts=1))
    with pytest.raises(PynamoDBException) as raised:
        store.get_tenant("t1")
    assert not isinstance(raised.value, ServiceUnavailable)


def test_transaction_conflicts_are_tried_again(store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch) -> None:
    """botocore does not retry conflicts with a transaction; the store does, with jitter."""
    store.try_add("q", {"used": 100}, {}, FAR)
    reasons = [{"Code": "None"}, {"Code": "None"}, {"Code": "TransactionConflict", "Message": "conflict"}]
    cancelled = throttle(
        store,
        monkeypatch,
        "TransactWriteItems",
        code="TransactionCanceledException",
        times=2,
        CancellationReasons=reasons,
    )
    assert store.record_usage(_usage("r1"), [CounterChange("q", {"used": -60}, expires_at=FAR)]) is True
    assert cancelled["TransactWriteItems"] == 2
    conflicts = throttle(store, monkeypatch, "UpdateItem", code="TransactionConflictException", times=3)
    assert store.try_add("q", {"used": 1}, {"used": 100}, FAR) == (True, {"used": 41})
    assert conflicts["UpdateItem"] == 3
    monkeypatch.undo()
    assert store.read("q") == {"used": 41}


def test_a_record_and_its_settlement_are_written_together_or_not_at_all(
    store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A throttled transaction writes neither the bill nor the settlement (a 503); sent again, both, once."""
    store.try_add("q", {"used": 100}, {}, FAR)
    settle = [CounterChange("q", {"used": -60}, expires_at=FAR)]
    attempts = throttle(store, monkeypatch, "TransactWriteItems")
    with pytest.raises(ServiceUnavailable):
        store.record_usage(_usage("r1"), settle)
    assert attempts["TransactWriteItems"] == 5
    monkeypatch.undo()
    assert store.get_usage("t1", "r1") is None
    assert store.read("q") == {"used": 100}
    assert store.record_usage(_usage("r1"), settle) is True
    assert store.record_usage(_usage("r1"), settle) is False
    assert store.read("q") == {"used": 40}


def lose_answers(store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch, operation: str, times: int) -> Counter[str]:
    """The first ``times`` ``operation`` requests reach DynamoDB and are applied, and their answers are lost (a
    read timeout), as on a network that drops a response. ``monkeypatch.undo()`` ends it."""
    import urllib.request

    from botocore.exceptions import ReadTimeoutError

    sent: Counter[str] = Counter()
    switch = _Switch()

    def apply_then_lose(request: Any, event_name: str, **_: Any) -> None:
        name = event_name.rsplit(".", 1)[-1]
        if name == operation:
            sent[name] += 1
        if not switch.on or name != operation or sent[name] > times:
            return
        headers = {k: v.decode() if isinstance(v, bytes) else v for k, v in request.headers.items()}
        forwarded = urllib.request.Request(request.url, data=request.body, headers=headers, method="POST")
        with urllib.request.urlopen(forwarded) as answered:  # applied by DynamoDB (moto)
            answered.read()
        raise ReadTimeoutError(endpoint_url=request.url)  # ... and the answer never arrives

    store.client.meta.events.register_first("before-send.dynamodb.*", cast(Any, apply_then_lose))
    monkeypatch.setattr(switch, "on", True)
    return sent


def test_an_update_whose_answer_was_lost_is_not_sent_again(
    store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    """botocore retries an attempt that timed out; an UpdateItem that ADDs would then be applied twice (a
    give-back given twice is a quota overspent). The store sends it once and answers 503: maybe applied."""
    store.try_add("q", {"used": 100}, {}, FAR)
    sent = lose_answers(store, monkeypatch, "UpdateItem", times=1)
    with pytest.raises(ServiceUnavailable) as raised:
        store.add("q", {"used": -60}, FAR)  # a settlement's give-back
    assert raised.value.status == 503
    assert sent["UpdateItem"] == 1
    monkeypatch.undo()
    assert store.read("q") == {"used": 40}  # applied once


def test_a_reservation_whose_answer_was_lost_is_refused_and_never_counted_twice(
    store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    store.try_add("w", {"n": 1}, {"n": 10}, FAR)
    sent = lose_answers(store, monkeypatch, "UpdateItem", times=1)
    with pytest.raises(ServiceUnavailable):
        store.try_add("w", {"n": 1}, {"n": 10}, FAR)
    assert sent["UpdateItem"] == 1
    monkeypatch.undo()
    assert store.read("w") == {"n": 2}  # reserved once (the caller's 503 leaves it to its lease), not twice
