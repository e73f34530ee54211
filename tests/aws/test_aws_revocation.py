"""Revocation on DynamoDB: four warm "containers" refuse a revoked key, its tokens and a suspended tenant at once.

Each container is a runtime of its own (``bootstrap.build_runtime``: its own client and L1 caches) that
has just served the key, so its cached records say "active" for seconds more. The refusal comes from the
guard the revocation wrote into the tenant's counters item, which the next reservation's one conditional
UpdateItem checks: no store call is added, and the other containers need no message.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from bench.fake_openai_server import start_in_thread
from functions.aws import api
from functions.aws.bootstrap import AwsSettings, Runtime, build_runtime
from tests.aws.handler_support import Admin, Result, api_event, call_api, deployed

pytestmark = pytest.mark.aws
CONTAINERS = 4
MODEL = "fake-r"


@pytest.fixture(scope="module")
def containers(moto_url: str) -> Iterator[tuple[Admin, list[Runtime]]]:
    base_url, stop = start_in_thread()
    try:
        with deployed(moto_url, moto_url):
            admin = Admin()
            admin.model(MODEL, {"type": "openai", "base_url": base_url, "model": "m"})
            runtimes = [build_runtime(AwsSettings.from_env()) for _ in range(CONTAINERS)]
            try:
                yield admin, runtimes
            finally:
                for rt in runtimes:
                    rt.close()
    finally:
        stop()


def chat(rt: Runtime, credential: str) -> Result:
    body: dict[str, Any] = {"model": MODEL, "messages": [{"role": "user", "content": "a b c"}], "max_tokens": 8}
    return Result.of(api.handle(rt, api_event("apigw_http_chat_completions_ok", key=credential, body=body)))


def token_for(rt: Runtime, key: str) -> str:
    event = api_event("apigw_http_admin_tenants_create", key=key, path="/auth/token", body={})
    return str(Result.of(api.handle(rt, event)).ok()["access_token"])


def admin_call(admin: Admin, method: str, path: str) -> Any:
    return call_api(api_event("apigw_http_admin_tenants_create", key=admin.admin_key, method=method, path=path)).ok()


def test_a_revoked_key_and_its_token_are_refused_at_once_by_every_container(
    containers: tuple[Admin, list[Runtime]],
) -> None:
    admin, runtimes = containers
    tenant = admin.tenant("revoke-everywhere")
    key = admin.key(tenant)
    token = token_for(runtimes[0], key)
    for rt in runtimes:
        assert chat(rt, key).status == 200
        assert chat(rt, token).status == 200

    admin_call(admin, "DELETE", f"/admin/keys/key_{key.split('_')[2]}")

    for rt in runtimes:
        for credential in (key, token):
            assert chat(rt, credential).error(401)["code"] == "key_revoked"


def test_a_suspended_tenant_is_refused_at_once_by_every_container(containers: tuple[Admin, list[Runtime]]) -> None:
    admin, runtimes = containers
    tenant = admin.tenant("suspend-everywhere", {"token_quota": 10_000})
    keys = [admin.key(tenant), admin.key(tenant)]
    for rt in runtimes:
        for key in keys:
            assert chat(rt, key).status == 200

    suspended = call_api(
        api_event("apigw_http_admin_tenants_create", key=admin.admin_key, path=f"/admin/tenants/{tenant}/suspend")
    ).ok()
    assert suspended["suspended_at"] is not None

    for rt in runtimes:
        for key in keys:
            assert chat(rt, key).error(403)["code"] == "tenant_suspended"
