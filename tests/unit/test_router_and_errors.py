"""Routing of requests to handlers, the error shape, request ids and what reaches the logs."""

from __future__ import annotations

import asyncio
import json
import logging
from dataclasses import replace
from typing import Any

import pytest

from core import errors
from core.app import Gateway, RequestContext
from core.http import Request, Response
from core.observability import JsonFormatter
from core.routes import Router
from tests.fakes import GEN, Harness, error_of, json_of

# -- the router ----------------------------------------------------------------------------------------


async def ok(ctx: RequestContext) -> Response:
    return Response.json({"route": ctx.route.path, "params": ctx.request.path_params})


def small_router() -> Router:
    router = Router()
    for method, path in [
        ("GET", "/things"),
        ("POST", "/things"),
        ("GET", "/things/{thing_id}"),
        ("DELETE", "/things/{thing_id}"),
        ("GET", "/things/{thing_id}/parts/{part_id}"),
    ]:
        router.route(method, path, scope=None, summary="x", public=True)(ok)
    return router


def test_static_and_templated_paths_match() -> None:
    router = small_router()
    assert router.match(Request("GET", "/things")).path == "/things"
    assert router.match(Request("POST", "/things/")).path == "/things"  # a trailing slash is tolerated
    req = Request("GET", "/things/t1/parts/p9")
    assert router.match(req).path == "/things/{thing_id}/parts/{part_id}"
    assert req.path_params == {"thing_id": "t1", "part_id": "p9"}


def test_path_parameters_do_not_cross_slashes() -> None:
    with pytest.raises(errors.NotFound):
        small_router().match(Request("GET", "/things/a/b"))


def test_a_path_parameter_may_span_slashes_when_declared_so() -> None:
    router = Router()
    router.route("GET", "/models/{model_id:path}", scope=None, summary="x", public=True)(ok)
    router.route("GET", "/models/{model_id}/card", scope=None, summary="x", public=True)(ok)
    req = Request("GET", "/models/org/name-1.5")
    route = router.match(req)
    assert req.path_params == {"model_id": "org/name-1.5"}
    assert route.template == "/models/{model_id}"
    with pytest.raises(errors.NotFound):
        router.match(Request("GET", "/models/"))


def test_models_with_a_slash_in_their_id_are_reachable(harness: Harness) -> None:
    harness.add_model(replace(GEN, id="org/model-7b"))
    assert json_of(harness.call("GET", "/v1/models/org/model-7b"))["id"] == "org/model-7b"
    resp = harness.call("DELETE", "/admin/models/org/model-7b", key=harness.admin_key)
    assert json_of(resp) == {"id": "org/model-7b", "object": "model", "deleted": True}
    assert harness.call("GET", "/v1/models/org/model-7b").status == 404


def test_unknown_path_is_404_and_wrong_method_is_405_with_allow() -> None:
    router = small_router()
    with pytest.raises(errors.NotFound) as nf:
        router.match(Request("GET", "/nothing"))
    assert nf.value.code == "unknown_route"
    with pytest.raises(errors.MethodNotAllowed) as na:
        router.match(Request("PUT", "/things/t1"))
    assert na.value.status == 405
    assert na.value.headers == {"allow": "DELETE, GET"}


def custom_gateway(h: Harness, router: Router) -> Gateway:
    assert h.resolver is not None
    return Gateway(h.store, h.resolver, clock=h.clock, router=router)


def test_an_unexpected_exception_becomes_a_generic_500(harness: Harness) -> None:
    router = Router()

    @router.route("GET", "/boom", scope=None, summary="boom", public=True)
    async def boom(ctx: RequestContext) -> Response:
        raise RuntimeError("password=hunter2 leaked in a message")

    resp = asyncio.run(custom_gateway(harness, router).handle(Request("GET", "/boom")))
    assert resp.status == 500
    err = error_of(resp)
    assert err["type"] == "api_error"
    assert "hunter2" not in resp.body.decode()
    assert resp.headers["x-request-id"]


def test_route_scope_is_enforced_before_the_handler_runs(harness: Harness) -> None:
    router = Router()
    ran: list[bool] = []

    @router.route("GET", "/secret", scope="admin", summary="s")
    async def secret(ctx: RequestContext) -> Response:
        ran.append(True)
        return Response.json({})

    gw = custom_gateway(harness, router)
    resp = asyncio.run(gw.handle(Request("GET", "/secret", {"authorization": f"Bearer {harness.key}"})))
    assert resp.status == 403
    assert ran == []
    resp = asyncio.run(gw.handle(Request("GET", "/secret", {"authorization": f"Bearer {harness.admin_key}"})))
    assert resp.status == 200
    assert ran == [True]


# -- errors over HTTP ----------------------------------------------------------------------------------


def test_unknown_route_is_404_even_without_credentials(harness: Harness) -> None:
    resp = harness.call("GET", "/v2/nothing", headers={"authorization": ""})
    assert resp.status == 404
    err = error_of(resp)
    assert err["type"] == "invalid_request_error"
    assert err["code"] == "unknown_route"


@pytest.mark.parametrize(
    ("method", "path", "allow"),
    [
        ("GET", "/v1/completions", "POST"),
        ("DELETE", "/v1/models", "GET"),
        ("PUT", "/v1/chat/completions", "POST"),
        ("POST", "/health", "GET"),
        ("GET", "/admin/keys/key_1", "DELETE"),
        ("PATCH", "/admin/models/m", "DELETE, PUT"),
    ],
)
def test_wrong_method_is_405_with_allow(harness: Harness, method: str, path: str, allow: str) -> None:
    resp = harness.call(method, path)
    assert resp.status == 405
    assert resp.headers["allow"] == allow
    assert error_of(resp)["code"] == "method_not_allowed"


@pytest.mark.parametrize(
    ("exc", "status", "type_", "code"),
    [
        (errors.InvalidRequest("x"), 400, "invalid_request_error", None),
        (errors.Unauthorized("x"), 401, "authentication_error", "invalid_api_key"),
        (errors.Forbidden("x"), 403, "permission_error", "insufficient_scope"),
        (errors.NotFound("x"), 404, "invalid_request_error", "not_found"),
        (errors.MethodNotAllowed("x"), 405, "invalid_request_error", "method_not_allowed"),
        (errors.Conflict("x"), 409, "invalid_request_error", "conflict"),
        (errors.PayloadTooLarge("x"), 413, "invalid_request_error", "request_too_large"),
        (errors.RateLimited("x"), 429, "rate_limit_error", "rate_limit_exceeded"),
        (errors.QuotaExceeded("x"), 429, "insufficient_quota", "insufficient_quota"),
        (errors.BackendError("x"), 502, "api_error", "backend_error"),
        (errors.BackendTimeout(), 504, "api_error", "backend_timeout"),
        (errors.ServiceUnavailable("x"), 503, "api_error", "service_unavailable"),
    ],
)
def test_every_error_has_its_status_and_openai_shape(exc: errors.APIError, status: int, type_: str, code: Any) -> None:
    resp = Response.error(exc)
    assert resp.status == status
    assert resp.headers["content-type"] == "application/json"
    err = error_of(resp)
    assert (err["type"], err["code"], err["param"]) == (type_, code, None)


def test_error_overrides_and_headers() -> None:
    exc = errors.InvalidRequest("bad", code="invalid_value", param="messages[0].role", headers={"x-a": "1"})
    resp = Response.error(exc)
    assert error_of(resp) == {
        "message": "bad",
        "type": "invalid_request_error",
        "code": "invalid_value",
        "param": "messages[0].role",
    }
    assert resp.headers["x-a"] == "1"
    assert not errors.BackendError("x").retryable
    assert errors.BackendError("x", status=503, retryable=True).status == 503


# -- request ids ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("sane", ["trace-123.abc:9", "JNWhwiKCoAMEbhA="])  # the second: an API Gateway id
def test_a_sane_caller_request_id_is_echoed(harness: Harness, sane: str) -> None:
    resp = harness.call("GET", "/health", headers={"x-request-id": sane})
    assert resp.headers["x-request-id"] == sane


@pytest.mark.parametrize("bad", ["has space", "x" * 129, "new\nline", "", "<script>"])
def test_an_insane_caller_request_id_is_replaced(harness: Harness, bad: str) -> None:
    resp = harness.call("GET", "/health", headers={"x-request-id": bad})
    rid = resp.headers["x-request-id"]
    assert rid != bad
    assert rid.startswith("req_")


def test_every_response_gets_a_fresh_request_id(harness: Harness) -> None:
    ids = {harness.call("GET", "/v1/models").headers["x-request-id"] for _ in range(3)}
    ids.add(harness.call("GET", "/nowhere").headers["x-request-id"])
    assert len(ids) == 4


# -- logs ----------------------------------------------------------------------------------------------


class Capture(logging.Handler):
    def __init__(self) -> None:
        super().__init__()
        self.lines: list[str] = []

    def emit(self, record: logging.LogRecord) -> None:
        self.lines.append(JsonFormatter().format(record))


def test_request_log_has_ids_and_status_but_never_secrets_or_prompts(harness: Harness) -> None:
    logger = logging.getLogger("textnlp")
    capture = Capture()
    old_level = logger.level
    logger.addHandler(capture)
    logger.setLevel(logging.INFO)
    try:
        resp = harness.call_json(
            "POST", "/v1/completions", {"model": "fake-gen", "prompt": "TOP-SECRET-PROMPT words", "max_tokens": 2},
            headers={"x-request-id": "trace-42"},
        )  # fmt: skip
    finally:
        logger.removeHandler(capture)
        logger.setLevel(old_level)
    assert resp.status == 200
    (line,) = [json.loads(x) for x in capture.lines if json.loads(x)["msg"] == "request"]
    assert line["request_id"] == "trace-42"
    assert line["tenant_id"] == harness.tenant.id
    assert line["status"] == 200
    assert line["route"] == "/v1/completions"
    everything = "\n".join(capture.lines)
    assert harness.key not in everything
    assert harness.key.rsplit("_", 1)[1] not in everything
    assert "TOP-SECRET-PROMPT" not in everything
    assert json_of(resp)["choices"][0]["text"] == "TOP-SECRET-PROMPT words"  # it was in the request


def test_json_formatter_drops_forbidden_fields() -> None:
    record = logging.LogRecord("textnlp", logging.INFO, __file__, 1, "m", None, None)
    record.fields = {"request_id": "r", "api_key": "k", "authorization": "Bearer k", "prompt": "p", "token": "t"}
    out = json.loads(JsonFormatter().format(record))
    assert out["request_id"] == "r"
    assert not {"api_key", "authorization", "prompt", "token"} & set(out)


def test_a_model_whose_backend_is_not_configured_is_a_backend_error_not_a_500(harness: Harness) -> None:
    harness.add_model(replace(GEN, id="orphan", backend={"type": "local", "name": "nobody"}, max_retries=0))
    resp = harness.call_json("POST", "/v1/completions", {"model": "orphan", "prompt": "a"})
    assert resp.status == 501
    assert error_of(resp)["code"] == "backend_error"
