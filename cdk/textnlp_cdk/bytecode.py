"""Bytecode for the Lambda packages: ``.pyc`` files compiled by CPython 3.12, the runtime's Python.

Lambda's file system is read-only: a package without ``__pycache__`` is compiled from source on every cold
start (about 2 s more for the api function). So the code asset and the dependency layer are byte-compiled at
build time, by a CPython 3.12 of this machine (a ``.pyc`` whose magic number is not the runtime's is ignored),
with ``--invalidation-mode unchecked-hash``: no source timestamps in the header (reproducible output), and
the runtime does not even hash the source to check it (deployed files never change).

Standard library only (no aws_cdk): tests and tools can import it.
"""

from __future__ import annotations

import os
import re
import shutil
import subprocess
import sys
from collections.abc import Sequence
from functools import cache
from pathlib import Path

LAMBDA_PYTHON = (3, 12)
#: Where to look for CPython 3.12 first (a path to the interpreter).
PYTHON312_ENV = "TEXTNLP_PYTHON312"
#: Written at the root of a package that was built without bytecode (no CPython 3.12 found).
NO_BYTECODE = "NO_BYTECODE.txt"
#: PEP 552 hash-based .pyc, not checked against the source at import.
INVALIDATION_MODE = "unchecked-hash"


def _is_python312(candidate: str) -> Path | None:
    """The interpreter ``candidate`` runs (its ``sys.executable``: a pyenv shim resolved) if it is CPython 3.12."""
    try:
        probe = subprocess.run(  # noqa: S603 - an interpreter path, fixed arguments, no shell
            [
                candidate,
                "-c",
                "import sys; print(sys.implementation.name, *sys.version_info[:2]); print(sys.executable)",
            ],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except OSError:
        return None
    lines = probe.stdout.splitlines()
    wanted = f"cpython {LAMBDA_PYTHON[0]} {LAMBDA_PYTHON[1]}"
    if probe.returncode == 0 and len(lines) == 2 and lines[0] == wanted and lines[1]:
        return Path(lines[1])
    return None


@cache
def python312() -> Path | None:
    """A CPython 3.12 on this machine: ``$TEXTNLP_PYTHON312``, this interpreter, ``python3.12`` on PATH, then
    pyenv's versions (newest first); ``None`` if there is none. Cached: one answer per process."""
    if sys.implementation.name == "cpython" and sys.version_info[:2] == LAMBDA_PYTHON and sys.executable:
        here: str | None = sys.executable
    else:
        here = None
    candidates = [os.environ.get(PYTHON312_ENV), here, shutil.which("python3.12")]
    pyenv = Path(os.environ.get("PYENV_ROOT") or Path.home() / ".pyenv")
    candidates += [str(p) for p in sorted(pyenv.glob("versions/3.12*/bin/python3.12"), reverse=True)]
    for candidate in filter(None, candidates):
        found = _is_python312(candidate)
        if found is not None:
            return found
    return None


def recipe() -> str:
    """What the bytecode step does on this machine, for asset hashes: a package built without bytecode must
    not share its hash with one built with it (the deploy would keep whichever was uploaded first)."""
    if python312() is None:
        return "no-bytecode"
    return f"cpython-{LAMBDA_PYTHON[0]}{LAMBDA_PYTHON[1]} {INVALIDATION_MODE}"


def skip_dirs_regex(root: str, names: Sequence[str]) -> str:
    """compileall's ``-x`` (matched against full paths): directories called ``names`` below ``root`` only."""
    alternatives = "|".join(re.escape(n) for n in names)
    return f"^{re.escape(root.rstrip('/'))}/(?:.*/)?(?:{alternatives})/"


def compileall_command(
    python: str, root: str, lambda_path: str, *, jobs: int = 0, skip_dirs: Sequence[str] = ()
) -> list[str]:
    """Byte-compile every ``.py`` under ``root``, which Lambda mounts at ``lambda_path`` (``/var/task``,
    ``/opt/python``). ``jobs=0``: one worker per CPU (worth it for the layer's ~2000 files, not the code's 120)."""
    command = [python, "-m", "compileall", "-q", f"-j{jobs}", "--invalidation-mode", INVALIDATION_MODE]
    if skip_dirs:
        command += ["-x", skip_dirs_regex(root, skip_dirs)]
    return [*command, "-s", root, "-p", lambda_path, root]


def compile_tree(root: Path, lambda_path: str, *, what: str, jobs: int = 0, skip_dirs: Sequence[str] = ()) -> bool:
    """Byte-compile ``root`` with CPython 3.12. Without one: print a warning, write NO_BYTECODE.txt in
    ``root`` and return ``False`` (the package still works, its cold starts are slower). A file that does not
    compile raises (it would not import either)."""
    python = python312()
    if python is None:
        message = (
            f"no CPython {LAMBDA_PYTHON[0]}.{LAMBDA_PYTHON[1]} found (${PYTHON312_ENV}, PATH, pyenv): {what} is "
            "built without .pyc files, so every Lambda cold start compiles its modules from source (~2 s more)"
        )
        print(f"WARNING: {message}", file=sys.stderr)
        (root / NO_BYTECODE).write_text(f"{message}.\nInstall Python 3.12 (or set ${PYTHON312_ENV}) and synth again.\n")
        return False
    # Reproducible bytecode: ``-s``/``-p`` put the Lambda path, not the build folder, in ``co_filename``, and a
    # fixed hash seed keeps the order of frozenset constants (``x in {"a", "b"}``) from one build to the next.
    # The caller's other PYTHON* variables (PYTHONPATH, PYTHONHOME) are not for this interpreter.
    env = {k: v for k, v in os.environ.items() if not k.startswith("PYTHON")}
    env["PYTHONHASHSEED"] = "0"
    command = compileall_command(str(python), str(root), lambda_path, jobs=jobs, skip_dirs=skip_dirs)
    done = subprocess.run(command, env=env, capture_output=True, text=True, check=False)  # noqa: S603
    if done.returncode != 0:
        raise RuntimeError(
            f"byte-compiling {what} ({root}) failed: a file that does not compile would not import either "
            f"(a third-party folder never imported can go in skip_dirs):\n{done.stdout}{done.stderr}"
        )
    return True


def cached(source: Path) -> Path:
    """Where python3.12 looks for the bytecode of ``source`` (``importlib.util.cache_from_source`` there)."""
    return source.parent / "__pycache__" / f"{source.stem}.cpython-{LAMBDA_PYTHON[0]}{LAMBDA_PYTHON[1]}.pyc"


def pyc_flags(pyc: Path) -> int:
    """The flags field of a ``.pyc`` header (PEP 552): 0 timestamp, 0b01 unchecked hash, 0b11 checked hash."""
    with pyc.open("rb") as f:
        header = f.read(8)
    return int.from_bytes(header[4:8], "little")
