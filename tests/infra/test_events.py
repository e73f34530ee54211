"""events/aws fixtures: well-formed API Gateway HTTP API 2.0, S3 and SQS events, named by convention."""

from __future__ import annotations

import base64
import json
import re
from pathlib import Path
from typing import Any
from urllib.parse import unquote_plus

import pytest

from tests.infra.conftest import ROOT

EVENTS = ROOT / "events" / "aws"
NAME = re.compile(r"^(apigw_http|s3_put|sqs_s3)_[a-z0-9]+(_[a-z0-9]+)*\.json$")
HTTP = sorted(EVENTS.glob("apigw_http_*.json"))
# The notification filter of the bucket (cdk/textnlp_cdk/batch.py, template.yaml).
PREFIX, SUFFIX = "batch-input/", ".jsonl"


def load(name: str) -> dict[str, Any]:
    data: dict[str, Any] = json.loads((EVENTS / name).read_text())
    return data


def body_bytes(event: dict[str, Any]) -> bytes:
    body = event.get("body")
    if body is None:
        return b""
    return base64.b64decode(body) if event["isBase64Encoded"] else body.encode()


def test_names_follow_the_convention() -> None:
    names = [p.name for p in EVENTS.glob("*.json")]
    assert names
    assert [n for n in names if not NAME.match(n)] == []


def test_the_main_routes_are_covered() -> None:
    routes = {(load(p.name)["requestContext"]["http"]["method"], load(p.name)["rawPath"]) for p in HTTP}
    assert routes >= {
        ("GET", "/v1/models"),
        ("POST", "/v1/chat/completions"),
        ("POST", "/v1/completions"),
        ("POST", "/v1/embeddings"),
        ("POST", "/v1/generate"),
        ("POST", "/auth/token"),
        ("POST", "/admin/tenants"),
        ("GET", "/v1/usage"),
    }
    stream = load("apigw_http_chat_completions_stream.json")
    assert json.loads(body_bytes(stream))["stream"] is True


@pytest.mark.parametrize("path", HTTP, ids=lambda p: p.stem)
def test_http_api_events(path: Path) -> None:
    event = load(path.name)
    assert event["version"] == "2.0"
    assert event["routeKey"] == "$default"
    context = event["requestContext"]
    assert context["routeKey"] == "$default"
    assert context["stage"] == "$default"
    assert context["http"]["path"] == event["rawPath"]
    assert all(name == name.lower() for name in event["headers"]), "HTTP APIs lower-case header names"
    assert isinstance(event["isBase64Encoded"], bool)
    assert event["rawQueryString"] == "" or "queryStringParameters" in event
    body = body_bytes(event)
    if body:
        assert int(event["headers"]["content-length"]) == len(body)
    if event["headers"].get("content-type") == "application/json" and "bad_json" not in path.stem:
        json.loads(body)


def test_bad_json_is_really_malformed() -> None:
    event = load("apigw_http_chat_completions_bad_json.json")
    with pytest.raises(json.JSONDecodeError):
        json.loads(body_bytes(event))


def test_unknown_route_event() -> None:
    assert load("apigw_http_unknown_route_not_found.json")["rawPath"] not in {
        load(p.name)["rawPath"] for p in HTTP if "unknown" not in p.name
    }


def s3_key(record: dict[str, Any]) -> str:
    """What a handler must do: S3 URL-encodes keys in notifications like a form value."""
    return unquote_plus(record["s3"]["object"]["key"])


def test_s3_upload_event_is_url_encoded_and_versioned() -> None:
    (record,) = load("s3_put_batch_input.json")["Records"]
    raw = record["s3"]["object"]["key"]
    assert "+" in raw, "keep a key that needs decoding (a space)"
    assert "%28" in raw, "keep a key that needs decoding (a parenthesis)"
    key = s3_key(record)
    assert key.startswith(PREFIX)
    assert key.endswith(SUFFIX)
    assert key.endswith("/nov prompts (v2).jsonl")
    assert record["eventName"].startswith("ObjectCreated:")
    assert record["s3"]["object"]["versionId"], "the object version identifies the batch input"


def test_sqs_event_wraps_the_s3_notification() -> None:
    (message,) = load("sqs_s3_batch_input.json")["Records"]
    assert message["eventSource"] == "aws:sqs"
    assert json.loads(message["body"]) == load("s3_put_batch_input.json")


def test_sqs_test_event_has_no_records() -> None:
    (message,) = load("sqs_s3_test_event.json")["Records"]
    body = json.loads(message["body"])
    assert body["Event"] == "s3:TestEvent"
    assert "Records" not in body


def test_outside_prefix_event_does_not_match_the_filter() -> None:
    (record,) = load("s3_put_outside_prefix.json")["Records"]
    key = s3_key(record)
    assert not (key.startswith(PREFIX) and key.endswith(SUFFIX))
