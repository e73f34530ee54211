"""What a cold start of the api function makes: the clients its first request needs, nothing else.

A first GET /v1/models makes the table's client and the Secrets Manager client (the admin-key secret is read
on every cold start), on one botocore session, without importing boto3; boto3, once something imports it,
uses that session. Without the admin-key secret, the signing-keys secret's client waits for a token.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from bench.aws_cold_start import FLOOR_CLIENTS
from functions.aws import api
from functions.aws.bootstrap import AwsSettings, LazyClient, build_runtime
from tests.aws.handler_support import TABLE, Result, Stack, api_event, deployed_with_key
from tests.aws.support import REGION

pytestmark = pytest.mark.aws
ROOT = Path(__file__).resolve().parents[2]


@pytest.fixture(scope="module")
def stack_and_key(moto_url: str, atomic_moto_url: str) -> Iterator[tuple[Stack, str]]:
    with deployed_with_key(moto_url, atomic_moto_url, "cold") as made:
        yield made


FIRST_REQUEST = """
import json, sys
import botocore.session

made = []
create = botocore.session.Session.create_client

def recording(self, service_name, *args, **kwargs):
    made.append((service_name, id(self)))
    return create(self, service_name, *args, **kwargs)

botocore.session.Session.create_client = recording
from functions.aws import api, bootstrap

class Context:
    function_name = "textnlp-api"; memory_limit_in_mb = 1024; aws_request_id = "r1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:textnlp-api"
    def get_remaining_time_in_millis(self):
        return 30000

status = api.handler(json.loads(sys.argv[1]), Context())["statusCode"]
first = {"clients": sorted(s for s, _ in made), "boto3": "boto3" in sys.modules}
import boto3
shared = boto3.DEFAULT_SESSION._session is bootstrap.botocore_session()
bootstrap.runtime().gateway.require_blobs().client.list_objects_v2(Bucket=bootstrap.runtime().settings.bucket)
sessions = {session for _, session in made}
print(json.dumps({"status": status, **first, "shared": shared, "later": sorted(s for s, _ in made),
                  "one_session": sessions == {id(bootstrap.botocore_session())}}))
"""


def test_a_first_request_makes_its_two_clients_on_one_session_without_boto3(stack_and_key: tuple[Stack, str]) -> None:
    _, key = stack_and_key
    env = {k: v for k, v in os.environ.items() if k not in ("LAMBDA_TASK_ROOT", "POWERTOOLS_TRACE_DISABLED")}
    out = subprocess.run(
        [sys.executable, "-c", FIRST_REQUEST, json.dumps(api_event("apigw_http_models_list_ok", key=key))],
        cwd=ROOT,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    got = json.loads(out.stdout.strip().splitlines()[-1])
    assert got["status"] == 200
    assert got["clients"] == sorted(FLOOR_CLIENTS)  # what the benchmark's floor makes
    assert got["boto3"] is False
    assert got["shared"] is True  # boto3 imported afterwards: its default session is the container's
    assert got["later"] == ["dynamodb", "s3", "secretsmanager"]  # S3 on first use
    assert got["one_session"] is True


def test_without_the_admin_secret_the_secrets_client_waits_for_the_first_token(
    stack_and_key: tuple[Stack, str],
) -> None:
    stack, key = stack_and_key
    settings = AwsSettings(
        table=TABLE, signing_keys_secret=stack.signing_keys_arn, region=REGION, endpoint_url=stack.url
    )
    rt = build_runtime(settings)
    try:
        signing_keys: Any = rt.gateway.tokens._store
        lazy = signing_keys._given
        assert isinstance(lazy, LazyClient)
        assert not lazy.made
        assert Result.of(api.handle(rt, api_event("apigw_http_models_list_ok", key=key))).status == 200
        assert not lazy.made
        issued = Result.of(api.handle(rt, api_event("apigw_http_auth_token_ok", key=key))).ok()
        assert issued["token_type"] == "Bearer"
        assert lazy.made
    finally:
        rt.close()
