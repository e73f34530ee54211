"""A local server speaking Azure ML's scoring formats, on 127.0.0.1, for the Azure ML backend's tests.

Each endpoint has a scoring URI ``POST /{endpoint}/score`` that answers the family its body is in, as the
catalog's scoring scripts do: Hugging Face ``{"inputs": [...], "parameters"}`` → ``[{"0": {"generated_text"}}]``
(the prompt prepended unless ``return_full_text`` is false), ``{"input_data": {"input_string": [text]}}`` →
``[{"0": "..."}]``, ``{"input_data": {"input_string": [messages]}}`` → ``{"output": "..."}``; and OpenAI's
``POST /{endpoint}/v1/chat/completions`` and ``/v1/completions`` (serverless, vLLM), streamed as SSE when asked.
Calls without ``Authorization: Bearer`` and an accepted key or token get 401 with ``{"message"}``.

An endpoint answers by its name, the way ``bench.fake_openai_server`` reads ``fault:<mode>``: ``echo`` repeats
the prompt's words (at most ``max_new_tokens``/``max_tokens``; OpenAI usage counts words); ``fault-500``,
``fault-503``, ``fault-424``, ``fault-400``, ``fault-408`` answer that status; ``fault-429`` a 429 with
``Retry-After: 7``; ``fault-hang`` waits ``HANG_S``; ``fault-eof-after-N`` / ``fault-drop-after-N`` /
``fault-stall-after-N`` stream N words and then end cleanly, break the connection mid-body, or wait ``HANG_S``
(a scoring URI answers them as ``echo``); ``fault-not-json`` answers HTML. Any other name is 404. A test scripts
one endpoint's answer with ``server.replies[name] = Reply(...)``.
"""

from __future__ import annotations

import json
import threading
import time
from dataclasses import dataclass, field
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from typing import Any

HANG_S = 1.5
KEY = "test-endpoint-key"
_STREAMING_FAULTS = ("fault-eof-", "fault-drop-", "fault-stall-")


@dataclass
class Reply:
    """A scripted answer: a JSON body with a status, or (``lines``) an event stream."""

    status: int = 200
    body: Any = None  # JSON-encoded unless bytes
    lines: list[str] | None = None  # SSE lines, each sent with a blank line after it
    headers: dict[str, str] = field(default_factory=dict)
    delay_s: float = 0.0
    stall_s: float = 0.0  # in a stream, after the lines, before the end
    drop: bool = False  # in a stream, close the connection after the lines (the chunked body never ends)


@dataclass
class Recorded:
    path: str
    headers: dict[str, str]
    body: Any


def aml_error(status: int, message: str, **headers: str) -> Reply:
    return Reply(status, {"message": message}, headers=headers)


class AzureMLServer:
    """Endpoints by name; ``accepted`` the bearer secrets it takes (endpoint keys and Entra tokens)."""

    def __init__(self) -> None:
        self.replies: dict[str, Reply] = {}
        self.requests: list[Recorded] = []
        self.accepted: set[str] = {KEY}
        self._http = _Server(("127.0.0.1", 0), type("Handler", (_Handler,), {"server_state": self}))
        self._http.daemon_threads = True
        self._thread = threading.Thread(target=self._http.serve_forever, args=(0.05,), daemon=True)

    @property
    def url(self) -> str:
        host, port = self._http.server_address[:2]
        return f"http://{host!s}:{port}"

    def scoring_uri(self, endpoint: str) -> str:
        return f"{self.url}/{endpoint}/score"

    def openai_url(self, endpoint: str) -> str:
        return f"{self.url}/{endpoint}/v1"

    def start(self) -> AzureMLServer:
        self._thread.start()
        return self

    def stop(self) -> None:
        self._http.shutdown()
        self._http.server_close()
        self._thread.join()

    def answer(self, endpoint: str, api: str, payload: dict[str, Any]) -> Reply:
        """What ``endpoint`` answers to ``payload`` on ``api`` (``score``, ``chat`` or ``completions``)."""
        scripted = self.replies.get(endpoint)
        if scripted is not None:
            return scripted
        if endpoint in ("fault-500", "fault-503", "fault-424", "fault-400", "fault-408"):
            return aml_error(int(endpoint[-3:]), f"injected fault {endpoint}")
        if endpoint == "fault-429":
            return aml_error(429, "Too many requests, please retry later.", **{"Retry-After": "7"})
        if endpoint == "fault-not-json":
            return Reply(200, b"<html>Bad Gateway</html>", headers={"Content-Type": "text/html"})
        if endpoint == "fault-hang":
            return Reply(200, {"output": "late"}, delay_s=HANG_S)
        if endpoint != "echo" and not endpoint.startswith(_STREAMING_FAULTS):
            return aml_error(404, f"Endpoint {endpoint} not found.")
        if api == "score":
            return _score(payload)
        words, limit = _openai_words(payload)
        chat = api == "chat"
        if not payload.get("stream"):
            return Reply(200, _completion(words, limit, chat))
        lines = _chunks(words, limit, chat, bool((payload.get("stream_options") or {}).get("include_usage")))
        if endpoint == "echo":
            return Reply(200, lines=lines)
        mode, _, n = endpoint.removeprefix("fault-").partition("-after-")
        cut = lines[: int(n) + (1 if chat else 0)]  # (the role chunk, then) N words
        return Reply(200, lines=cut, stall_s=HANG_S if mode == "stall" else 0.0, drop=mode == "drop")


def _score(payload: dict[str, Any]) -> Reply:
    if isinstance(payload.get("inputs"), list):  # Hugging Face
        prompt, parameters = str(payload["inputs"][0]), payload.get("parameters") or {}
        out = _words(prompt, parameters)
        text = out if parameters.get("return_full_text") is False else prompt + out
        return Reply(200, [{"0": {"generated_text": text}}])
    data = payload.get("input_data") or {}
    inputs, parameters = data.get("input_string"), data.get("parameters") or {}
    if not (isinstance(inputs, list) and inputs):
        return aml_error(400, "input_data.input_string is required")
    if isinstance(inputs[0], dict):  # chat
        return Reply(200, {"output": _words(" ".join(str(m.get("content")) for m in inputs), parameters)})
    return Reply(200, [{"0": _words(str(inputs[0]), parameters)}])


def _words(prompt: str, parameters: dict[str, Any]) -> str:
    return " ".join(prompt.split()[: int(parameters.get("max_new_tokens") or 100)])


def _openai_words(payload: dict[str, Any]) -> tuple[list[str], int]:
    if "messages" in payload:
        words = [w for m in payload["messages"] for w in str(m.get("content") or "").split()]
    else:
        words = str(payload.get("prompt") or "").split()
    return words, int(payload.get("max_tokens") or 16)


def _usage(words: list[str], out: list[str]) -> dict[str, int]:
    return {"prompt_tokens": len(words), "completion_tokens": len(out), "total_tokens": len(words) + len(out)}


def _completion(words: list[str], limit: int, chat: bool) -> dict[str, Any]:
    out, reason = words[:limit], "length" if len(words) > limit else "stop"
    text = " ".join(out)
    choice = {"index": 0, "finish_reason": reason}
    choice |= {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
    kind = "chat.completion" if chat else "text_completion"
    return {"id": "cmpl-1", "object": kind, "choices": [choice], "usage": _usage(words, out)}


def _chunks(words: list[str], limit: int, chat: bool, include_usage: bool) -> list[str]:
    def chunk(piece: str | None, reason: str | None = None) -> str:
        choice: dict[str, Any] = {"index": 0, "finish_reason": reason}
        if chat:
            choice["delta"] = {} if piece is None else {"content": piece}
        else:
            choice["text"] = piece or ""
        return "data: " + json.dumps({"id": "cmpl-1", "choices": [choice]})

    out = words[:limit]
    lines = ["data: " + json.dumps({"id": "cmpl-1", "choices": [{"index": 0, "delta": {"role": "assistant"}}]})]
    lines = lines if chat else []
    lines += [chunk(w if i == 0 else " " + w) for i, w in enumerate(out)]
    lines.append(chunk(None, "length" if len(words) > limit else "stop"))
    if include_usage:
        lines.append("data: " + json.dumps({"id": "cmpl-1", "choices": [], "usage": _usage(words, out)}))
    return [*lines, "data: [DONE]"]


class _Server(ThreadingHTTPServer):
    request_queue_size = 64  # concurrent callers connect at once (the default backlog of 5 drops SYNs: 1 s stalls)


class _Handler(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server_state: AzureMLServer

    def log_message(self, format: str, *args: Any) -> None:
        pass

    def do_POST(self) -> None:
        raw = self.rfile.read(int(self.headers.get("Content-Length") or 0))
        state = self.server_state
        payload = json.loads(raw or b"{}")
        state.requests.append(Recorded(self.path, {k.lower(): v for k, v in self.headers.items()}, payload))
        try:
            endpoint, api = _route(self.path)
            auth = self.headers.get("Authorization", "")
            if endpoint is None:
                reply = aml_error(404, f"{self.path} was not found.")
            elif not (auth.startswith("Bearer ") and auth[7:] in state.accepted):
                reply = aml_error(401, "Invalid authentication: key or token missing or wrong.")
            else:
                reply = state.answer(endpoint, api, payload)
            time.sleep(reply.delay_s)
            self._send(reply)
        except (BrokenPipeError, ConnectionResetError):
            pass  # the client gave up (a timeout case)

    def _send(self, reply: Reply) -> None:
        if reply.lines is None:
            body = reply.body if isinstance(reply.body, bytes) else json.dumps(reply.body).encode()
            self.send_response(reply.status)
            self.send_header("Content-Type", reply.headers.get("Content-Type", "application/json"))
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
    """The endpoint and the api (``score``, ``chat``, ``completions``) of a path; None if it is not one."""
    endpoint, _, rest = path.lstrip("/").partition("/")
    api = {"score": "score", "v1/chat/completions": "chat", "v1/completions": "completions"}.get(rest)
    return (endpoint or None, api) if api else (None, "")
