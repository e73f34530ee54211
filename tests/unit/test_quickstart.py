"""``textnlp quickstart`` without a server: the store it leaves, and snippets that the gateway accepts as printed.

The snippets are checked against a real ``Gateway`` on the very SQLite file the command wrote (fake backend):
the curl line is split as a shell would and sent as a request; the Python snippet runs with the real openai
SDK, its HTTP client routed into the gateway.
"""

from __future__ import annotations

import argparse
import asyncio
import importlib
import io
import json
import shlex
import socket
from collections.abc import Iterator, Mapping
from dataclasses import replace
from pathlib import Path
from typing import Any

import httpx
import openai
import pytest

from adapters.local.sqlite_store import SQLiteStore
from core.app import Gateway
from core.auth import api_keys
from core.domain import Limits
from core.http import Request
from functions.local import cli, quickstart
from functions.local.bootstrap import ADMIN_TENANT, DEFAULT_MODELS
from tests.fakes import FakeBackend

SMOLLM = "smollm2-135m-instruct"


def closed_port() -> int:
    """A port nothing listens on, so the server check answers ``down`` at once."""
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def run(data_dir: Path, *extra: str, port: int | None = None) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    args = cli.parser().parse_args(
        ["--data-dir", str(data_dir), "quickstart", "--port", str(port or closed_port()), *extra]
    )
    code = quickstart.run(
        Path(args.data_dir), args.host, args.port, model=args.model, json_output=args.json, out=out, err=err
    )
    return code, out.getvalue(), err.getvalue()


@pytest.fixture
def data_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> Path:
    monkeypatch.delenv("TEXTNLP_ADMIN_KEY", raising=False)
    return tmp_path / "data"


@pytest.fixture
def store(data_dir: Path) -> Iterator[SQLiteStore]:
    data_dir.mkdir(parents=True, exist_ok=True)
    opened = SQLiteStore(data_dir / "textnlp.db")
    yield opened
    opened.close()


# -- the store it leaves ----------------------------------------------------------------------------------


def test_first_run_sets_up_the_store_as_a_first_start_and_shows_the_admin_key_once(
    data_dir: Path, store: SQLiteStore
) -> None:
    code, out, err = run(data_dir)
    assert code == 0
    assert "Created the first admin key (shown once, keep it safe)" in err
    admin_key = err.split("keep it safe):\n", 1)[1].split()[0]
    record = store.get_key(api_keys.parse_key(admin_key))
    assert record is not None
    assert record.tenant_id == ADMIN_TENANT
    assert api_keys.verify(admin_key, record)
    assert admin_key not in out  # stdout is only what is to be pasted
    assert {m.id for m in store.list_models()} >= {m.id for m in DEFAULT_MODELS}
    assert "Nothing answers on http://127.0.0.1:" in err

    _, _, again = run(data_dir)
    assert "admin key" not in again.lower()
    assert len([k for k in store.list_keys(ADMIN_TENANT) if k.revoked_at is None]) == 1


def test_an_operator_admin_key_is_imported_on_first_run_and_never_printed(
    data_dir: Path, store: SQLiteStore, monkeypatch: pytest.MonkeyPatch
) -> None:
    chosen = "operator-chosen-admin-key-0123456789"
    monkeypatch.setenv("TEXTNLP_ADMIN_KEY", chosen)
    _, out, err = run(data_dir)
    assert chosen not in out + err
    assert "admin key" not in err.lower()
    assert store.get_key(api_keys.parse_key(chosen)) is not None


def test_running_it_again_reuses_the_tenant_and_leaves_one_live_quickstart_key(
    data_dir: Path, store: SQLiteStore
) -> None:
    first = json.loads(run(data_dir, "--json")[1])
    tenants_before = store.list_tenants()
    _, record = api_keys.mint(quickstart.DEMO_TENANT, "mine", frozenset({"generate"}), 0.0)
    store.put_key(record)
    tenant = store.get_tenant(quickstart.DEMO_TENANT)
    assert tenant is not None
    assert tenant.name == "demo"
    assert tenant.limits == quickstart.DEMO_LIMITS
    # An operator's change to the demo limits survives the next run.
    store.put_tenant(replace(tenant, limits=Limits(requests_per_minute=5)))

    code, out, err = run(data_dir, "--json")
    second = json.loads(out)
    assert code == 0
    assert "already there" in err
    assert first["key_id"] in err  # said out loud: the earlier lines stop working
    assert [t.id for t in store.list_tenants()] == [t.id for t in tenants_before]
    refreshed = store.get_tenant(quickstart.DEMO_TENANT)
    assert refreshed is not None
    assert refreshed.limits == Limits(requests_per_minute=5)
    live = {k.id for k in store.list_keys(quickstart.DEMO_TENANT) if k.revoked_at is None}
    assert live == {second["key_id"], record.id}
    new = store.get_key(second["key_id"])
    assert new is not None
    assert api_keys.verify(second["key"], new)
    assert new.scopes == {"generate", "embed", "validate", "batch"}
    assert second["key"] != first["key"]


def test_an_unknown_model_is_refused_before_anything_is_created(data_dir: Path, store: SQLiteStore) -> None:
    code, out, err = run(data_dir, "--model", "no-such-model")
    assert code == 2
    assert out == ""
    assert f"no generation model 'no-such-model' here; generation models: {SMOLLM}" in err
    assert store.get_tenant(quickstart.DEMO_TENANT) is None
    assert run(data_dir, "--model", "all-minilm-l6-v2")[0] == 2  # an embedding model cannot chat


# -- what it prints ---------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("host", "url"),
    [
        ("127.0.0.1", "http://127.0.0.1:8080"),
        ("0.0.0.0", "http://127.0.0.1:8080"),
        ("::", "http://[::1]:8080"),
        ("::1", "http://[::1]:8080"),
        ("localhost", "http://localhost:8080"),
    ],
)
def test_the_url_is_one_a_client_can_connect_to(host: str, url: str) -> None:
    assert quickstart.base_url(host, 8080) == url


def test_the_text_output_is_the_key_the_curl_line_and_the_python_snippet(data_dir: Path) -> None:
    code, out, err = run(data_dir, port=9123)
    assert code == 0
    curl = [line for line in out.splitlines() if line.startswith("curl ")]
    assert len(curl) == 1
    argv = shlex.split(curl[0])
    assert argv[:3] == ["curl", "-sS", "http://127.0.0.1:9123/v1/chat/completions"]
    body = json.loads(argv[argv.index("-d") + 1])
    assert body["model"] == SMOLLM
    assert body["messages"][0]["role"] == "user"
    python = out.split("# Python", 1)[1].split("\n", 1)[1]
    compile(python, "<quickstart>", "exec")  # a whole program
    assert 'base_url="http://127.0.0.1:9123/v1"' in python
    assert f'model="{SMOLLM}"' in python
    # Progress and hints go to stderr, so stdout can be redirected to a file and pasted from.
    assert "Demo tenant" not in out
    assert "Demo tenant ten_demo: created" in err


def test_json_output_has_the_same_snippets(data_dir: Path) -> None:
    code, out, _ = run(data_dir, "--json", port=9124)
    data = json.loads(out)
    assert code == 0
    assert data["server"] == "down"
    assert data["base_url"] == "http://127.0.0.1:9124/v1"
    assert data["model"] == SMOLLM
    assert data["scopes"] == ["batch", "embed", "generate", "validate"]
    demo = quickstart.DemoKey(data["tenant_id"], data["key_id"], data["key"], False, ())
    text = quickstart.render(demo, "http://127.0.0.1:9124", SMOLLM)
    assert data["curl"] in text.splitlines()
    assert data["python"] in text


# -- the snippets against a gateway on the store it wrote ------------------------------------------------


class AnyRoute:
    """Every model, the local SmolLM2 included, answered by the fake backend."""

    def __init__(self) -> None:
        self.backend = FakeBackend()

    def backend_for(self, route: Mapping[str, Any]) -> Any:
        return self.backend


@pytest.fixture
def printed(data_dir: Path, store: SQLiteStore) -> tuple[dict[str, Any], Gateway]:
    _, out, _ = run(data_dir, "--json", port=8080)
    return json.loads(out), Gateway(store, AnyRoute())


# The HTTP library of the installed SDK (httpx, or httpx2 in recent openai releases): its client takes the transport.
SDK_HTTP: Any = importlib.import_module(openai.DefaultHttpxClient.__mro__[1].__module__.partition(".")[0])


def serve_in_process(gateway: Gateway, request: Any) -> Any:
    """An HTTP request of the SDK, answered by ``gateway`` as the server on 127.0.0.1:8080 would."""
    assert (request.url.host, request.url.port) == ("127.0.0.1", 8080)
    headers = {k.lower(): v for k, v in request.headers.items()}
    answer = asyncio.run(gateway.handle(Request(request.method, request.url.path, headers, {}, request.read())))
    return SDK_HTTP.Response(answer.status, headers=answer.headers, content=answer.body)


def test_the_curl_line_is_accepted_by_the_gateway(printed: tuple[dict[str, Any], Gateway]) -> None:
    data, gateway = printed
    argv = shlex.split(data["curl"])
    url = httpx.URL(argv[2])
    headers = {}
    for i, arg in enumerate(argv):
        if arg == "-H":
            name, _, value = argv[i + 1].partition(": ")
            headers[name.lower()] = value
    answer = asyncio.run(gateway.handle(Request("POST", url.path, headers, {}, argv[argv.index("-d") + 1].encode())))
    assert answer.status == 200, answer.body
    reply = json.loads(answer.body)
    assert reply["model"] == SMOLLM
    assert reply["choices"][0]["message"]["content"]


def test_the_python_snippet_runs_with_the_openai_sdk(
    printed: tuple[dict[str, Any], Gateway], monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    data, gateway = printed

    class InProcessOpenAI(openai.OpenAI):
        def __init__(self, **kwargs: Any) -> None:
            transport = SDK_HTTP.MockTransport(lambda request: serve_in_process(gateway, request))
            super().__init__(**kwargs, http_client=openai.DefaultHttpxClient(transport=transport), max_retries=0)

    monkeypatch.setattr(openai, "OpenAI", InProcessOpenAI)
    exec(compile(data["python"], "<quickstart>", "exec"), {})
    printed_reply = capsys.readouterr().out.strip()
    assert printed_reply  # the fake backend echoes the prompt's words
    assert printed_reply in "Say hello in one short sentence."


# -- the serve banner names the step ----------------------------------------------------------------------


def serve_args(*argv: str) -> argparse.Namespace:
    return cli.parser().parse_args([*argv[:2], "serve", *argv[2:]] if argv[:1] == ("--data-dir",) else ["serve", *argv])


@pytest.mark.parametrize(
    ("argv", "under_make", "command"),
    [
        ((), True, "make quickstart"),
        (("--port", "9000"), True, "make quickstart PORT=9000"),
        (("--data-dir", "/srv/tn", "--host", "0.0.0.0"), True, "make quickstart DATA_DIR=/srv/tn HOST=0.0.0.0"),
        ((), False, "textnlp quickstart"),
        (("--data-dir", "/srv/tn", "--port", "9000"), False, "textnlp --data-dir /srv/tn quickstart --port 9000"),
    ],
)
def test_the_serve_banner_names_the_quickstart_for_this_server(
    argv: tuple[str, ...], under_make: bool, command: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.delenv("TEXTNLP_DATA_DIR", raising=False)
    monkeypatch.setenv("MAKELEVEL", "1" if under_make else "")
    monkeypatch.setattr("sys.argv", ["/usr/lib/python3/pytest"])
    assert cli.quickstart_command(serve_args(*argv)) == command


def test_the_banner_uses_the_textnlp_program_it_was_started_with(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("MAKELEVEL", raising=False)
    monkeypatch.delenv("TEXTNLP_DATA_DIR", raising=False)
    monkeypatch.setattr("sys.argv", [".venv/bin/textnlp", "serve"])
    assert cli.quickstart_command(serve_args()) == ".venv/bin/textnlp quickstart"


def test_quickstart_accepts_the_data_dir_before_or_after_the_command(tmp_path: Path) -> None:
    before = cli.parser().parse_args(["--data-dir", str(tmp_path), "quickstart"])
    after = cli.parser().parse_args(["quickstart", "--data-dir", str(tmp_path)])
    assert before.data_dir == after.data_dir == str(tmp_path)
    assert (before.host, before.port, before.func) == ("127.0.0.1", 8080, cli.quickstart)


def test_the_textnlp_command_prints_json_on_stdout_only(data_dir: Path, capsys: pytest.CaptureFixture[str]) -> None:
    code = cli.main(["--data-dir", str(data_dir), "quickstart", "--port", str(closed_port()), "--json"])
    captured = capsys.readouterr()
    assert code == 0
    assert json.loads(captured.out)["tenant_id"] == quickstart.DEMO_TENANT
    assert "Nothing answers" in captured.err


@pytest.mark.parametrize(
    ("status", "body", "verdict", "said"),
    [
        (200, "{}", "ok", "accepts this key and serves m"),
        (401, '{"error": {"message": "invalid API key", "code": "invalid_api_key"}}', "rejected", "another data"),
        (401, '{"error": {"message": "API key revoked", "code": "key_revoked"}}', "rejected", "401: API key revoked"),
        (403, '{"error": {"message": "tenant suspended"}}', "rejected", "answered 403: tenant suspended"),
        (404, "<html>not TextNLP</html>", "rejected", "answered 404: <html>not TextNLP</html>"),
    ],
)
def test_what_the_server_check_says(
    status: int, body: str, verdict: str, said: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    seen: dict[str, Any] = {}

    def get(url: str, **kwargs: Any) -> httpx.Response:
        seen.update(url=url, **kwargs)
        return httpx.Response(status, text=body)

    monkeypatch.setattr(httpx, "get", get)
    assert quickstart.check_server("http://127.0.0.1:8080", "tnlp_key_x_y", "m")[0] == verdict
    assert said in quickstart.check_server("http://127.0.0.1:8080", "tnlp_key_x_y", "m")[1]
    assert seen["url"] == "http://127.0.0.1:8080/v1/models/m"
    assert seen["headers"] == {"authorization": "Bearer tnlp_key_x_y"}
