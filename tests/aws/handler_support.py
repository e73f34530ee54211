"""The deployed shape on moto, for the Lambda handlers: resources, environment, events and a fake context.

``deploy`` creates what the CDK stack creates (the single table, the idempotency table, the versioned
bucket notifying the batch queue, the queue and its DLQ, the signing-keys and admin-key secrets) on the
atomic moto server and sets the environment the functions read. The runtime (``bootstrap.runtime``) is
built per process on first use; ``fresh_runtime`` drops it so the next invocation is a cold start.
"""

from __future__ import annotations

import base64
import copy
import json
import time
import uuid
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import pytest

from adapters.aws.dynamodb import DynamoDBStore
from adapters.aws.dynamodb_table import connect
from functions.aws import bootstrap
from functions.aws.local import stack as local_stack
from functions.aws.local.consumer import sqs_record as lambda_sqs_record
from functions.aws.local.stack import BUCKET, IDEMPOTENCY_TABLE, TABLE
from tests.aws.support import REGION, client_kwargs, post_json

EVENTS = Path(__file__).resolve().parents[2] / "events" / "aws"

ADMIN_KEY = "AdminKeyFromSecretsManager0123456789abcdefXYZ"  # what the CDK secret generator makes: 48 chars


@dataclass
class Stack:
    """The deployed resources on moto and boto3 clients for the test's own looks at them."""

    url: str
    queue_url: str
    dlq_url: str
    queue_arn: str
    signing_keys_arn: str
    admin_key_arn: str
    clients: dict[str, Any] = field(default_factory=dict)

    def client(self, service: str) -> Any:
        import boto3

        if service not in self.clients:
            self.clients[service] = boto3.client(service, **client_kwargs(self.url))  # type: ignore[call-overload]
        return self.clients[service]

    def store(self) -> DynamoDBStore:
        """A store of the test's own on the deployed table (the handlers' runtime has another)."""
        return DynamoDBStore(TABLE, connect(self.url, REGION, max_attempts=2))

    def env(self) -> dict[str, str]:
        return {
            "TEXTNLP_TABLE": TABLE,
            "TEXTNLP_BUCKET": BUCKET,
            "TEXTNLP_BATCH_QUEUE_URL": self.queue_url,
            "TEXTNLP_SIGNING_KEYS_SECRET_ARN": self.signing_keys_arn,
            "TEXTNLP_ADMIN_KEY_SECRET_ARN": self.admin_key_arn,
            "TEXTNLP_IDEMPOTENCY_TABLE": IDEMPOTENCY_TABLE,
            "TEXTNLP_AWS_ENDPOINT_URL": self.url,
            "AWS_REGION": REGION,
            "POWERTOOLS_TRACE_DISABLED": "true",
        }


def deploy(moto_url: str, url: str) -> Stack:
    """Reset moto and create the stack's resources on it, through ``url`` (the atomic server): the same
    resources as ``make serve CLOUD=aws`` makes (functions.aws.local.stack)."""
    post_json(f"{moto_url}/moto-api/reset", None)
    made = local_stack.deploy(url, ADMIN_KEY)
    return Stack(url, made.queue_url, made.dlq_url, made.queue_arn, made.signing_keys_arn, made.admin_key_arn)


def drop_runtime() -> None:
    """Forget the process's runtime (closing it): the next invocation builds a new one, a cold start."""
    if bootstrap.runtime.cache_info().currsize:
        bootstrap.runtime().close()
    bootstrap.runtime.cache_clear()


@contextmanager
def deployed(moto_url: str, url: str) -> Iterator[Stack]:
    """The stack, its environment set and a cold runtime; all undone afterwards."""
    stack = deploy(moto_url, url)
    with pytest.MonkeyPatch.context() as mp:
        for name, value in stack.env().items():
            mp.setenv(name, value)
        drop_runtime()
        try:
            yield stack
        finally:
            drop_runtime()


@contextmanager
def deployed_with_key(moto_url: str, url: str, tenant: str) -> Iterator[tuple[Stack, str]]:
    """``deployed``, plus an API key of a new tenant made through the api handler."""
    with deployed(moto_url, url) as stack:
        admin = Admin()
        yield stack, admin.key(admin.tenant(tenant))


# -- API Gateway events ----------------------------------------------------------------------------------


def api_event(
    name: str,
    *,
    key: str | None = None,
    method: str | None = None,
    path: str | None = None,
    body: Any = None,
    query: str | None = None,
    headers: dict[str, str] | None = None,
    request_id: str | None = None,
) -> dict[str, Any]:
    """``events/aws/<name>.json`` with the caller's key, and whatever else is given, filled in.

    ``body``: a str/bytes is sent as it is, anything else as JSON. No key: the Authorization header goes.
    """
    event: dict[str, Any] = copy.deepcopy(json.loads((EVENTS / f"{name}.json").read_text()))
    hdrs = event.setdefault("headers", {})
    hdrs.pop("authorization", None)
    hdrs.pop("content-length", None)
    if key is not None:
        hdrs["authorization"] = f"Bearer {key}"
    hdrs.update(headers or {})
    http = event["requestContext"]["http"]
    if method is not None:
        http["method"] = method
    if path is not None:
        event["rawPath"] = http["path"] = path
    if query is not None:
        event["rawQueryString"] = query
        event.pop("queryStringParameters", None)
    if body is not None:
        raw = body if isinstance(body, bytes | str) else json.dumps(body)
        if isinstance(raw, bytes):
            event["body"], event["isBase64Encoded"] = base64.b64encode(raw).decode(), True
        else:
            event["body"], event["isBase64Encoded"] = raw, False
    event["requestContext"]["requestId"] = request_id or f"{uuid.uuid4().hex[:15]}="
    event["requestContext"]["timeEpoch"] = int(time.time() * 1000)
    return event


@dataclass
class Result:
    """A Lambda proxy result, decoded."""

    status: int
    headers: dict[str, str]
    text: str

    @classmethod
    def of(cls, raw: dict[str, Any]) -> Result:
        body = raw.get("body") or ""
        if raw.get("isBase64Encoded"):
            body = base64.b64decode(body).decode()
        return cls(int(raw["statusCode"]), dict(raw.get("headers") or {}), body)

    def json(self) -> Any:
        return json.loads(self.text)

    def ok(self) -> Any:
        assert 200 <= self.status < 300, (self.status, self.text)
        return self.json()

    def error(self, status: int) -> dict[str, Any]:
        """The OpenAI error shape, with this status."""
        assert self.status == status, (self.status, self.text)
        assert self.headers["content-type"].startswith("application/json")
        error: dict[str, Any] = self.json()["error"]
        assert set(error) >= {"message", "type", "code", "param"}, error
        return error


def call_api(event: Any) -> Result:
    """``functions.aws.api.handler`` with the event, as Lambda calls it."""
    from functions.aws import api

    return Result.of(api.handler(event, LambdaContext()))


class Admin:
    """The admin calls a test needs, through the api handler with the bootstrap admin key."""

    def __init__(self, admin_key: str = ADMIN_KEY) -> None:
        self.admin_key = admin_key

    def post(self, path: str, body: Any) -> Any:
        return call_api(api_event("apigw_http_admin_tenants_create", key=self.admin_key, path=path, body=body)).ok()

    def put(self, path: str, body: Any) -> Any:
        event = api_event("apigw_http_admin_tenants_create", key=self.admin_key, method="PUT", path=path, body=body)
        return call_api(event).ok()

    def tenant(self, name: str, limits: dict[str, Any] | None = None) -> str:
        tenant_id: str = self.post("/admin/tenants", {"name": name})["id"]
        if limits:
            self.put(f"/admin/tenants/{tenant_id}/limits", limits)
        return tenant_id

    def key(self, tenant_id: str, scopes: tuple[str, ...] = ("generate", "embed", "batch")) -> str:
        created = self.post(f"/admin/tenants/{tenant_id}/keys", {"name": "test", "scopes": list(scopes)})
        key: str = created["key"]
        return key

    def model(self, model_id: str, backend: dict[str, Any], **fields: Any) -> dict[str, Any]:
        spec = {"id": model_id, "kind": "generation", "backend": backend, "context_length": 4096}
        spec.update({"max_output_tokens": 64, **fields})
        registered: dict[str, Any] = self.post("/admin/models", spec)
        return registered


# -- Lambda ------------------------------------------------------------------------------------------------


class LambdaContext:
    """What the handlers use of Lambda's context object: the time left, and names for the logs."""

    function_name = "textnlp-test"
    function_version = "$LATEST"
    invoked_function_arn = f"arn:aws:lambda:{REGION}:123456789012:function:textnlp-test"
    memory_limit_in_mb = 1024
    log_group_name = "/aws/lambda/textnlp-test"
    log_stream_name = "test"

    def __init__(self, remaining_ms: int = 900_000) -> None:
        self.aws_request_id = str(uuid.uuid4())
        self._deadline = time.monotonic() + remaining_ms / 1000

    def get_remaining_time_in_millis(self) -> int:
        return max(0, int((self._deadline - time.monotonic()) * 1000))


def receive(stack: Stack, *, expect: int | None = None, rounds: int = 20) -> list[dict[str, Any]]:
    """The queue's messages as Lambda's SQS event source hands them over (``Records`` entries).

    Polls without long-polling (the atomic server serves one call at a time); with ``expect``, until that
    many came or ``rounds`` empty polls passed.
    """
    sqs = stack.client("sqs")
    found: list[dict[str, Any]] = []
    empty = 0
    while empty < rounds and (expect is None or len(found) < expect):
        got = sqs.receive_message(
            QueueUrl=stack.queue_url, MaxNumberOfMessages=10, WaitTimeSeconds=0, AttributeNames=["All"]
        ).get("Messages", [])
        if not got:
            empty += 1
            if expect is None:
                break
            time.sleep(0.02)
            continue
        found.extend(as_record(stack, m) for m in got)
    return found


def as_record(stack: Stack, message: dict[str, Any]) -> dict[str, Any]:
    return lambda_sqs_record(message, stack.queue_arn, REGION)


def sqs_record(stack: Stack, body: str) -> dict[str, Any]:
    """A record carrying ``body`` that never went through the queue (a hand-made message)."""
    import hashlib

    message_id = str(uuid.uuid4())
    return as_record(
        stack,
        {
            "MessageId": message_id,
            "ReceiptHandle": f"handle-{message_id}",
            "Body": body,
            "MD5OfBody": hashlib.md5(body.encode()).hexdigest(),  # SQS's own checksum
            "Attributes": {"ApproximateReceiveCount": "1"},
        },
    )


def invoke_batch(records: list[dict[str, Any]], context: LambdaContext | None = None) -> list[str]:
    """``functions.aws.batch.handler`` on these records; the message ids it reports as failed."""
    from functions.aws import batch

    response = batch.handler({"Records": records}, context or LambdaContext())
    return [failure["itemIdentifier"] for failure in response["batchItemFailures"]]
