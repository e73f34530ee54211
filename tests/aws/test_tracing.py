"""The api function's Powertools Tracer: no X-Ray SDK where tracing is disabled; with tracing Active (Lambda),
the handler's subsegment and one subsegment per AWS call, botocore alone patched at once, httpx on import.

The Active case runs in a child process (X-Ray's patches are process-wide and stay), as Lambda runs it:
``LAMBDA_TASK_ROOT`` and ``_X_AMZN_TRACE_ID`` set, the deployed stack on moto, the X-Ray daemon replaced by
an emitter that keeps what would be sent.
"""

from __future__ import annotations

import asyncio
import importlib.util
import json
import os
import subprocess
import sys
import types
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
from aws_lambda_powertools import Tracer

from adapters.aws import tracing
from adapters.aws.tracing import NoOpProvider, after_import, make_tracer, tracing_disabled
from tests.aws.handler_support import Stack, api_event, deployed_with_key

pytestmark = pytest.mark.aws
ROOT = Path(__file__).resolve().parents[2]
TRACE_ID = "1-5759e988-bd862e3fe1be46a994272793"
LAMBDA_ENV = {
    "LAMBDA_TASK_ROOT": str(ROOT),
    "AWS_LAMBDA_FUNCTION_NAME": "textnlp-api",
    "_X_AMZN_TRACE_ID": f"Root={TRACE_ID};Parent=53995c3f42cd8ad8;Sampled=1",
}
TRACE_ENV = ("LAMBDA_TASK_ROOT", "POWERTOOLS_TRACE_DISABLED", "AWS_SAM_LOCAL", "AWS_CHALICE_CLI_MODE")


def child(code: str, env: dict[str, str], *args: str) -> Any:
    """Run ``code`` in a fresh interpreter at the repository root; its last stdout line, as JSON."""
    out = subprocess.run(
        [sys.executable, "-c", code, *args],
        cwd=ROOT,
        env={**{k: v for k, v in os.environ.items() if k not in TRACE_ENV}, **env},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert out.returncode == 0, out.stderr[-4000:]
    return json.loads(out.stdout.strip().splitlines()[-1])


# -- the rule, and the tracer where tracing is disabled --------------------------------------------------------


@pytest.mark.parametrize(
    ("env", "disabled"),
    [
        ({}, True),  # not in Lambda
        ({"LAMBDA_TASK_ROOT": "/var/task"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "true"}, True),
        ({"LAMBDA_TASK_ROOT": "/var/task", "POWERTOOLS_TRACE_DISABLED": "false"}, False),
        ({"LAMBDA_TASK_ROOT": "/var/task", "AWS_SAM_LOCAL": "true"}, True),
    ],
)
def test_tracing_is_disabled_by_powertools_own_rule(
    env: dict[str, str], disabled: bool, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name in TRACE_ENV:
        monkeypatch.delenv(name, raising=False)
    for name, value in env.items():
        monkeypatch.setenv(name, value)
    assert tracing_disabled() is disabled


def test_a_disabled_tracer_runs_handlers_and_methods_on_no_op_segments(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("POWERTOOLS_TRACE_DISABLED", "true")
    tracer = make_tracer("textnlp")
    assert isinstance(tracer, Tracer)
    assert isinstance(tracer.provider, NoOpProvider)
    assert tracer.disabled

    @tracer.capture_lambda_handler(capture_response=False)
    def handler(event: dict[str, Any], context: Any) -> dict[str, Any]:
        return {"echo": event["x"]}

    @tracer.capture_method
    async def method(x: int) -> int:
        tracer.put_annotation("x", str(x))
        tracer.put_metadata("x", x)
        return x + 1

    @tracer.capture_lambda_handler
    def failing(event: dict[str, Any], context: Any) -> None:
        raise KeyError("boom")

    assert handler({"x": 1}, None) == {"echo": 1}
    assert asyncio.run(method(1)) == 2
    with pytest.raises(KeyError):
        failing({}, None)


def test_importing_the_api_function_imports_neither_the_xray_sdk_nor_boto3() -> None:
    code = (
        "import json, sys\n"
        "import functions.aws.api as api\n"
        "print(json.dumps({m: m in sys.modules for m in ('aws_xray_sdk.core', 'boto3', 'httpx', 'requests')}))\n"
    )
    assert child(code, {"POWERTOOLS_TRACE_DISABLED": "true"}) == {
        "aws_xray_sdk.core": False,
        "boto3": False,
        "httpx": False,
        "requests": False,
    }


# -- after_import -------------------------------------------------------------------------------------------------


def test_after_import_runs_once_the_module_is_imported_and_then_leaves(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch, caplog: pytest.LogCaptureFixture
) -> None:
    (tmp_path / "tnlp_after_import_probe.py").write_text("VALUE = 1\n")
    (tmp_path / "tnlp_after_import_failing.py").write_text("VALUE = 2\n")
    monkeypatch.syspath_prepend(str(tmp_path))
    seen: list[tuple[str, int]] = []

    def record(module: types.ModuleType) -> None:
        seen.append((module.__name__, module.VALUE))

    def fail(module: types.ModuleType) -> None:
        raise RuntimeError("a broken hook")

    after_import("tnlp_after_import_probe", record)
    after_import("tnlp_after_import_probe", record)
    after_import("tnlp_after_import_failing", fail)
    assert seen == []  # nothing imported by registering
    assert importlib.util.find_spec("tnlp_after_import_probe") is not None  # a probe imports nothing...
    assert seen == []
    assert "tnlp_after_import_probe" not in sys.modules
    try:
        import tnlp_after_import_probe  # type: ignore[import-not-found]

        assert seen == [("tnlp_after_import_probe", 1)] * 2  # ...and leaves the hooks to the import
        import tnlp_after_import_failing  # type: ignore[import-not-found]  # the hook fails, the import does not

        assert tnlp_after_import_failing.VALUE == 2
        assert "after-import hook of tnlp_after_import_failing failed" in caplog.text
        assert tracing._FINDER not in sys.meta_path  # nothing pending: every import goes by untouched
        after_import("tnlp_after_import_probe", record)  # already imported: at once
        assert len(seen) == 3
        assert tnlp_after_import_probe.VALUE == 1
    finally:
        sys.modules.pop("tnlp_after_import_probe", None)
        sys.modules.pop("tnlp_after_import_failing", None)


# -- Lambda, tracing Active ---------------------------------------------------------------------------------------


@pytest.fixture(scope="module")
def stack_and_key(moto_url: str, atomic_moto_url: str) -> Iterator[tuple[Stack, str]]:
    with deployed_with_key(moto_url, atomic_moto_url, "traced") as made:
        yield made


ACTIVE_CHILD = """
import json, sys
from aws_xray_sdk.core import xray_recorder

sent = []

class Emitter:  # in place of the UDP emitter to the X-Ray daemon
    ip, port = "127.0.0.1", 2000
    def send_entity(self, entity):
        sent.append(json.loads(entity.serialize()))
    def set_daemon_address(self, address):
        pass

xray_recorder.configure(emitter=Emitter())
from aws_xray_sdk.core.patcher import _PATCHED_MODULES
from functions.aws import api, bootstrap

class Context:
    function_name = "textnlp-api"; memory_limit_in_mb = 1024; aws_request_id = "r1"
    invoked_function_arn = "arn:aws:lambda:us-east-1:123456789012:function:textnlp-api"
    def get_remaining_time_in_millis(self):
        return 30000

patched = sorted(_PATCHED_MODULES)
tracer_provider = type(api.tracer.provider).__module__
statuses = [api.handler(json.loads(sys.argv[1]), Context())["statusCode"] for _ in range(2)]
imported = {m: m in sys.modules for m in ("boto3", "httpx", "requests", "sqlite3")}
import httpx
patched_after_httpx = sorted(_PATCHED_MODULES)
instrumented = httpx.AsyncClient.__name__
import boto3
shared = boto3.DEFAULT_SESSION._session is bootstrap.botocore_session()
print(json.dumps({"sent": sent, "patched": patched, "provider": tracer_provider, "statuses": statuses,
                  "imported": imported, "patched_after_httpx": patched_after_httpx,
                  "instrumented": instrumented, "boto3_shares_the_session": shared}))
"""


def test_lambda_with_active_tracing_records_the_handler_and_each_aws_call(stack_and_key: tuple[Stack, str]) -> None:
    _, key = stack_and_key
    env = {**LAMBDA_ENV, "POWERTOOLS_SERVICE_NAME": "textnlp"}
    got = child(ACTIVE_CHILD, env, json.dumps(api_event("apigw_http_models_list_ok", key=key)))
    assert got["statuses"] == [200, 200]
    assert got["provider"].startswith("aws_xray_sdk")
    assert got["patched"] == ["botocore"]  # not patch_all(): no httpx, requests, sqlite3, database drivers
    assert got["imported"] == {"boto3": False, "httpx": False, "requests": False, "sqlite3": False}
    assert got["patched_after_httpx"] == ["botocore", "httpx"]
    assert got["instrumented"] == "_InstrumentedAsyncClient"
    assert got["boto3_shares_the_session"]

    sent: list[dict[str, Any]] = got["sent"]
    assert sent
    assert all(s["trace_id"] == TRACE_ID and s["type"] == "subsegment" for s in sent)
    handlers = [s for s in sent if s["name"] == "## handler"]
    assert [h["annotations"] for h in handlers] == [
        {"ColdStart": True, "Service": "textnlp"},
        {"ColdStart": False, "Service": "textnlp"},
    ]
    assert all(h["parent_id"] == "53995c3f42cd8ad8" for h in handlers)  # under Lambda's own segment
    handler_ids = {h["id"] for h in handlers}
    assert all(s["parent_id"] in handler_ids for s in sent if s not in handlers)  # AWS calls under the handler
    calls = [(s["name"], s["aws"]["operation"]) for s in sent if s.get("namespace") == "aws"]
    assert ("secretsmanager", "GetSecretValue") in calls  # the admin key, on the cold start only
    assert calls.count(("secretsmanager", "GetSecretValue")) == 1
    assert ("dynamodb", "GetItem") in calls
    # One subsegment per DynamoDB call: pynamodb goes through botocore's client (and is not patched twice).
    dynamodb = [s for s in sent if s["name"] == "dynamodb"]
    assert all(s["aws"].get("table_name") for s in dynamodb)
