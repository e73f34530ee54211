"""Timing fresh processes for the cold-start benches (``aws_cold_start``, ``gcp_cold_start``, ``azure_cold_start``).

A child is ``python -c CODE ARGS...`` in the repository with the bench's environment, pinned to the measured CPUs;
it prints a JSON line with ``cpu_ms`` (its CPU time by then) when it is done, after whatever the code under test
logs. Wall time is from spawning it to that line: the interpreter's start, imports, clients, the first request.
"""

from __future__ import annotations

import json
import os
import statistics
import subprocess
import sys
import time
from typing import Any

from bench._procs import ROOT, pin

#: (wall seconds, CPU seconds) of one run.
Run = tuple[float, float]


def timed_child(argv: list[str], env: dict[str, str], cpus: set[int] | None) -> tuple[float, dict[str, Any]]:
    """Run ``python -c argv...``; (wall seconds from spawning it to its result line, that line as JSON)."""
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, "-c", *argv],
        cwd=ROOT,
        env={**os.environ, **env},
        stdout=subprocess.PIPE,
        stderr=subprocess.DEVNULL,
        text=True,
    )
    pin(proc.pid, cpus)
    assert proc.stdout is not None
    for line in proc.stdout:  # log and metric lines may come first
        data = json.loads(line) if line.startswith("{") and '"cpu_ms"' in line else None
        if isinstance(data, dict):
            elapsed = time.perf_counter() - t0
            proc.wait()
            return elapsed, data
    proc.wait()
    raise RuntimeError(f"the child printed no result (exit {proc.returncode})")


def floor_run(argv: list[str], env: dict[str, str], cpus: set[int] | None) -> Run:
    elapsed, data = timed_child(argv, env, cpus)
    return elapsed, data["cpu_ms"] / 1000


def gateway_run(argv: list[str], env: dict[str, str], cpus: set[int] | None) -> tuple[float, float, dict[str, Any]]:
    """A fresh function process through its first answer, which must be a 200; (wall, CPU, the child's line)."""
    elapsed, data = timed_child(argv, env, cpus)
    if data["status"] != 200:
        raise RuntimeError(f"the first request was answered {data['status']}")
    return elapsed, data["cpu_ms"] / 1000, data


def ratio_row(label: str, runs: list[Run], floor: list[Run] | None = None, width: int = 60) -> str:
    """A line of medians: wall ms, CPU ms, and with ``floor`` the ratios to it and the wall ms over it."""
    wall = statistics.median(r[0] for r in runs) * 1000
    cpu = statistics.median(r[1] for r in runs) * 1000
    text = f"  {label:<{width}} {wall:6.0f} ms  cpu {cpu:5.0f} ms"
    if floor is None:
        return text + "   1.00x"
    floor_wall = statistics.median(r[0] for r in floor) * 1000
    floor_cpu = statistics.median(r[1] for r in floor) * 1000
    return text + f"   {wall / floor_wall:4.2f}x (cpu {cpu / floor_cpu:4.2f}x)   {wall - floor_wall:+5.0f} ms"


__all__ = ["Run", "floor_run", "gateway_run", "ratio_row", "timed_child"]
