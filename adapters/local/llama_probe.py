"""Does llama.cpp run on this machine? Asked in a child process, so that a crash cannot take the caller down.

A llama-cpp-python built for another CPU (``-march=native`` on a machine with AMX or AVX-512, say) dies
with SIGILL the first time a model is evaluated: in a server that is a dead worker and a dropped
connection. ``check`` loads the model in a child process and generates a few tokens there; a crash
becomes a ``BackendError`` that says what happened and how to mend it. A success is remembered in a file
keyed by the library, the model and the CPU, so later starts pay nothing.

Run as ``python -m adapters.local.llama_probe MODEL_PATH``: exit status 0 and ``ok`` when it works.
"""

from __future__ import annotations

import hashlib
import importlib.util
import os
import platform
import signal
import subprocess  # nosec B404 - runs this module with this interpreter
import sys
import tempfile
from pathlib import Path
from typing import Any

from core.errors import BackendError

PROBE_TIMEOUT_S = 120.0
REBUILD_HINT = "rebuild it with portable flags: rm -rf .venv && make install (see scripts/llama-wheel.sh)"


def _library_files() -> list[Path]:
    spec = importlib.util.find_spec("llama_cpp")
    folders = [Path(p) / "lib" for p in (spec.submodule_search_locations or [])] if spec else []
    return sorted(p for folder in folders if folder.is_dir() for p in folder.iterdir() if p.is_file())


def _cpu_flags() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith(("flags", "Features")):
                return line
    except OSError:
        pass
    return platform.processor()


def verdict_key(model_path: str) -> str:
    """What decides whether the library runs here: its files, the model file, the machine and its CPU."""
    digest = hashlib.sha256()
    for path in [*_library_files(), Path(model_path)]:
        stat = path.stat()
        digest.update(f"{path}|{stat.st_size}|{stat.st_mtime_ns}\n".encode())
    digest.update(f"{platform.machine()}|{_cpu_flags()}".encode())
    return digest.hexdigest()[:24]


def _verdict_file(model_path: str) -> Path:
    return Path(tempfile.gettempdir()) / f"textnlp-llama-ok-{verdict_key(model_path)}"


def describe_failure(returncode: int, stderr: str) -> str:
    if returncode < 0:
        name = signal.Signals(-returncode).name
        if -returncode == signal.SIGILL:
            return (
                "llama.cpp crashed with SIGILL (illegal instruction) on this CPU: the installed llama-cpp-python "
                f"was compiled for another processor; {REBUILD_HINT}"
            )
        return f"llama.cpp crashed with {name} while loading the model; {REBUILD_HINT}"
    tail = stderr.strip().splitlines()[-1:] or ["no output"]
    return f"the local model could not be loaded ({tail[0]})"


def check(model_path: str) -> None:
    """``run``, unless it already passed with this library, model and CPU."""
    marker = _verdict_file(model_path)
    if not marker.exists():
        run(model_path)
        marker.touch()


def run(model_path: str) -> None:
    """Raise ``BackendError`` (503 ``model_unavailable``) unless a child process can run the model."""
    try:
        done = subprocess.run(  # noqa: S603  # nosec B603 - this interpreter and module, no shell
            [sys.executable, "-m", __name__, model_path],
            capture_output=True,
            text=True,
            timeout=PROBE_TIMEOUT_S,
            check=False,
            env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)},
        )
    except subprocess.TimeoutExpired:
        raise BackendError(
            f"the local model did not load within {PROBE_TIMEOUT_S:g} s", status=503, code="model_unavailable"
        ) from None
    if done.returncode != 0 or done.stdout.strip() != "ok":
        raise BackendError(describe_failure(done.returncode, done.stderr), status=503, code="model_unavailable")


def _probe(model_path: str) -> None:
    import llama_cpp

    llama = llama_cpp.Llama(model_path=model_path, n_ctx=128, n_threads=os.cpu_count() or 1, verbose=False)
    out: Any = llama.create_completion("The capital of France is", max_tokens=4, temperature=0)
    if not out["choices"][0]["text"]:
        raise SystemExit("the model generated nothing")
    print("ok")


if __name__ == "__main__":
    _probe(sys.argv[1])
