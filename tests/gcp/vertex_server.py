"""A local server speaking Vertex AI's REST wire formats, on 127.0.0.1, for the Vertex backend's tests.

It answers ``POST /v1/projects/{p}/locations/{l}/endpoints/{id}:predict`` (Model Garden vLLM's ``prompt``
instances and TGI's ``inputs`` or ``messages`` instances, one string prediction each, as those containers do),
``POST /v1beta1/projects/{p}/locations/{l}/endpoints/{id}/chat/completions`` (OpenAI chat, streamed as SSE when
asked) and ``POST /token`` (an OAuth token endpoint, for google-auth's refresh). Calls without an accepted
bearer token get 401 ``UNAUTHENTICATED``; errors come in Google's envelope ``{"error": {"code", "message",
"status"}}``.

An endpoint answers by its id, the way ``bench.fake_openai_server`` reads ``fault:<mode>``: ``echo`` repeats
the prompt's words (at most ``max_tokens``; chat usage counts words); ``fault-500``, ``fault-503``,
``fault-400``, ``fault-429`` (quota, ``RESOURCE_EXHAUSTED``) answer that error; ``fault-hang`` waits ``HANG_S``;
``fault-eof-after-N`` / ``fault-drop-after-N`` / ``fault-stall-after-N`` stream N words and then end cleanly,
break the connection mid-body, or wait ``HANG_S``; ``fault-not-json`` answers HTML. Any other id is 404. A test
scripts one endpoint's answer with ``server.replies[id] = Reply(...)``.
"""

from __future__ import annotations

import itertools
import json
import threading
import time
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

from google.auth.credentials import Credentials

HANG_S = 1.5
TOKEN = "test-token"
_PREDICT = ":predict"
_CHAT = "/chat/completions"
_STATUS_NAMES = {400: "INVALID_ARGUMENT", 401: "UNAUTHENTICATED", 404: "NOT_FOUND", 429: "RESOURCE_EXHAUSTED"}
_STATUS_NAMES |= {500: "INTERNAL", 503: "UNAVAILABLE", 504: "DEADLINE_EXCEEDED"}
QUOTA_MESSAGE = (
    "Quota exceeded for aiplatform.googleapis.com/online_prediction_requests_per_base_model with base model: "
    "endpoint. Please submit a quota increase request."
)


@dataclass
class Reply:
    """A scripted answer: a JSON body with a status, or (``lines``) an event stream."""

    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    lines: list[str] | None = None  # SSE lines, each sent with its own newline
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    stall_s: float = 0.0  # in a stream, after the lines, before the end
    drop: bool = False  # in a stream, close the connection after the lines (the chunked body never ends)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


def google_error(status: int, message: str) -> Reply:
    name = _STATUS_NAMES.get(status, "UNKNOWN")
    return Reply(status, {"error": {"code": status, "message": message, "status": name}})


class StaticCredentials(Credentials):
    """Credentials whose token is ``TOKEN`` until ``expiry``; ``refresh`` hands out ``TOKEN``, counting calls."""

    def __init__(self, token: str | None = TOKEN, lifetime: timedelta = timedelta(hours=1)) -> None:
        super().__init__()
        self.token = token
        self.expiry = datetime.now(UTC).replace(tzinfo=None) + lifetime
        self.refreshes = 0

    def refresh(self, request: Any) -> None:
        self.refreshes += 1
        self.token = TOKEN
        self.expiry = datetime.now(UTC).replace(tzinfo=None) + timedelta(hours=1)


class VertexServer:
    """Endpoints by id; ``accepted`` the bearer tokens it takes (``/token`` adds the ones it issues)."""

    def __init__(self, token_lifetime_s: int = 3600) -> None:
        self.replies: dict[str, Reply] = {}
        self.requests: list[Recorded] = []
        self.accepted: set[str] = {TOKEN}
        self.token_lifetime_s = token_lifetime_s
        self._issued = itertools.count(1)
        self._http = _Server(("127.0.0.1", 0), type("Handler", (_Handler,), {"server_state": self}))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def start(self) -> VertexServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()

    def issue_token(self) -> dict[str, Any]:
        token = f"issued-{next(self._issued)}"
        self.accepted.add(token)
        return {"access_token": token, "expires_in": self.token_lifetime_s, "token_type": "Bearer"}

    def answer(self, endpoint_id: str, api: str, payload: dict[str, Any]) -> Reply:
        """What endpoint ``endpoint_id`` answers to ``payload`` on ``api`` (``predict`` or ``chat``)."""
        scripted = self.replies.get(endpoint_id)
        if scripted is not None:
            return scripted
        if endpoint_id in ("fault-500", "fault-503", "fault-400"):
            return google_error(int(endpoint_id[-3:]), f"injected fault {endpoint_id}")
        if endpoint_id == "fault-429":
            return google_error(429, QUOTA_MESSAGE)
        if endpoint_id == "fault-not-json":
            return Reply(200, b"<html>Service Unavailable</html>", headers={"Content-Type": "text/html"})
        if endpoint_id == "fault-hang":
            return Reply(200, {"predictions": ["late"]}, delay_s=HANG_S)
        if endpoint_id != "echo" and not endpoint_id.startswith(("fault-eof-", "fault-drop-", "fault-stall-")):
            return google_error(404, f"Endpoint `{endpoint_id}` not found.")
        if api == "predict":
            return Reply(200, _predict(payload))
        words, limit = _chat_words(payload)
        if not payload.get("stream"):
            return Reply(200, _completion(words, limit))
        lines = _chunks(words, limit, bool((payload.get("stream_options") or {}).get("include_usage")))
        if endpoint_id == "echo":
            return Reply(200, lines=lines)
        mode, _, n = endpoint_id.removeprefix("fault-").partition("-after-")
        cut = lines[: 1 + int(n)]  # the role chunk, then N words
        return Reply(200, lines=cut, stall_s=HANG_S if mode == "stall" else 0.0, drop=mode == "drop")


def _predict(payload: dict[str, Any]) -> dict[str, Any]:
    instance = (payload.get("instances") or [{}])[0]
    if "prompt" in instance:  # Model Garden vLLM
        words, limit = str(instance["prompt"]).split(), int(instance.get("max_tokens") or 16)
    elif "inputs" in instance:  # TGI, text
        words, limit = str(instance["inputs"]).split(), int(instance["parameters"].get("max_new_tokens") or 100)
    else:  # TGI, chat
        words, limit = _chat_words(instance)
    return {"predictions": [" ".join(words[:limit])], "deployedModelId": "1234", "model": "projects/p/models/m"}


def _chat_words(payload: dict[str, Any]) -> tuple[list[str], int]:
    words = [w for m in payload.get("messages") or [] for w in str(m.get("content") or "").split()]
    return words, int(payload.get("max_tokens") or 16)


def _completion(words: list[str], limit: int) -> dict[str, Any]:
    out = words[:limit]
    choice = {
        "index": 0,
        "message": {"role": "assistant", "content": " ".join(out)},
        "finish_reason": _reason(words, limit),
    }
    usage = {"prompt_tokens": len(words), "completion_tokens": len(out), "total_tokens": len(words) + len(out)}
    return {"id": "chatcmpl-1", "object": "chat.completion", "choices": [choice], "usage": usage}


def _chunks(words: list[str], limit: int, include_usage: bool) -> list[str]:
    def chunk(delta: dict[str, Any], reason: str | None = None) -> str:
        body = {
            "id": "chatcmpl-1",
            "object": "chat.completion.chunk",
            "choices": [{"index": 0, "delta": delta, "finish_reason": reason}],
        }
        return "data: " + json.dumps(body)

    out = words[:limit]
    lines = [chunk({"role": "assistant", "content": ""})]
    lines += [chunk({"content": w if i == 0 else " " + w}) for i, w in enumerate(out)]
    lines.append(chunk({}, _reason(words, limit)))
    if include_usage:
        usage = {"prompt_tokens": len(words), "completion_tokens": len(out), "total_tokens": len(words) + len(out)}
        lines.append("data: " + json.dumps({"id": "chatcmpl-1", "choices": [], "usage": usage}))
    return [*lines, "data: [DONE]"]


def _reason(words: list[str], limit: int) -> str:
    return "length" if len(words) > limit else "stop"


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # concurrent callers connect at once (the default backlog of 5 drops SYNs: 1 s stalls)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: VertexServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        state = self.server_state
        payload = json.loads(raw or b"{}") if raw[:1] in (b"{", b"[", b"") else {}
        state.requests.append(Recorded(self.path, dict(self.headers.items()), payload))
        try:
            if self.path == "/token":
                self._send(Reply(200, state.issue_token()))
                return
            endpoint_id, api = _route(self.path)
            auth = self.headers.get("Authorization", "")
            if endpoint_id is None:
                reply = google_error(404, f"The URL {self.path} was not found.")
            elif not (auth.startswith("Bearer ") and auth[7:] in state.accepted):
                reply = google_error(401, "Request had invalid authentication credentials.")
            else:
                reply = state.answer(endpoint_id, api, payload)
            time.sleep(reply.delay_s)
            self._send(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout case)

    def _send(self, reply: Reply) -> None:
        if reply.lines is None:
            body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.headers.get("Content-Type", "application/json; charset=UTF-8"))
            for name, value in reply.headers.items():
                if name != "Content-Type":
                    self.send_header(name, value)
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
            return
        self.send_response(reply.status)
        self.send_header("Content-Type", "text/event-stream")
        self.send_header("Transfer-Encoding", "chunked")
        self.end_headers()
        for line in reply.lines:
            data = (line + "\n\n").encode()
            self.wfile.write(b"%x\r\n%s\r\n" % (len(data), data))
            self.wfile.flush()
        if reply.drop:
            self.close_connection = True
            return
        time.sleep(reply.stall_s)
        self.wfile.write(b"0\r\n\r\n")


def _route(path: str) -> tuple[str | None, str]:
    """The endpoint id and the api (``predict`` or ``chat``) of a Vertex path; None if it is not one."""
    for prefix, suffix, api in (("/v1/", _PREDICT, "predict"), ("/v1beta1/", _CHAT, "chat")):
        if path.startswith(prefix) and path.endswith(suffix):
            parts = path[len(prefix) : len(path) - len(suffix)].split("/")
            if len(parts) == 6 and (parts[0], parts[2], parts[4]) == ("projects", "locations", "endpoints"):
                return parts[5], api
    return None, ""
