"""What the contract suites of the cloud adapters run on: moto, and a scripted SageMaker container.

Plain functions and context managers (no fixtures): ``tests/aws/conftest.py`` is not visible from here,
and each suite starts what its parametrisations need inside its own fixtures.
"""

from __future__ import annotations

import atexit
import functools
import json
import threading
import time
from collections.abc import Iterator
from contextlib import contextmanager
from http.server import ThreadingHTTPServer
from typing import Any

from bench.fake_openai_server import embedding
from tests.aws.runtime_server import Reply, RuntimeServer, _Handler, error, payload_part
from tests.aws.support import client_kwargs

# -- moto ---------------------------------------------------------------------------------------------------


class _OneAtATime:
    """A WSGI app that lets one request in at a time: moto's backends take no lock, so two conditional
    writes racing on a threaded server could both pass their check (as in ``tests/aws/conftest.py``)."""

    def __init__(self, app: Any) -> None:
        self._app = app
        self._lock = threading.Lock()

    def __call__(self, environ: Any, start_response: Any) -> list[bytes]:
        with self._lock:
            return list(self._app(environ, start_response))


@contextmanager
def moto_server() -> Iterator[str]:
    """An in-process moto server whose calls are atomic; yields its URL. Clients get explicit fake
    credentials and this endpoint (``boto_client``), so nothing can reach a real account."""
    from moto.moto_server.werkzeug_app import DomainDispatcherApplication, MotoRequestHandler, create_backend_app
    from werkzeug.serving import make_server

    app = _OneAtATime(DomainDispatcherApplication(create_backend_app))
    server = make_server("127.0.0.1", 0, app, threaded=True, request_handler=MotoRequestHandler)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}"
    finally:
        server.shutdown()
        thread.join()


@functools.cache
def shared_moto_url() -> str:
    """One ``moto_server`` for the whole run, started on first use and stopped at exit. Suites name what they
    create uniquely per test instead of resetting moto (its state is process-wide)."""
    server = moto_server()
    url = server.__enter__()
    atexit.register(server.__exit__, None, None, None)
    return url


def boto_client(service: str, url: str, **config: Any) -> Any:
    import boto3

    return boto3.client(service, **client_kwargs(url, **config))  # type: ignore[call-overload]


# -- a scripted SageMaker container -------------------------------------------------------------------------

#: SageMaker endpoint names understood by ``ScriptedContainer``: a TGI container that echoes its prompt, a TEI
#: one, and failures, the way ``bench.fake_openai_server`` reads ``fault:<mode>`` from the model name.
ECHO = "echo"
TEI = "tei"
HANG_S = 1.5  # how long "fault-hang" and "fault-stall-after-N" keep the client waiting


def _tgi(payload: dict[str, Any]) -> tuple[list[str], str, int]:
    """The words TGI answers (the prompt's first ``max_new_tokens``), its finish reason and the prompt tokens."""
    words = str(payload.get("inputs") or "").split() or ["ok"]
    limit = int(payload.get("parameters", {}).get("max_new_tokens") or 16)
    return words[:limit], "length" if len(words) > limit else "eos_token", len(words)


def _token_line(i: int, word: str) -> str:
    token = {"id": i, "text": word if i == 0 else " " + word, "special": False}
    return "data:" + json.dumps({"index": i, "token": token, "details": None})


def _stream_reply(lines: list[str], *, stall_s: float = 0.0) -> Reply:
    data = b"".join(line.encode() + b"\n" for line in lines)
    return Reply(frames=[payload_part(data[i : i + 5]) for i in range(0, len(data), 5)], stall_s=stall_s)


def container_reply(name: str, payload: dict[str, Any], streamed: bool) -> tuple[Reply, bool]:
    """What endpoint ``name`` answers to ``payload``, and whether the connection then breaks off mid-body."""
    if name == TEI:
        return Reply(body=json.dumps([embedding(text) for text in payload.get("inputs", [])]).encode()), False
    if name == "fault-500":
        body = '{"error":"boom","error_type":"generation_failed"}'
        return error(424, "ModelError", Message="500 from primary", OriginalStatusCode=500, OriginalMessage=body), False
    if name == "fault-400":
        body = '{"error":"Input validation error: inputs too long","error_type":"validation"}'
        return error(424, "ModelError", Message="422 from primary", OriginalStatusCode=422, OriginalMessage=body), False
    if name == "fault-429":
        return error(400, "ThrottlingException", message="Rate exceeded"), False
    if name == "fault-hang":
        return Reply(body=b'[{"generated_text": "late"}]', delay_s=HANG_S), False
    words, reason, prompt_tokens = _tgi(payload)
    if name.startswith("fault-") and streamed:
        mode, _, n = name.removeprefix("fault-").partition("-after-")
        lines = [_token_line(i, w) for i, w in enumerate(words[: int(n)])]
        return _stream_reply(lines, stall_s=HANG_S if mode == "stall" else 0.0), mode == "drop"
    if name != ECHO:
        return error(400, "ValidationError", message=f"Endpoint {name} of account 123456789012 not found."), False
    details: dict[str, Any] = {"finish_reason": reason, "generated_tokens": len(words)}
    if streamed:
        last = {
            "token": {"id": 0, "text": "</s>", "special": True},
            "details": {**details, "input_length": prompt_tokens},
        }
        return _stream_reply([*(_token_line(i, w) for i, w in enumerate(words)), "data:" + json.dumps(last), ""]), False
    prefill = [{"id": i, "text": "t", "logprob": None} for i in range(prompt_tokens)]
    answer = [{"generated_text": " ".join(words), "details": {**details, "prefill": prefill, "tokens": []}}]
    return Reply(body=json.dumps(answer).encode()), False


class _ContainerHandler(_Handler):
    def do_POST(self) -> None:
        body = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        parts = self.path.split("/")
        name = parts[2] if len(parts) == 4 and parts[1] == "endpoints" else ""
        streamed = parts[-1].endswith("response-stream")
        reply, drop = container_reply(name, json.loads(body or b"{}"), streamed)
        time.sleep(reply.delay_s)
        try:
            if reply.error_type or not streamed:
                self._answer(reply)
            elif drop:
                self._drop(reply)
            else:
                self._stream(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout case)

    def _drop(self, reply: Reply) -> None:
        """The frames, then the connection closes inside the chunked body (no terminating chunk)."""
        self.send_response(200)
        self.send_header("Content-Type", "application/vnd.amazon.eventstream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        data = b"".join(reply.frames)
        self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
        self.wfile.flush()
        self.close_connection = True


class ScriptedContainer(RuntimeServer):
    """``RuntimeServer``'s wire protocol, answering by endpoint name (``container_reply``) instead of by script."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.requests = []
        self._http = ThreadingHTTPServer(("127.0.0.1", 0), type("Handler", (_ContainerHandler,), {"runtime": self}))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, daemon=True)
