"""The HTTP front: a threaded HTTP/1.1 server that plays API Gateway's HTTP API in front of the containers.

Every request becomes a payload 2.0 event on the ``$default`` route, runs on a free container of the api
function, and its result is mapped back as API Gateway maps it. The body comes whole: HTTP APIs cannot
stream, so a ``stream: true`` chat arrives as one SSE body (the openai SDK parses it all the same).
"""

from __future__ import annotations

import logging
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from functions.aws.local.containers import Busy, Containers
from functions.aws.local.events import MAX_BODY_BYTES, HttpReply, IncomingRequest, from_result, gateway_error, to_event

log = logging.getLogger("textnlp.local.aws")

#: Which simulated container answered (local only; API Gateway adds ``apigw-requestid`` and nothing like it).
CONTAINER_HEADER = "x-local-lambda-container"
_HOP_BY_HOP = frozenset({"connection", "content-length", "keep-alive", "transfer-encoding", "upgrade"})


class _TooLarge(Exception):
    pass


class ApiGatewayHandler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_version = "textnlp-local-apigw"  # keep-alive: the openai SDK reuses its connections
    server: ApiGatewayServer

    def _serve(self) -> None:
        host = self.headers.get("host") or f"{self.server.server_address[0]!s}:{self.server.server_address[1]}"
        try:
            body = self._body()
        except _TooLarge:
            self._reply(gateway_error(413, "Request Entity Too Large", "-"), None)
            self.close_connection = True
            return
        request = IncomingRequest(
            method=self.command,
            target=self.path,
            headers=list(self.headers.items()),
            body=body,
            source_ip=self.client_address[0],
            host=host.split(":")[0],
            port=int(self.server.server_address[1]),
        )
        event = to_event(request)
        containers = self.server.containers
        if containers is None:  # still starting
            self._reply(gateway_error(503, "Service Unavailable", request.request_id), None)
            return
        try:
            result, container = containers.invoke(event)
        except Busy as exc:
            log.warning("503 for %s %s: %s", self.command, self.path, exc)
            self._reply(gateway_error(503, "Service Unavailable", request.request_id), None)
            return
        except Exception:  # the function raised: Lambda reports a function error, API Gateway answers 500
            log.exception("the api function failed on %s %s", self.command, self.path)
            self._reply(gateway_error(500, "Internal Server Error", request.request_id), None)
            return
        try:
            reply = from_result(result, request.request_id)
        except (KeyError, TypeError, ValueError):
            log.exception("the api function returned a malformed result")
            reply = gateway_error(500, "Internal Server Error", request.request_id)
        self._reply(reply, container)

    def do_GET(self) -> None:
        self._serve()

    def do_POST(self) -> None:
        self._serve()

    def do_PUT(self) -> None:
        self._serve()

    def do_PATCH(self) -> None:
        self._serve()

    def do_DELETE(self) -> None:
        self._serve()

    def do_HEAD(self) -> None:
        self._serve()

    def do_OPTIONS(self) -> None:
        self._serve()

    def _body(self) -> bytes:
        if "chunked" in (self.headers.get("transfer-encoding") or "").lower():
            return self._chunked()
        length = int(self.headers.get("content-length") or 0)
        if length > MAX_BODY_BYTES:
            raise _TooLarge
        return self.rfile.read(length) if length > 0 else b""

    def _chunked(self) -> bytes:
        chunks: list[bytes] = []
        size = 0
        while True:
            line = self.rfile.readline(1024).strip()
            length = int(line.split(b";")[0] or b"0", 16)
            if length == 0:
                while self.rfile.readline(1024).strip():  # trailers, up to the empty line
                    pass
                return b"".join(chunks)
            size += length
            if size > MAX_BODY_BYTES:
                raise _TooLarge
            chunks.append(self.rfile.read(length))
            self.rfile.readline(8)  # the CRLF after the chunk

    def _reply(self, reply: HttpReply, container: int | None) -> None:
        self.send_response(reply.status)
        for name, value in reply.headers:
            if name.lower() not in _HOP_BY_HOP and name.lower() != "date":
                self.send_header(name, value)
        if container is not None:
            self.send_header(CONTAINER_HEADER, str(container))
        self.send_header("content-length", str(len(reply.body)))
        self.end_headers()
        if self.command != "HEAD":
            self.wfile.write(reply.body)

    def log_message(self, format: str, *args: Any) -> None:
        log.debug("%s - %s", self.address_string(), format % args)


class ApiGatewayServer(ThreadingHTTPServer):
    """One thread per connection; the containers bound how many invocations run at once.

    Bound first (a busy port fails before anything else starts); answers 503 until ``containers`` is set.
    """

    daemon_threads = True

    def __init__(self, address: tuple[str, int], containers: Containers | None = None) -> None:
        self.containers = containers
        super().__init__(address, ApiGatewayHandler)
