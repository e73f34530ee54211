"""The llama.cpp build is checked in a child process: a CPU it was not built for fails clearly, not fatally."""

from __future__ import annotations

import signal
import stat
import subprocess
import sys
from pathlib import Path

import pytest

from adapters.local import llama_probe
from adapters.local.llama_backend import LlamaCppBackend, default_model_path
from core.errors import BackendError


@pytest.mark.model
def test_the_installed_build_generates_in_a_child_process() -> None:
    """The check every test of the real model relies on: if this build crashes on this CPU, say so here."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (textnlp[local])")
    path = default_model_path()
    done = subprocess.run(
        [sys.executable, "-m", "adapters.local.llama_probe", path], capture_output=True, text=True, timeout=120
    )
    why = llama_probe.describe_failure(done.returncode, done.stderr)
    assert done.returncode == 0, why
    assert done.stdout.strip() == "ok", why
    llama_probe.run(path)  # the same through the function the backend calls


def _fake_interpreter(tmp_path: Path, body: str) -> str:
    script = tmp_path / "python"
    script.write_text(f"#!/bin/sh\n{body}\n")
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return str(script)


def test_an_illegal_instruction_becomes_a_503_that_says_how_to_rebuild(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr(sys, "executable", _fake_interpreter(tmp_path, "kill -ILL $$"))
    with pytest.raises(BackendError) as caught:
        llama_probe.run(str(model))
    assert (caught.value.status, caught.value.code) == (503, "model_unavailable")
    assert "SIGILL" in caught.value.message
    assert "make install" in caught.value.message


def test_other_crashes_and_failures_are_named() -> None:
    assert "SIGSEGV" in llama_probe.describe_failure(-signal.SIGSEGV, "")
    assert "bad magic" in llama_probe.describe_failure(1, "Traceback ...\nValueError: bad magic\n")


def test_a_backend_whose_model_cannot_run_fails_every_call_clearly_and_probes_once(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (textnlp[local])")
    model = tmp_path / "model.gguf"
    model.write_bytes(b"not a model")
    calls: list[str] = []

    def crashing(path: str) -> None:
        calls.append(path)
        raise BackendError(llama_probe.describe_failure(-signal.SIGILL, ""), status=503, code="model_unavailable")

    monkeypatch.setattr(llama_probe, "check", crashing)
    backend = LlamaCppBackend(model_path=str(model))
    for _ in range(3):
        with pytest.raises(BackendError, match="SIGILL"):
            backend.load()
    assert calls == [str(model)]


def test_a_success_is_remembered_per_library_model_and_cpu(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    model = tmp_path / "model.gguf"
    model.write_bytes(b"GGUF")
    monkeypatch.setattr(llama_probe.tempfile, "gettempdir", lambda: str(tmp_path))
    ran: list[str] = []
    monkeypatch.setattr(llama_probe, "run", ran.append)
    llama_probe.check(str(model))
    llama_probe.check(str(model))
    assert ran == [str(model)]
    model.write_bytes(b"GGUF, another model")  # another file: asked again
    llama_probe.check(str(model))
    assert len(ran) == 2


def test_the_local_runtime_answers_a_clear_503_when_the_model_cannot_run(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Not a dead worker: the first call (and every later one) is a 503 in the error shape."""
    pytest.importorskip("llama_cpp", reason="llama-cpp-python is not installed (textnlp[local])")
    import asyncio
    import json

    from core.http import Request
    from functions.local.bootstrap import LocalSettings, build_gateway, open_store, seed

    def crashing(path: str) -> None:
        raise BackendError(llama_probe.describe_failure(-signal.SIGILL, ""), status=503, code="model_unavailable")

    monkeypatch.setattr(llama_probe, "check", crashing)
    settings = LocalSettings(data_dir=tmp_path)
    seed(open_store(tmp_path), "probe-admin-key-0123456789")
    gateway, _, _ = build_gateway(settings)
    body = {"model": "smollm2-135m-instruct", "messages": [{"role": "user", "content": "Hi"}], "max_tokens": 4}
    headers = {"authorization": "Bearer probe-admin-key-0123456789"}
    for _ in range(2):
        request = Request("POST", "/v1/chat/completions", headers, {}, json.dumps(body).encode())
        response = asyncio.run(gateway.handle(request))
        assert response.status == 503
        error = json.loads(response.body)["error"]
        assert error["code"] == "model_unavailable"
        assert "SIGILL" in error["message"]
