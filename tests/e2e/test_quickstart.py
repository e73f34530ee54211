"""The first five minutes, as a new user lives them: ``serve`` names the quickstart command, that command
prints a curl line and a Python snippet, and both work exactly as printed against the running server.

Nothing is rebuilt from parts: the command is cut from the server's banner, the curl line is run with
``bash -c`` and the snippet with this venv's python.
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.e2e import _support
from tests.e2e._support import FAKE_GEN, ROOT, Server

pytestmark = pytest.mark.e2e

SMOLLM = "smollm2-135m-instruct"
STATUS_SUFFIX = " -w '\\n%{http_code}'"  # appended to the printed line: curl then ends with the HTTP status


@pytest.fixture(scope="module")
def qs_server(e2e_dir: Path, fake_openai: str) -> Iterator[Server]:
    """A server of its own (quickstart writes its store); not under make, so the banner names ``textnlp``."""
    with _support.run_server(e2e_dir / "data-quickstart", fake_base_url=fake_openai, env={"MAKELEVEL": ""}) as srv:
        yield srv


def clean_env() -> dict[str, str]:
    env = {k: v for k, v in os.environ.items() if k not in ("TEXTNLP_DATA_DIR", "TEXTNLP_ADMIN_KEY", "MAKELEVEL")}
    return {**env, "TEXTNLP_LOG_LEVEL": "WARNING"}


def shell(line: str, timeout: float = 240) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        ["bash", "-c", line], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=timeout, check=False
    )


def banner_command(server: Server) -> str:
    """The command ``serve`` told the user to run in another terminal."""
    banner = server.proc.stdout_path.read_text()
    found = re.search(r"First call: run `([^`]+)` in another terminal", banner)
    assert found, banner
    return found.group(1)


def snippets(stdout: str) -> tuple[str, str]:
    """The curl line and the Python program, as a user would copy them from the terminal."""
    curl = [line for line in stdout.splitlines() if line.startswith("curl ")]
    assert len(curl) == 1, stdout
    python = stdout.split("# Python", 1)[1].split("\n", 1)[1]
    return curl[0], python


def quickstart(server: Server, *extra: str) -> tuple[str, str, str]:
    """Run the banner's command (plus ``extra``); returns (curl line, python snippet, stderr)."""
    done = shell(banner_command(server) + "".join(f" {arg}" for arg in extra), timeout=60)
    assert done.returncode == 0, done.stderr
    curl, python = snippets(done.stdout)
    return curl, python, done.stderr


def run_curl(line: str) -> tuple[int, str]:
    done = shell(line + STATUS_SUFFIX)
    assert done.returncode == 0, done.stderr
    body, _, status = done.stdout.rpartition("\n")
    return int(status), body


def assert_generated(line: str, model: str) -> str:
    status, body = run_curl(line)
    assert status == 200, body
    reply = json.loads(body)
    assert reply["object"] == "chat.completion"
    assert reply["model"] == model
    text: str = reply["choices"][0]["message"]["content"]
    assert text.strip(), reply
    return text


def run_python(snippet: str) -> str:
    done = subprocess.run(
        [sys.executable, "-c", snippet], cwd=ROOT, env=clean_env(), capture_output=True, text=True, timeout=240
    )
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip(), done.stderr
    return done.stdout


def test_the_banner_names_a_command_for_this_server(qs_server: Server) -> None:
    command = banner_command(qs_server)
    port = qs_server.base_url.rsplit(":", 1)[1]
    assert command == f"{_support.VENV_BIN / 'textnlp'} --data-dir {qs_server.data_dir} quickstart --port {port}"


def test_the_printed_lines_work_as_printed(qs_server: Server) -> None:
    curl, python, err = quickstart(qs_server, "--model", FAKE_GEN)
    assert f"The server on {qs_server.base_url} accepts this key" in err
    assert assert_generated(curl, FAKE_GEN) == "Say hello in one short sentence."  # the fake echoes
    assert run_python(python).strip() == "Say hello in one short sentence."


def test_running_it_again_keeps_one_demo_tenant_and_retires_the_earlier_key(qs_server: Server) -> None:
    first_curl, _, _ = quickstart(qs_server, "--model", FAKE_GEN)
    second_curl, _, err = quickstart(qs_server, "--model", FAKE_GEN)
    assert "Demo tenant ten_demo: already there." in err
    tenants = qs_server.admin.get("/admin/tenants").json()["data"]
    assert [t["id"] for t in tenants if t["name"] == "demo"] == ["ten_demo"]
    assert_generated(second_curl, FAKE_GEN)
    deadline = time.monotonic() + 5  # the server caches key records for TEXTNLP_KEY_CACHE_TTL (0.2 s here)
    while (status := run_curl(first_curl)[0]) == 200 and time.monotonic() < deadline:
        time.sleep(0.1)
    assert status == 401


def test_a_server_on_another_data_dir_is_reported(qs_server: Server, tmp_path: Path) -> None:
    port = qs_server.base_url.rsplit(":", 1)[1]
    done = shell(f"{_support.VENV_BIN / 'textnlp'} --data-dir {tmp_path / 'other'} quickstart --port {port}", 60)
    assert done.returncode == 1
    assert "does not know this key: it serves another data directory" in done.stderr
    assert "Created the first admin key" in done.stderr  # that other directory was new: its key is not lost


def test_before_the_server_starts_it_says_so_and_the_lines_work_once_it_runs(
    e2e_dir: Path, fake_openai: str, tmp_path: Path
) -> None:
    data_dir = e2e_dir / "data-quickstart-first"
    port = _support.free_port()
    textnlp = _support.VENV_BIN / "textnlp"
    done = shell(f"{textnlp} --data-dir {data_dir} quickstart --port {port} --model {SMOLLM}", 60)
    assert done.returncode == 0, done.stderr
    assert f"Nothing answers on http://127.0.0.1:{port} yet" in done.stderr
    assert "Created the first admin key" in done.stderr
    curl, python = snippets(done.stdout)
    # The server's start then finds the store set up: it prints no second admin key.
    argv = [str(textnlp), "--data-dir", str(data_dir), "serve", "--port", str(port)]
    proc = _support.spawn(f"textnlp-first-{port}", argv, tmp_path / "logs", clean_env())
    try:
        _support.wait_http(proc, f"http://127.0.0.1:{port}/health")
        assert "Created the first admin key" not in proc.stdout_path.read_text()
        status, body = run_curl(curl)
        assert status not in (401, 403), body  # the key is known and may generate
        if status == 200:  # the real model is installed
            assert json.loads(body)["choices"][0]["message"]["content"].strip()
            assert run_python(python).strip()
    finally:
        proc.stop()


@pytest.mark.model
def test_real_smollm2_answers_the_printed_lines(qs_server: Server) -> None:
    curl, python, err = quickstart(qs_server)
    assert f"accepts this key and serves {SMOLLM}" in err
    assert assert_generated(curl, SMOLLM)
    assert run_python(python).strip()
