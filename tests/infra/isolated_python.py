"""Running a probe in a bare CPython 3.12, as Lambda would: no site-packages, no bytecode written."""

from __future__ import annotations

import json
import os
import subprocess
from pathlib import Path
from typing import Any


def run_probe(interpreter: Path, source: str, path: Path, *args: str, cwd: Path) -> Any:
    """Run ``source`` with only ``path`` importable (``-S -B``, ``PYTHONDONTWRITEBYTECODE``); its JSON output."""
    done = subprocess.run(
        [str(interpreter), "-S", "-B", "-c", source, str(path), *args],
        cwd=cwd,
        env={"PYTHONPATH": str(path), "PYTHONDONTWRITEBYTECODE": "1", "HOME": str(cwd), "PATH": os.defpath},
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    return json.loads(done.stdout)
