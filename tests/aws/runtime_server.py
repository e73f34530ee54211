"""A local HTTP server speaking the SageMaker runtime REST protocol, for what moto does not implement.

It answers ``POST /endpoints/{name}/invocations`` and ``/invocations-response-stream`` the way the
service does (rest-json errors with ``x-amzn-ErrorType``, ``application/vnd.amazon.eventstream``
frames), so boto3's real serializer, parser and event-stream decoder run against it.
"""

from __future__ import annotations

import json
import struct
import threading
import time
import zlib
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any


def frame(headers: dict[str, str], payload: bytes) -> bytes:
    """One event-stream message: prelude (total, headers length, CRC), string headers, payload, CRC."""
    encoded = b"".join(
        bytes([len(name)]) + name.encode() + b"\x07" + struct.pack(">H", len(value)) + value.encode()
        for name, value in headers.items()
    )
    prelude = struct.pack(">II", 12 + len(encoded) + len(payload) + 4, len(encoded))
    message = prelude + struct.pack(">I", zlib.crc32(prelude)) + encoded + payload
    return message + struct.pack(">I", zlib.crc32(message))


def payload_part(data: bytes) -> bytes:
    """A ``PayloadPart`` event: its ``Bytes`` member is the event payload itself (``eventpayload``)."""
    headers = {":event-type": "PayloadPart", ":content-type": "application/octet-stream", ":message-type": "event"}
    return frame(headers, data)


def stream_exception(kind: str, body: dict[str, Any]) -> bytes:
    """A ``ModelStreamError`` / ``InternalStreamFailure`` exception event."""
    headers = {":exception-type": kind, ":content-type": "application/json", ":message-type": "exception"}
    return frame(headers, json.dumps(body).encode())


@dataclass
class Reply:
    """What one endpoint answers: a JSON body, an error, or a stream of event frames."""

    status: int = 200
    body: bytes = b""
    error_type: str | None = None  # x-amzn-ErrorType for errors
    frames: list[bytes] = field(default_factory=list)
    slice_bytes: int = 7  # the stream body is written in slices this long, cutting through frames
    delay_s: float = 0.0  # before answering
    stall_s: float = 0.0  # in a stream, after the frames, before the end


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: bytes

    def json(self) -> Any:
        return json.loads(self.body)


def error(status: int, error_type: str, **body: Any) -> Reply:
    return Reply(status=status, error_type=error_type, body=json.dumps(body).encode())


def stream(*lines: bytes | str, slice_bytes: int = 7, tail: list[bytes] | None = None, stall_s: float = 0.0) -> Reply:
    """A stream whose output is ``lines`` (each ended by a newline), cut into 5-byte PayloadParts."""
    data = b"".join((line.encode() if isinstance(line, str) else line) + b"\n" for line in lines)
    parts = [payload_part(data[i : i + 5]) for i in range(0, len(data), 5)]
    return Reply(frames=parts + (tail or []), slice_bytes=slice_bytes, stall_s=stall_s)


class RuntimeServer:
    """Endpoints by name -> the Reply they give; unknown endpoints answer ValidationError, like AWS."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.requests: list[Recorded] = []
        server = self
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_Handler,), {"runtime": server}))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> RuntimeServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()

    def reset(self) -> None:
        self.replies.clear()
        self.requests.clear()


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    runtime: RuntimeServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        self.runtime.requests.append(Recorded(self.path, dict(self.headers.items()), body))
        parts = self.path.split("/")
        name = parts[2] if len(parts) == 4 and parts[1] == "endpoints" else ""
        reply = self.runtime.replies.get(name) or error(
            400, "ValidationError", message=f"Endpoint {name} of account 123456789012 not found."
        )
        time.sleep(reply.delay_s)
        try:
            if reply.error_type or not parts[-1].endswith("response-stream"):
                self._answer(reply)
            else:
                self._stream(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout test)

    def _answer(self, reply: Reply) -> None:
        self.send_response(reply.status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(reply.body)))
        self.send_header("x-amzn-RequestId", "test-request")
        if reply.error_type:
            self.send_header("x-amzn-ErrorType", reply.error_type)
        else:
            self.send_header("x-Amzn-Invoked-Production-Variant", "AllTraffic")
        self.end_headers()
        self.wfile.write(reply.body)

    def _stream(self, reply: Reply) -> None:
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("X-Amzn-SageMaker-Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        data = b"".join(reply.frames)
        for start in range(0, len(data), reply.slice_bytes):
            piece = data[start : start + reply.slice_bytes]
            self.wfile.write(b"%x\r\n%s\r\n" % (len(piece), piece))
            self.wfile.flush()
        time.sleep(reply.stall_s)
        self.wfile.write(b"0\r\n\r\n")
