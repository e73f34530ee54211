"""What API Gateway's HTTP API does around the function: an HTTP request as a payload 2.0 event, the
Lambda proxy result as an HTTP response, and the gateway's own answers (timeout, crash, too large)."""

from __future__ import annotations

import base64
import json
import time
import uuid
from collections.abc import Iterable
from dataclasses import dataclass, field
from email.utils import formatdate
from typing import Any
from urllib.parse import parse_qsl

ACCOUNT_ID = "123456789012"
API_ID = "local"
#: The largest request body an HTTP API accepts (10 MB).
MAX_BODY_BYTES = 10 * 1024 * 1024
_TEXT_TYPES = ("text/", "application/json", "application/xml", "application/x-www-form-urlencoded")


@dataclass(frozen=True)
class HttpReply:
    status: int
    headers: list[tuple[str, str]]
    body: bytes


@dataclass
class IncomingRequest:
    method: str
    target: str  # path and query, as on the request line
    headers: list[tuple[str, str]]
    body: bytes
    source_ip: str
    host: str
    port: int
    request_id: str = field(default_factory=lambda: base64.b64encode(uuid.uuid4().bytes[:11]).decode())


def to_event(req: IncomingRequest, *, now: float | None = None) -> dict[str, Any]:
    """The payload 2.0 event API Gateway sends for ``req`` on the ``$default`` route and stage."""
    now = time.time() if now is None else now
    path, _, raw_query = req.target.partition("?")
    headers: dict[str, str] = {}
    cookies: list[str] = []
    for name, value in req.headers:
        key = name.lower()
        if key == "cookie":
            cookies.extend(c.strip() for c in value.split(";") if c.strip())
            continue
        headers[key] = f"{headers[key]},{value}" if key in headers else value  # repeated headers: comma-joined
    headers.setdefault("x-forwarded-for", req.source_ip)
    headers.setdefault("x-forwarded-port", str(req.port))
    headers.setdefault("x-forwarded-proto", "http")
    event: dict[str, Any] = {
        "version": "2.0",
        "routeKey": "$default",
        "rawPath": path or "/",
        "rawQueryString": raw_query,
        "headers": headers,
        "requestContext": {
            "accountId": ACCOUNT_ID,
            "apiId": API_ID,
            "domainName": req.host,
            "domainPrefix": req.host.split(".")[0],
            "http": {
                "method": req.method.upper(),
                "path": path or "/",
                "protocol": "HTTP/1.1",
                "sourceIp": req.source_ip,
                "userAgent": headers.get("user-agent", ""),
            },
            "requestId": req.request_id,
            "routeKey": "$default",
            "stage": "$default",
            "time": time.strftime("%d/%b/%Y:%H:%M:%S +0000", time.gmtime(now)),
            "timeEpoch": int(now * 1000),
        },
        "isBase64Encoded": False,
    }
    if cookies:
        event["cookies"] = cookies
    query = _query_parameters(parse_qsl(raw_query, keep_blank_values=True))
    if query:
        event["queryStringParameters"] = query
    if req.body:
        if _is_text(headers.get("content-type", "")):
            try:
                event["body"] = req.body.decode()
            except UnicodeDecodeError:
                event["body"], event["isBase64Encoded"] = base64.b64encode(req.body).decode(), True
        else:
            event["body"], event["isBase64Encoded"] = base64.b64encode(req.body).decode(), True
    return event


def _query_parameters(pairs: Iterable[tuple[str, str]]) -> dict[str, str]:
    found: dict[str, str] = {}
    for key, value in pairs:
        found[key] = f"{found[key]},{value}" if key in found else value
    return found


def _is_text(content_type: str) -> bool:
    kind = content_type.split(";")[0].strip().lower()
    return kind.startswith(_TEXT_TYPES) or kind.endswith("+json")


def from_result(result: Any, request_id: str) -> HttpReply:
    """The HTTP response API Gateway makes of a payload 2.0 Lambda result.

    A result without ``statusCode`` is a JSON body answered 200, as API Gateway infers it.
    """
    if not (isinstance(result, dict) and "statusCode" in result):
        body = (result if isinstance(result, str) else json.dumps(result)).encode()
        return HttpReply(200, _with_gateway_headers([("content-type", "application/json")], request_id), body)
    raw = result.get("body") or ""
    body = base64.b64decode(raw) if result.get("isBase64Encoded") else str(raw).encode()
    headers = [(str(k), str(v)) for k, v in (result.get("headers") or {}).items()]
    headers += [("set-cookie", str(c)) for c in result.get("cookies") or []]
    return HttpReply(int(result["statusCode"]), _with_gateway_headers(headers, request_id), body)


def gateway_error(status: int, message: str, request_id: str) -> HttpReply:
    """API Gateway's own answer (not the function's): ``{"message": ...}``, as the real one words it."""
    body = json.dumps({"message": message}).encode()
    return HttpReply(status, _with_gateway_headers([("content-type", "application/json")], request_id), body)


def _with_gateway_headers(headers: list[tuple[str, str]], request_id: str) -> list[tuple[str, str]]:
    names = {name.lower() for name, _ in headers}
    added = [("apigw-requestid", request_id)]
    if "date" not in names:
        added.append(("date", formatdate(usegmt=True)))
    return [*headers, *added]
