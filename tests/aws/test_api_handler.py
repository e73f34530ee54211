"""``functions.aws.api.handler`` end to end on moto: the events of ``events/aws`` in, Lambda proxy results out.

The stack is the CDK one (``handler_support.deploy``): DynamoDB single table, Secrets Manager for the signing
keys and the bootstrap admin key, SageMaker endpoints seeded in moto (TGI wire format). Streams and
runtime errors, which moto lacks, come from the local SageMaker runtime server (``runtime_server``), reached
through the same ``AwsBackends`` the bootstrap builds.
"""

from __future__ import annotations

import base64
import json
import logging
import time
from collections.abc import Iterator
from dataclasses import dataclass, replace
from typing import Any

import jwt
import pytest

from adapters.aws.secrets import decode_keys
from core.errors import ServiceUnavailable
from core.observability import LOGGER_NAME
from functions.aws import api, bootstrap
from functions.aws.bootstrap import ADMIN_TENANT, SECRET_ADMIN_KEY_NAME, AwsBackends, admin_key_from_secret
from tests.aws.handler_support import (
    ADMIN_KEY,
    BUCKET,
    EVENTS,
    Admin,
    LambdaContext,
    Result,
    Stack,
    api_event,
    call_api,
    deployed,
    drop_runtime,
)
from tests.aws.runtime_server import RuntimeServer, error, stream
from tests.aws.support import REGION, seed_sagemaker_results

pytestmark = pytest.mark.aws
MODEL = "tgi-chat"
ENDPOINT = "textgen"
TGI_ROUTE = {"type": "sagemaker", "endpoint_name": ENDPOINT, "container": "tgi"}


@dataclass
class World:
    stack: Stack
    admin: Admin
    tenant: str
    key: str


@pytest.fixture(scope="module")
def world(moto_url: str, atomic_moto_url: str) -> Iterator[World]:
    with deployed(moto_url, atomic_moto_url) as stack:
        admin = Admin()
        admin.model(MODEL, TGI_ROUTE, max_retries=0)
        tenant = admin.tenant("acme")
        yield World(stack, admin, tenant, admin.key(tenant))


def today() -> str:
    return time.strftime("%Y-%m-%d", time.gmtime())


def usage_totals(key: str) -> dict[str, Any]:
    query = f"start={today()}&end={today()}&group_by=none"
    totals: dict[str, Any] = call_api(api_event("apigw_http_usage_ok", key=key, query=query)).ok()["totals"]
    return totals


def chat_body(content: str = "Describe a reusable water bottle in one sentence.", **fields: Any) -> dict[str, Any]:
    body: dict[str, Any] = json.loads(api_event("apigw_http_chat_completions_ok")["body"])
    body["model"] = MODEL
    body["messages"][-1]["content"] = content
    body.update(fields)
    return body


def tgi(text: str, generated_tokens: int, finish_reason: str = "length") -> list[dict[str, Any]]:
    """A TGI container's answer to ``invoke_endpoint`` (a list; details on, no prefill)."""
    return [{"generated_text": text, "details": {"finish_reason": finish_reason, "generated_tokens": generated_tokens}}]


@pytest.fixture
def on_runtime_server(world: World, runtime: RuntimeServer, monkeypatch: pytest.MonkeyPatch) -> RuntimeServer:
    """The container's SageMaker calls go to the local runtime server (streams, errors), via AwsBackends."""
    router = bootstrap.runtime().gateway.model_router
    monkeypatch.setattr(router, "_backends", AwsBackends(REGION, runtime.url))
    return runtime


# -- the bootstrap admin key ---------------------------------------------------------------------------------


def test_a_cold_start_imports_the_admin_key_from_its_secret_once(world: World) -> None:
    models = call_api(api_event("apigw_http_models_list_ok", key=ADMIN_KEY)).ok()
    assert MODEL in [m["id"] for m in models["data"]]
    store = world.stack.store()
    assert store.get_tenant(ADMIN_TENANT) is not None
    [imported] = [k for k in store.list_keys(ADMIN_TENANT) if k.name == SECRET_ADMIN_KEY_NAME]
    assert imported.revoked_at is None
    assert "admin" in imported.scopes
    drop_runtime()  # another container: the key is there, nothing is written again
    assert bootstrap.seed_admin_key(store, ADMIN_KEY, time.time()) is False
    assert call_api(api_event("apigw_http_models_list_ok", key=ADMIN_KEY)).status == 200
    assert [k.id for k in store.list_keys(ADMIN_TENANT)] == [imported.id]


def test_a_changed_secret_revokes_the_previous_admin_key(world: World) -> None:
    store, secrets = world.stack.store(), world.stack.client("secretsmanager")
    new_key = "ReplacedAdminKeyFromSecretsManager0123456789ab"
    [old] = store.list_keys(ADMIN_TENANT)
    secrets.put_secret_value(SecretId=world.stack.admin_key_arn, SecretString=new_key)
    try:
        drop_runtime()
        assert call_api(api_event("apigw_http_models_list_ok", key=new_key)).status == 200
        assert call_api(api_event("apigw_http_models_list_ok", key=ADMIN_KEY)).error(401)
        assert store.get_key(old.id).revoked_at is not None  # type: ignore[union-attr]
    finally:  # back to the module's admin key (a revoked key is never revived by a cold start)
        secrets.put_secret_value(SecretId=world.stack.admin_key_arn, SecretString=ADMIN_KEY)
        for record in store.list_keys(ADMIN_TENANT):
            if record.id != old.id:
                store.put_key(replace(record, revoked_at=time.time()))
        store.put_key(replace(old, revoked_at=None))
        drop_runtime()


def test_an_unusable_admin_secret_is_logged_and_the_api_still_serves(world: World) -> None:
    secrets = world.stack.client("secretsmanager")
    secrets.put_secret_value(SecretId=world.stack.admin_key_arn, SecretString="too-short")
    try:
        drop_runtime()
        assert call_api(api_event("apigw_http_models_list_ok", key=world.key)).status == 200
    finally:
        secrets.put_secret_value(SecretId=world.stack.admin_key_arn, SecretString=ADMIN_KEY)
        drop_runtime()


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        (" plainKeyOfTheCdkGenerator \n", "plainKeyOfTheCdkGenerator"),
        ('{"key": "k-in-json"}', "k-in-json"),
        ('{"api_key": "k2"}', "k2"),
        ('{"other": 1}', None),
        ("{not json", None),
        ("", None),
        (None, None),
    ],
)
def test_the_admin_secret_value_forms(value: str | None, expected: str | None) -> None:
    assert admin_key_from_secret(value) == expected


# -- the admin API, models, generation on SageMaker ------------------------------------------------------


def test_admin_creates_tenants_and_keys_and_registers_a_sagemaker_model(world: World) -> None:
    created = call_api(api_event("apigw_http_admin_tenants_create", key=ADMIN_KEY))  # {"name": "acme"}
    assert created.status == 201, created.text
    tenant = created.json()
    assert tenant["name"] == "acme"
    assert tenant["id"].startswith("ten_")
    key = world.admin.post(f"/admin/tenants/{tenant['id']}/keys", {"name": "ci", "scopes": ["generate"]})
    assert key["key"].startswith("tnlp_key_")
    assert key["tenant_id"] == tenant["id"]
    # A tenant key is no admin.
    assert call_api(api_event("apigw_http_admin_tenants_create", key=key["key"])).error(403)
    listed = call_api(api_event("apigw_http_models_list_ok", key=key["key"])).ok()
    [model] = [m for m in listed["data"] if m["id"] == MODEL]
    assert model["object"] == "model"
    one = call_api(api_event("apigw_http_models_list_ok", key=key["key"], path=f"/v1/models/{MODEL}")).ok()
    assert one["id"] == MODEL


def test_chat_completion_on_a_sagemaker_tgi_endpoint(world: World) -> None:
    seed_sagemaker_results(world.stack.url, [tgi(" A bottle that keeps water cold all day.", 9, "eos_token")])
    event = api_event("apigw_http_chat_completions_ok", key=world.key, body=chat_body())
    assert event["headers"]["x-request-id"] == "demo-chat-0001"
    result = call_api(event)
    body = result.ok()
    assert result.headers["x-request-id"] == "demo-chat-0001"  # the caller's id, echoed
    assert result.headers["content-type"].startswith("application/json")
    [choice] = body["choices"]
    assert choice["message"] == {"role": "assistant", "content": " A bottle that keeps water cold all day."}
    assert choice["finish_reason"] == "stop"
    assert body["model"] == MODEL
    usage = body["usage"]
    assert usage["completion_tokens"] == 9  # TGI's details.generated_tokens
    assert usage["prompt_tokens"] > 0  # no prefill: counted by the conservative fallback
    assert usage["total_tokens"] == usage["prompt_tokens"] + usage["completion_tokens"]


def test_completions_and_usage_add_up(world: World) -> None:
    tenant = world.admin.tenant("usage-co", {"token_quota": 1_000_000})
    key = world.admin.key(tenant)
    seed_sagemaker_results(world.stack.url, [tgi(" Rain taps the roof", 5), tgi(" Leaves", 2, "eos_token")])
    completion = json.loads(api_event("apigw_http_completions_ok")["body"]) | {"model": MODEL}
    first = call_api(api_event("apigw_http_completions_ok", key=key, body=completion)).ok()
    assert first["object"] == "text_completion"
    assert first["choices"][0]["text"] == " Rain taps the roof"
    again = call_api(api_event("apigw_http_completions_ok", key=key, body=completion)).ok()  # temperature 0: cached
    assert again["choices"][0]["text"] == first["choices"][0]["text"]
    chat = call_api(api_event("apigw_http_chat_completions_ok", key=key, body=chat_body("Name a leaf."))).ok()
    served = [first["usage"], chat["usage"]]
    totals = usage_totals(key)
    assert totals["requests"] == 3
    assert totals["cached_requests"] == 1
    assert totals["prompt_tokens"] == sum(u["prompt_tokens"] for u in served)
    assert totals["completion_tokens"] == sum(u["completion_tokens"] for u in served) == 5 + 2
    assert totals["total_tokens"] == sum(u["total_tokens"] for u in served)
    event = api_event("apigw_http_usage_ok", key=ADMIN_KEY, path="/admin/usage")
    event["rawQueryString"] = f"tenant={tenant}&start={today()}&end={today()}&group_by=none"
    assert call_api(event).ok()["totals"] == totals


def test_an_access_token_from_an_api_key_verifies_against_the_jwks(world: World) -> None:
    issued = call_api(api_event("apigw_http_auth_token_ok", key=world.key)).ok()  # scopes: ["generate"]
    assert issued["token_type"] == "Bearer"
    assert issued["expires_in"] > 0
    token = issued["access_token"]
    kid = jwt.get_unverified_header(token)["kid"]
    # The signing key went to Secrets Manager (not the table), as the stack configures it.
    # (AWSCURRENT named: moto's default version does not follow UpdateSecretVersionStage, AWS's does.)
    secrets = world.stack.client("secretsmanager")
    secret = secrets.get_secret_value(SecretId=world.stack.signing_keys_arn, VersionStage="AWSCURRENT")
    assert kid in [k.kid for k in decode_keys(secret["SecretString"])]
    assert world.stack.store().list_signing_keys() == []
    jwks = call_api(api_event("apigw_http_models_list_ok", path="/.well-known/jwks.json")).ok()  # public
    [public] = [k for k in jwks["keys"] if k["kid"] == kid]
    claims = jwt.decode(token, jwt.PyJWK(public).key, algorithms=["RS256"], options={"verify_aud": False})
    assert (claims["tid"], claims["scope"]) == (world.tenant, "generate")
    assert call_api(api_event("apigw_http_models_list_ok", key=token)).status == 200
    # The token carries only the scopes asked for: no batch scope, though the key has it.
    assert call_api(api_event("apigw_http_models_list_ok", key=token, path="/v1/batches/batch_x")).error(403)
    drop_runtime()  # a new container reads the same key from the secret and accepts the token
    assert call_api(api_event("apigw_http_models_list_ok", key=token)).status == 200


def test_a_stream_request_returns_the_collected_sse_body(world: World, on_runtime_server: RuntimeServer) -> None:
    lines = [
        "data:" + json.dumps({"index": i, "token": {"id": i, "text": t, "special": False}, "details": None})
        for i, t in enumerate(["Cold", " all", " day."])
    ]
    details = {"finish_reason": "eos_token", "generated_tokens": 4, "input_length": 21}
    lines.append("data:" + json.dumps({"token": {"id": 9, "text": "</s>", "special": True}, "details": details}))
    on_runtime_server.replies[ENDPOINT] = stream(*lines, "")
    tenant = world.admin.tenant("streamer")
    key = world.admin.key(tenant)
    body = json.loads(api_event("apigw_http_chat_completions_stream")["body"]) | {"model": MODEL}
    result = call_api(api_event("apigw_http_chat_completions_stream", key=key, body=body))
    assert result.status == 200, result.text
    assert result.headers["content-type"] == "text/event-stream"
    events = [line.removeprefix("data: ") for line in result.text.split("\n\n") if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    text = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert text == "Cold all day."
    usage = chunks[-1]["usage"]  # stream_options.include_usage
    assert (usage["prompt_tokens"], usage["completion_tokens"]) == (21, 4)
    assert on_runtime_server.requests[-1].path == f"/endpoints/{ENDPOINT}/invocations-response-stream"
    totals = usage_totals(key)  # metered from the stream's final details, like a plain call
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (21, 4)


def test_a_multipart_upload_arrives_base64_and_its_content_goes_back_base64(world: World) -> None:
    """API Gateway base64-encodes binary bodies both ways; the file lands in the bucket (S3 on moto)."""
    uploaded = call_api(api_event("apigw_http_files_upload_multipart", key=world.key)).ok()  # the sample's body
    assert (uploaded["object"], uploaded["purpose"], uploaded["filename"]) == ("file", "batch", "prompts.jsonl")
    path = f"/v1/files/{uploaded['id']}/content"
    raw = api.handler(api_event("apigw_http_models_list_ok", key=world.key, path=path), LambdaContext())
    assert raw["isBase64Encoded"] is True  # application/octet-stream
    content = base64.b64decode(raw["body"])
    assert json.loads(content.splitlines()[0])["custom_id"] == "1"
    listed = world.stack.client("s3").list_objects_v2(Bucket=BUCKET, Prefix=f"files/{world.tenant}/")
    assert [o["Size"] for o in listed["Contents"]] == [len(content)]


def test_a_cold_start_makes_no_s3_or_sqs_client_until_one_is_needed(world: World) -> None:
    drop_runtime()
    assert call_api(api_event("apigw_http_models_list_ok", key=world.key)).status == 200
    gateway = bootstrap.runtime().gateway
    s3: Any = gateway.require_blobs().client  # type: ignore[attr-defined]
    sqs: Any = gateway.jobs._client  # type: ignore[attr-defined]
    assert (s3.made, sqs.made) == (False, False)
    assert call_api(api_event("apigw_http_models_list_ok", key=world.key, path="/v1/files/file-nope")).error(404)
    assert (s3.made, sqs.made) == (False, False)  # a metadata lookup is a DynamoDB read
    # One botocore session for the container: the table's pynamodb connection uses boto3's.
    import boto3

    assert gateway.store.connection.session is bootstrap.botocore_session()  # type: ignore[attr-defined]
    assert boto3.DEFAULT_SESSION._session is bootstrap.botocore_session()  # type: ignore[union-attr]


def test_without_a_queue_batches_are_refused_not_run_on_a_frozen_loop(world: World) -> None:
    settings = replace(bootstrap.AwsSettings.from_env(), batch_queue_url=None, admin_key_secret=None)
    rt = bootstrap.build_runtime(settings)
    try:
        with pytest.raises(ServiceUnavailable) as refused:
            rt.gateway.jobs.submit("batch", "ten_x", "batch_x")
        assert refused.value.code == "no_job_queue"
    finally:
        rt.close()


# -- errors ---------------------------------------------------------------------------------------------------


def test_bad_json_is_400_in_the_error_shape(world: World) -> None:
    result = call_api(api_event("apigw_http_chat_completions_bad_json", key=world.key))
    error = result.error(400)
    assert error["code"] == "invalid_json"
    assert error["type"] == "invalid_request_error"
    assert result.headers["x-request-id"]


def test_an_unknown_route_is_404(world: World) -> None:
    assert call_api(api_event("apigw_http_unknown_route_not_found", key=world.key)).error(404)


def test_no_credentials_is_401(world: World) -> None:
    assert call_api(api_event("apigw_http_models_list_ok")).error(401)
    assert call_api(api_event("apigw_http_models_list_ok", key="tnlp_key_0000_nope")).error(401)


def _event_with(**changes: Any) -> dict[str, Any]:
    event = api_event("apigw_http_models_list_ok", key=ADMIN_KEY)
    event.update(changes)
    return event


S3_EVENT = json.loads((EVENTS / "s3_put_batch_input.json").read_text())


@pytest.mark.parametrize(
    "event",
    [
        pytest.param({}, id="empty"),
        pytest.param(None, id="null"),
        pytest.param([1, 2], id="a-list"),
        pytest.param("GET /v1/models", id="a-string"),
        pytest.param(S3_EVENT, id="an-s3-event"),
        pytest.param({"requestContext": {"http": {"method": "GET"}}}, id="no-path"),
        pytest.param({"requestContext": "x", "rawPath": "/v1/models"}, id="context-not-an-object"),
        pytest.param(_event_with(headers=["authorization"]), id="headers-a-list"),
        pytest.param(_event_with(body={"a": 1}), id="body-an-object"),
        pytest.param(_event_with(body="%%% not base64", isBase64Encoded=True), id="bad-base64"),
        pytest.param(_event_with(rawQueryString=7), id="query-not-a-string"),
        pytest.param(_event_with(rawPath="v1/models"), id="relative-path"),
    ],
)
def test_malformed_and_foreign_events_are_400_not_500(world: World, event: Any) -> None:
    result = call_api(event)
    error = result.error(400)
    assert error["code"] == "bad_event"
    assert result.headers["x-request-id"]


def test_an_oversized_body_is_413_and_charges_nothing(world: World) -> None:
    tenant = world.admin.tenant("big")
    key = world.admin.key(tenant)
    body = chat_body("x" * 1_100_000)
    result = call_api(api_event("apigw_http_chat_completions_ok", key=key, body=body))
    assert result.error(413)["type"]
    assert usage_totals(key)["requests"] == 0


def test_a_missing_sagemaker_endpoint_is_502_and_charges_nothing(
    world: World, on_runtime_server: RuntimeServer
) -> None:
    """The runtime answers ValidationError for an endpoint that does not exist, as AWS does."""
    tenant = world.admin.tenant("unlucky", {"token_quota": 100_000})
    key = world.admin.key(tenant)
    world.admin.model("gone", {**TGI_ROUTE, "endpoint_name": "no-such-endpoint"}, max_retries=0)
    result = call_api(api_event("apigw_http_chat_completions_ok", key=key, body=chat_body() | {"model": "gone"}))
    error = result.error(502)
    assert error["code"] == "backend_misconfigured"
    assert result.headers["x-request-id"] == "demo-chat-0001"
    assert len(on_runtime_server.requests) == 1
    totals = usage_totals(key)
    assert (totals["prompt_tokens"], totals["completion_tokens"]) == (0, 0)
    [record] = world.stack.store().list_usage(tenant, 0, time.time() + 60)
    assert (record.status, record.prompt_tokens, record.completion_tokens) == (502, 0, 0)


def test_a_failing_endpoint_is_called_once_per_gateway_attempt(world: World, on_runtime_server: RuntimeServer) -> None:
    """botocore does not retry on top of core's router (the bootstrap's client has one attempt)."""
    on_runtime_server.replies["flaky"] = error(503, "ServiceUnavailable", message="busy")
    world.admin.model("flaky", {**TGI_ROUTE, "endpoint_name": "flaky"}, max_retries=1)
    result = call_api(api_event("apigw_http_chat_completions_ok", key=world.key, body=chat_body() | {"model": "flaky"}))
    assert result.error(502)["code"]
    assert len(on_runtime_server.requests) == 2  # the gateway's first attempt and its one retry


def test_an_unreadable_sagemaker_answer_is_502(world: World) -> None:
    """moto answers ``b"body"`` when nothing is seeded: not what a TGI container sends."""
    tenant = world.admin.tenant("garbled")
    key = world.admin.key(tenant)
    body = chat_body("A request nothing was seeded for.")
    result = call_api(api_event("apigw_http_chat_completions_ok", key=key, body=body))
    assert result.error(502)["code"] == "backend_bad_response"
    assert usage_totals(key)["total_tokens"] == 0


# -- request ids and the request log --------------------------------------------------------------------------


def test_api_gateways_request_id_is_the_request_id_and_is_logged(
    world: World, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, logger=LOGGER_NAME)  # core logs through the Powertools logger, "textnlp"
    event = api_event("apigw_http_models_list_ok", key=world.key, request_id="Vx9kAhKzoAMEbAa=")
    result = call_api(event)
    assert result.status == 200
    assert result.headers["x-request-id"] == "Vx9kAhKzoAMEbAa="  # API Gateway's own id, padding and all
    [request_log] = [r for r in caplog.records if r.getMessage() == "request"]
    fields = request_log.fields  # type: ignore[attr-defined]
    assert fields["request_id"] == "Vx9kAhKzoAMEbAa="
    assert (fields["tenant_id"], fields["status"]) == (world.tenant, 200)
    assert world.key not in json.dumps(fields)
    assert api.logger.get_correlation_id() == "Vx9kAhKzoAMEbAa="  # set before core logged anything


def test_an_insane_caller_request_id_is_replaced_by_api_gateways(world: World) -> None:
    event = api_event(
        "apigw_http_models_list_ok", key=world.key, headers={"x-request-id": "bad id\nwith newline"}, request_id="Ab1="
    )
    result = call_api(event)
    assert result.status == 200
    assert result.headers["x-request-id"] == "Ab1="


def test_results_are_lambda_proxy_results(world: World) -> None:
    raw = api.handler(api_event("apigw_http_models_list_ok", key=world.key), LambdaContext())
    assert set(raw) == {"statusCode", "headers", "body", "isBase64Encoded"}
    assert raw["isBase64Encoded"] is False
    assert isinstance(raw["body"], str)
    assert Result.of(raw).json()["object"] == "list"
