"""``functions.aws.batch.handler`` end to end on moto: S3 upload -> SQS (as moto delivers it) -> the handler.

The bucket is versioned and notifies the queue like the CDK stack's; the messages the test receives
from moto's queue are handed to the handler as Lambda's SQS event source would. Lines run against a model
of type ``openai`` on the fake OpenAI server. The DynamoDB calls of the handler's runtime are observed on
its own client (``record_calls``); throttling is injected there (``throttle``) for a record that must fail.
"""

from __future__ import annotations

import json
import logging
import time
from collections import Counter
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest

from adapters.aws.dynamodb import DynamoDBStore
from bench.fake_openai_server import start_in_thread
from core.batch.records import derived_batch_id
from core.batch.runner import RunnerSettings
from functions.aws import batch, bootstrap
from tests.aws.handler_support import (
    BUCKET,
    EVENTS,
    IDEMPOTENCY_TABLE,
    Admin,
    LambdaContext,
    Stack,
    api_event,
    call_api,
    deployed,
    invoke_batch,
    receive,
    sqs_record,
)
from tests.aws.test_dynamodb_store import record_calls
from tests.aws.test_dynamodb_throttling import throttle

pytestmark = pytest.mark.aws
MODEL = "fake-chat"
SLOW_MODEL = "fake-slow"


@dataclass
class World:
    stack: Stack
    admin: Admin
    tenant: str
    key: str

    def put(self, key: str, lines: list[Any]) -> str:
        """Upload a JSONL object (dicts as JSON, strings as they are); its version id."""
        data = "".join((json.dumps(line) if not isinstance(line, str) else line) + "\n" for line in lines)
        version: str = self.stack.client("s3").put_object(Bucket=BUCKET, Key=key, Body=data.encode())["VersionId"]
        return version

    def read(self, key: str) -> list[dict[str, Any]]:
        body = self.stack.client("s3").get_object(Bucket=BUCKET, Key=key)["Body"].read().decode()
        return [json.loads(line) for line in body.splitlines() if line]

    def versions(self, prefix: str) -> list[str]:
        listed = self.stack.client("s3").list_object_versions(Bucket=BUCKET, Prefix=prefix)
        return sorted(v["VersionId"] for v in listed.get("Versions", []))

    def batch(self, batch_id: str) -> dict[str, Any]:
        event = api_event("apigw_http_models_list_ok", key=self.key, path=f"/v1/batches/{batch_id}")
        found: dict[str, Any] = call_api(event).ok()
        return found

    def usage(self, tenant: str | None = None) -> list[Any]:
        return self.stack.store().list_usage(tenant or self.tenant, 0, time.time() + 60)


@pytest.fixture(scope="module")
def world(moto_url: str, atomic_moto_url: str) -> Iterator[World]:
    fast_url, stop_fast = start_in_thread()
    slow_url, stop_slow = start_in_thread(latency_ms=100)
    try:
        with deployed(moto_url, atomic_moto_url) as stack:
            admin = Admin()
            admin.model(MODEL, {"type": "openai", "base_url": fast_url, "model": "m"})
            admin.model(SLOW_MODEL, {"type": "openai", "base_url": slow_url, "model": "m"})
            tenant = admin.tenant("data-team")
            world = World(stack, admin, tenant, admin.key(tenant, ("generate", "batch")))
            assert [json.loads(r["body"])["Event"] for r in receive(stack, expect=1)] == ["s3:TestEvent"]
            yield world
    finally:
        stop_fast()
        stop_slow()


@pytest.fixture
def runtime_store(world: World) -> DynamoDBStore:
    store = bootstrap.runtime().gateway.store
    assert isinstance(store, DynamoDBStore)
    return store


def job_message(kind: str, tenant_id: str, job_id: str) -> str:
    """A message as ``SqsJobQueue.submit`` sends it."""
    return json.dumps({"kind": kind, "tenant_id": tenant_id, "job_id": job_id})


def chat_line(custom_id: str, content: str, model: str = MODEL) -> dict[str, Any]:
    body = {"model": model, "messages": [{"role": "user", "content": content}], "max_tokens": 8}
    return {"custom_id": custom_id, "method": "POST", "url": "/v1/chat/completions", "body": body}


GOOD_AND_BAD = [
    chat_line("c1", "write about the sea"),  # 1
    {"custom_id": "c2", "method": "POST", "url": "/v1/completions", "body": {"model": MODEL, "prompt": "one two"}},
    "{this is not json",  # 3
    "",  # 4: blank, skipped
    {"custom_id": "c5", "method": "POST", "url": "/v1/nope", "body": {}},  # 5
    {"custom_id": "n6", "model": MODEL, "prompt": "a native generate line", "max_tokens": 4},  # 6
    chat_line("c7", "no such model", model="missing-model"),  # 7
]


def test_an_uploaded_file_runs_as_one_batch_and_a_redelivery_changes_nothing(
    world: World, runtime_store: DynamoDBStore
) -> None:
    key = f"batch-input/{world.tenant}/a.jsonl"
    version = world.put(key, GOOD_AND_BAD)
    [record] = receive(world.stack, expect=1)
    notification = json.loads(record["body"])["Records"][0]
    assert notification["eventName"].startswith("ObjectCreated")
    assert notification["s3"]["object"]["key"] == key.replace("/", "%2F")  # moto URL-encodes it like S3

    assert invoke_batch([record]) == []

    out = world.read(f"batch-output/{world.tenant}/a.jsonl")
    errors = world.read(f"batch-output/{world.tenant}/a.errors.jsonl")
    assert [line["line"] for line in out] == [1, 2, 3, 5, 6, 7]
    assert [line["line"] for line in errors] == [3, 5, 7]
    by_line = {line["line"]: line for line in out}
    assert [by_line[n]["custom_id"] for n in (1, 2, 5, 6, 7)] == ["c1", "c2", "c5", "n6", "c7"]
    assert by_line[1]["response"]["body"]["choices"][0]["message"]["content"] == "write about the sea"
    assert by_line[3]["error"] == {"code": "invalid_json", "message": by_line[3]["error"]["message"], "line": 3}
    assert by_line[5]["error"]["code"] == "invalid_url"
    assert by_line[7]["response"]["status_code"] == 404
    ok_usage = {n: by_line[n]["response"]["body"]["usage"] for n in (1, 2, 6)}

    batch_id = derived_batch_id(world.tenant, key, version)
    status = world.batch(batch_id)
    assert status["status"] == "completed"
    assert status["request_counts"] == {"total": 6, "completed": 3, "failed": 3}
    assert status["input_file_id"] == key

    charged = [u for u in world.usage() if u.status == 200]
    assert sorted(u.request_id for u in charged) == [f"{batch_id}:{n}" for n in (1, 2, 6)]
    assert sum(u.prompt_tokens + u.completion_tokens for u in charged) == sum(
        u["total_tokens"] for u in ok_usage.values()
    )
    idempotency = world.stack.client("dynamodb").scan(TableName=IDEMPOTENCY_TABLE)["Items"]
    assert [item["status"]["S"] for item in idempotency] == ["COMPLETED"]

    # SQS delivers at least once: the same message again. Powertools Idempotency answers it from the
    # idempotency table: the main table is not read, nothing is run, written or charged again.
    usage_before = world.usage()
    outputs_before = world.versions(f"batch-output/{world.tenant}/a")
    calls = record_calls(runtime_store)
    assert invoke_batch([record]) == []
    assert calls == []
    assert world.usage() == usage_before
    assert world.versions(f"batch-output/{world.tenant}/a") == outputs_before
    assert world.batch(batch_id)["status"] == "completed"


def test_records_that_cannot_succeed_are_reported_and_only_real_failures_are_retried(
    world: World, runtime_store: DynamoDBStore, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    stack = world.stack
    world.put(f"batch-input/{world.tenant}/good.jsonl", [chat_line("g1", "fine")])
    world.put("batch-input/ten_nobody/x.jsonl", [chat_line("x1", "whose?")])
    world.put(f"batch-input/{world.tenant}/gone.jsonl", [chat_line("d1", "deleted before it ran")])
    stack.client("s3").delete_object(Bucket=BUCKET, Key=f"batch-input/{world.tenant}/gone.jsonl")
    world.put(f"batch-input/{world.tenant}/fail.jsonl", [chat_line("f1", "the table is throttled")])
    delivered = {json.loads(r["body"])["Records"][0]["s3"]["object"]["key"]: r for r in receive(stack, expect=4)}
    assert len(delivered) == 4
    failing = delivered[f"batch-input%2F{world.tenant}%2Ffail.jsonl"]
    outside = json.loads((EVENTS / "s3_put_outside_prefix.json").read_text())
    outside["Records"][0]["s3"]["bucket"]["name"] = BUCKET
    handmade = [
        sqs_record(stack, json.dumps(outside)),  # a key outside batch-input/<tenant>/
        sqs_record(stack, "this is not json"),
        sqs_record(stack, json.dumps({"hello": "world"})),
        sqs_record(stack, job_message("fine_tune", world.tenant, "ft_1")),  # a job kind nobody runs
        sqs_record(stack, job_message("batch", world.tenant, "batch_missing")),
        sqs_record(stack, json.dumps({"kind": "batch", "job_id": "batch_x"})),  # no tenant: no batch can be found
    ]
    # The store refuses (throttles) the write that would create fail.jsonl's batch: a real, retryable failure.
    attempts = throttle(runtime_store, monkeypatch, "PutItem", only=b"fail.jsonl")

    caplog.clear()
    assert invoke_batch([*delivered.values(), *handmade]) == [failing["messageId"]]
    assert attempts["PutItem"] == 5  # botocore's standard retries, then the record failed
    reported = Counter(r.getMessage() for r in caplog.records if r.name == "textnlp" and r.levelno >= logging.WARNING)
    assert reported == {
        "batch input for a tenant that does not exist": 1,
        "batch input object is gone": 1,
        "object outside batch-input/<tenant>/<name>.jsonl ignored": 1,
        "unknown message on the batch queue": 3,
        "unknown job kind on the batch queue": 1,
        "a job message for a batch that does not exist": 1,
    }

    good = derived_batch_id(world.tenant, f"batch-input/{world.tenant}/good.jsonl", _version(world, delivered, "good"))
    assert world.batch(good)["request_counts"] == {"total": 1, "completed": 1, "failed": 0}
    assert world.usage("ten_nobody") == []
    assert world.stack.store().list_usage(None, 0, time.time() + 60) == world.usage()  # only "good" ran

    # SQS brings the failed record back; the table answers again, and it runs (its idempotency record
    # was removed when it failed, so it is not mistaken for done).
    monkeypatch.undo()
    assert invoke_batch([failing]) == []
    failed_once = derived_batch_id(
        world.tenant, f"batch-input/{world.tenant}/fail.jsonl", _version(world, delivered, "fail")
    )
    assert world.batch(failed_once)["status"] == "completed"
    assert world.read(f"batch-output/{world.tenant}/fail.jsonl")[0]["custom_id"] == "f1"


def _version(world: World, delivered: dict[str, dict[str, Any]], name: str) -> str:
    """The object's version: S3 puts it in the notification; moto does not, so then it is asked for."""
    for encoded, record in delivered.items():
        if encoded.endswith(f"%2F{name}.jsonl"):
            obj = json.loads(record["body"])["Records"][0]["s3"]["object"]
            key = encoded.replace("%2F", "/")
            return str(
                obj.get("versionId") or world.stack.client("s3").head_object(Bucket=BUCKET, Key=key)["VersionId"]
            )
    raise AssertionError(name)


def test_a_deleted_object_whose_notification_names_its_version_fails_its_batch_visibly(world: World) -> None:
    """Real S3 names the version in the notification (moto does not): the batch exists, and says why it failed."""
    key = f"batch-input/{world.tenant}/deleted.jsonl"
    version = world.put(key, [chat_line("v1", "soon gone")])
    world.stack.client("s3").delete_object(Bucket=BUCKET, Key=key)
    [record] = receive(world.stack, expect=1)
    body = json.loads(record["body"])
    body["Records"][0]["s3"]["object"]["versionId"] = version  # what S3 sends for a versioned bucket
    assert invoke_batch([sqs_record(world.stack, json.dumps(body))]) == []
    deleted = world.batch(derived_batch_id(world.tenant, key, version))
    assert deleted["status"] == "failed"
    assert deleted["errors"]["data"][0]["code"] == "input_missing"
    assert [u for u in world.usage() if u.request_id.startswith(deleted["id"])] == []


def test_a_big_file_continues_in_later_invocations_and_runs_every_line_once(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    lines = 60
    key = f"batch-input/{world.tenant}/big.jsonl"
    version = world.put(key, [chat_line(f"b{n}", f"line {n} of the big file", SLOW_MODEL) for n in range(1, lines + 1)])
    batch_id = derived_batch_id(world.tenant, key, version)
    monkeypatch.setattr(batch, "SAFETY_MARGIN_S", 0.5)  # with 1.5 s left: a 1 s budget per invocation
    # 4 lines at a time on a 100 ms backend: at most 40 lines a second, so 60 lines cannot fit in one budget.
    monkeypatch.setattr(bootstrap.runtime().gateway, "batch_settings", RunnerSettings(concurrency=4))
    records = receive(world.stack, expect=1)
    invocations = 0
    while records:
        invocations += 1
        # Each invocation must move on; how far depends on the machine (moto is slow under load).
        assert invocations <= 40, "the batch does not finish"
        assert invoke_batch(records, LambdaContext(remaining_ms=1500)) == []
        records = receive(world.stack, expect=1, rounds=3)
        if records:
            continuation = {"kind": "batch", "tenant_id": world.tenant, "job_id": batch_id}
            assert json.loads(records[0]["body"]) == continuation
    assert invocations >= 2, "the budget was large enough for the whole file: the test proves nothing"

    status = world.batch(batch_id)
    assert status["status"] == "completed"
    assert status["request_counts"] == {"total": lines, "completed": lines, "failed": 0}
    out = world.read(f"batch-output/{world.tenant}/big.jsonl")
    assert [line["line"] for line in out] == list(range(1, lines + 1))
    assert all(line["error"] is None for line in out)
    assert world.read(f"batch-output/{world.tenant}/big.errors.jsonl") == []
    # Every line was charged exactly once: calls cut short by the deadline were recorded uncharged (499)
    # and ran again under a new attempt id.
    usage = [u for u in world.usage() if u.request_id.startswith(batch_id)]
    charged = Counter(u.request_id.split(":")[1] for u in usage if u.status == 200)
    assert charged == Counter(str(n) for n in range(1, lines + 1))
    assert all(u.prompt_tokens + u.completion_tokens == 0 for u in usage if u.status != 200)
    assert sum(u.prompt_tokens + u.completion_tokens for u in usage) == sum(
        line["response"]["body"]["usage"]["total_tokens"] for line in out
    )


def test_a_continuation_for_a_batch_another_runner_holds_is_retried_later(
    world: World, runtime_store: DynamoDBStore
) -> None:
    """A lease still held (a runner elsewhere, or one that died) fails the record: SQS brings it back."""
    key = f"batch-input/{world.tenant}/leased.jsonl"
    version = world.put(key, [chat_line("l1", "held")])
    receive(world.stack, expect=1)  # its notification is not delivered here: a runner "elsewhere" has it
    from core.batch.objects import object_batch
    from core.batch.records import load_batch, update_batch

    gateway = bootstrap.runtime().gateway
    job = object_batch(
        runtime_store,
        gateway.require_blobs(),
        tenant_id=world.tenant,
        input_key=key,
        output_key=f"batch-output/{world.tenant}/leased.jsonl",
        error_key=f"batch-output/{world.tenant}/leased.errors.jsonl",
        now=time.time(),
        version=version,
    )
    assert job is not None

    def hold(j: Any) -> None:
        j.lease_owner, j.lease_until = "runner_elsewhere", time.time() + 600

    update_batch(runtime_store, job, hold)
    message = sqs_record(world.stack, job_message("batch", world.tenant, job.id))
    test_event = sqs_record(world.stack, json.dumps({"Service": "Amazon S3", "Event": "s3:TestEvent"}))
    assert invoke_batch([message, test_event]) == [message["messageId"]]
    # Named under another tenant, the batch does not exist: the message is let go, the batch is untouched.
    foreign = sqs_record(world.stack, job_message("batch", "ten_other", job.id))
    assert invoke_batch([foreign]) == []
    held = load_batch(runtime_store, world.tenant, job.id)
    assert held is not None
    assert (held.lease_owner, held.status, held.attempts) == ("runner_elsewhere", "validating", 0)

    def release(j: Any) -> None:
        j.lease_owner, j.lease_until = None, 0.0

    update_batch(runtime_store, held, release)
    assert invoke_batch([message]) == []
    assert world.batch(job.id)["status"] == "completed"


def test_an_api_batch_is_queued_on_sqs_and_run_by_the_batch_function(world: World) -> None:
    """POST /v1/batches (api function) -> SqsJobQueue -> the queue -> batch.handler -> output file via the API."""
    lines = [chat_line(f"api{n}", f"api batch line {n}") for n in range(1, 4)]
    content = "".join(json.dumps(line) + "\n" for line in lines).encode()
    boundary = "textnlpTestBoundary"
    multipart = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="purpose"\r\n\r\nbatch\r\n'
            f'--{boundary}\r\nContent-Disposition: form-data; name="file"; filename="api.jsonl"\r\n'
            "Content-Type: application/jsonl\r\n\r\n"
        ).encode()
        + content
        + f"\r\n--{boundary}--\r\n".encode()
    )
    upload = api_event(
        "apigw_http_files_upload_multipart",
        key=world.key,
        body=multipart,
        headers={"content-type": f"multipart/form-data; boundary={boundary}"},
    )
    file_id = call_api(upload).ok()["id"]
    create = api_event(
        "apigw_http_admin_tenants_create",
        key=world.key,
        path="/v1/batches",
        body={"input_file_id": file_id, "endpoint": "/v1/chat/completions", "completion_window": "24h"},
    )
    created = call_api(create).ok()
    assert created["status"] == "validating"
    [message] = receive(world.stack, expect=1)
    assert json.loads(message["body"]) == {"kind": "batch", "tenant_id": world.tenant, "job_id": created["id"]}

    assert invoke_batch([message]) == []

    done = world.batch(created["id"])
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    path = f"/v1/files/{done['output_file_id']}/content"
    output = call_api(api_event("apigw_http_models_list_ok", key=world.key, path=path))
    assert [json.loads(line)["custom_id"] for line in output.text.splitlines()] == ["api1", "api2", "api3"]


class _Killed(BaseException):
    """The end of a Lambda sandbox (timeout, out of memory): nothing in the function gets to clean up."""


def test_an_invocation_killed_mid_object_does_not_block_the_retry(
    world: World, monkeypatch: pytest.MonkeyPatch
) -> None:
    """The idempotency record left INPROGRESS by a killed invocation expires with that invocation's time,
    so SQS's retry runs the object instead of being refused as "already in progress" for days."""
    key = f"batch-input/{world.tenant}/killed.jsonl"
    version = world.put(key, [chat_line("k1", "run me after the crash")])
    [record] = receive(world.stack, expect=1)

    def killed(*args: Any, **kwargs: Any) -> None:
        raise _Killed

    monkeypatch.setattr(batch, "object_batch", killed)
    with pytest.raises(_Killed):
        invoke_batch([record], LambdaContext(remaining_ms=200))
    [left] = world.stack.client("dynamodb").scan(
        TableName=IDEMPOTENCY_TABLE,
        FilterExpression="#s = :p",
        ExpressionAttributeNames={"#s": "status"},
        ExpressionAttributeValues={":p": {"S": "INPROGRESS"}},
    )["Items"]
    assert "in_progress_expiration" in left
    monkeypatch.undo()
    time.sleep(0.3)  # the killed invocation's time is up
    assert invoke_batch([record]) == []
    assert world.batch(derived_batch_id(world.tenant, key, version))["status"] == "completed"
