"""Cold start of the local server, against the floor of Python + what the function needs.

Gateway: ``textnlp serve --workers 1`` on a seeded data dir (admin key, a model routed to the fake
backend); from process start to the first answered authenticated GET /v1/models, then to the first
POST /v1/chat/completions through to the fake (which pays the lazy backend import and connect).
Floor: a fresh ``python -c "import pydantic, jwt, uvicorn"`` process serving a minimal raw ASGI app
under uvicorn (httptools, uvloop), to its first answer. Medians of several runs.
Then the heaviest imports of ``functions.local.asgi:create_app`` from ``python -X importtime``.

    python -m bench.cold_start [--runs 5] [--top 15]
"""

from __future__ import annotations

import argparse
import http.client
import json
import os
import re
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from adapters.openai_compat.backend import CLIENT_ENV
from bench._procs import ADMIN_KEY, ROOT, free_port, start_fake, stop

FLOOR_APP = """
import pydantic, jwt, uvicorn
async def app(scope, receive, send):
    if scope["type"] != "http":
        return
    await send({"type": "http.response.start", "status": 200, "headers": [(b"content-type", b"application/json")]})
    await send({"type": "http.response.body", "body": b'{"object":"list","data":[]}'})
uvicorn.run(app, host="127.0.0.1", port=PORT, http="httptools", loop="uvloop", lifespan="off",
            log_level="warning", access_log=False)
"""
CHAT = {"model": "bench", "messages": [{"role": "user", "content": "hello cold start"}], "max_tokens": 8}


def _first_answer(
    port: int, method: str, path: str, body: bytes | None, key: str | None, t0: float, proc: subprocess.Popen[bytes]
) -> float:
    """Seconds from t0 until the request is answered 200, retrying while nothing listens."""
    headers = {"Content-Type": "application/json"}
    if key:
        headers["Authorization"] = f"Bearer {key}"
    deadline = t0 + 60
    while time.perf_counter() < deadline:
        conn = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
        try:
            conn.request(method, path, body=body, headers=headers)
            response = conn.getresponse()
            data = response.read()
            if response.status != 200:
                raise RuntimeError(f"{method} {path}: {response.status} {data[:300]!r}")
            return time.perf_counter() - t0
        except (ConnectionRefusedError, ConnectionResetError):
            if proc.poll() is not None:
                raise RuntimeError(f"the server exited with {proc.returncode}") from None
            time.sleep(0.001)
        finally:
            conn.close()
    raise RuntimeError("no answer within 60 s")


def _spawn(args: list[str], env: dict[str, str] | None = None) -> tuple[float, subprocess.Popen[bytes]]:
    t0 = time.perf_counter()
    proc = subprocess.Popen(
        [sys.executable, *args],
        cwd=ROOT,
        env={**os.environ, **(env or {})},
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    return t0, proc


def python_floor(runs: int) -> float:
    samples = []
    for _ in range(runs):
        t0 = time.perf_counter()
        subprocess.run([sys.executable, "-c", "pass"], check=True)
        samples.append(time.perf_counter() - t0)
    return statistics.median(samples)


def floor_runs(runs: int) -> list[float]:
    samples = []
    for _ in range(runs):
        port = free_port()
        t0, proc = _spawn(["-c", FLOOR_APP.replace("PORT", str(port))])
        try:
            samples.append(_first_answer(port, "GET", "/v1/models", None, ADMIN_KEY, t0, proc))
        finally:
            stop(proc)
    return samples


def seed_data_dir(data_dir: Path, fake_port: int) -> None:
    from core.domain import ModelSpec
    from functions.local.bootstrap import open_store, seed

    store = open_store(data_dir)
    seed(store, ADMIN_KEY)
    store.put_model(
        ModelSpec(
            id="bench",
            kind="generation",
            context_length=4096,
            max_output_tokens=64,
            backend={"type": "openai", "base_url": f"http://127.0.0.1:{fake_port}/v1", "model": "m"},
        )
    )
    store.close()


def gateway_runs(runs: int, data_dir: Path, env: dict[str, str] | None = None) -> list[tuple[float, float]]:
    samples = []
    body = json.dumps(CHAT).encode()
    for _ in range(runs):
        port = free_port()
        t0, proc = _spawn(
            ["-m", "functions.local.cli", "--data-dir", str(data_dir), "serve", "--port", str(port), "--workers", "1"],
            env={"TEXTNLP_ADMIN_KEY": ADMIN_KEY, **(env or {})},
        )
        try:
            models = _first_answer(port, "GET", "/v1/models", None, ADMIN_KEY, t0, proc)
            chat = _first_answer(port, "POST", "/v1/chat/completions", body, ADMIN_KEY, t0, proc)
            samples.append((models, chat))
        finally:
            stop(proc)
    return samples


_IMPORT_LINE = re.compile(r"^import time:\s+(\d+) \|\s+(\d+) \| (\s*)(\S+)$")


def import_profile(statement: str) -> list[tuple[int, int, int, str]]:
    """(self us, cumulative us, depth, module) for each import, from ``python -X importtime``."""
    out = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", statement], cwd=ROOT, capture_output=True, text=True, check=True
    )
    rows = []
    for line in out.stderr.splitlines():
        m = _IMPORT_LINE.match(line)
        if m:
            rows.append((int(m.group(1)), int(m.group(2)), len(m.group(3)) // 2, m.group(4)))
    return rows


def print_import_report(statement: str, floor_statement: str, top: int) -> None:
    """``-X importtime`` of ``statement`` against the floor's: the heaviest subtrees and the modules the floor
    does not import, by their own time."""
    rows = import_profile(statement)
    floor_rows = import_profile(floor_statement)
    floor_mods = {r[3] for r in floor_rows}
    total = sum(r[0] for r in rows)
    print(
        f"\n  -X importtime of `{statement}`: {total / 1000:.0f} ms of imports in total "
        f"(floor `{floor_statement}`: {sum(r[0] for r in floor_rows) / 1000:.0f} ms)"
    )
    print(f"  top {top} imports by cumulative time, depth 1-3 (* = not imported by the floor):")
    subtrees = sorted((r for r in rows if 1 <= r[2] <= 3), key=lambda r: -r[1])[:top]
    for _self_us, cum_us, depth, name in subtrees:
        star = " " if name in floor_mods else "*"
        print(f"    {star} {cum_us / 1000:7.1f} ms  {'  ' * (depth - 1)}{name}")
    print(f"  top {top} modules by own (self) time, not in the floor:")
    extra = [r for r in rows if r[3] not in floor_mods]
    for self_us, _cum_us, _depth, name in sorted(extra, key=lambda r: -r[0])[:top]:
        print(f"      {self_us / 1000:7.1f} ms  {name}")
    print(f"  not in the floor: {sum(r[0] for r in extra) / 1000:.0f} ms of imports over {len(extra)} modules")


def in_process_phases() -> tuple[float, float]:
    """Import time and create_app() time of the ASGI factory in a fresh process (ms)."""
    code = (
        "import time, json; t0 = time.perf_counter()\n"
        "from functions.local.asgi import create_app\n"
        "t1 = time.perf_counter(); app = create_app(); t2 = time.perf_counter()\n"
        "print(json.dumps([1000 * (t1 - t0), 1000 * (t2 - t1)]))\n"
    )
    with tempfile.TemporaryDirectory() as tmp:
        out = subprocess.run(
            [sys.executable, "-c", code],
            cwd=ROOT,
            capture_output=True,
            text=True,
            check=True,
            env={**os.environ, "TEXTNLP_DATA_DIR": tmp, "TEXTNLP_LOG_LEVEL": "WARNING"},
        )
    imp, create = json.loads(out.stdout.strip().splitlines()[-1])
    return imp, create


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    print("== cold start: process start -> first answered request (median of runs) ==")
    bare = python_floor(args.runs)
    floor = statistics.median(floor_runs(args.runs))
    with tempfile.TemporaryDirectory(prefix="textnlp-cold-") as tmp:
        fake_port = free_port()
        fake = start_fake(fake_port)
        try:
            seed_data_dir(Path(tmp), fake_port)
            gateway_runs(1, Path(tmp))  # page cache and .pyc warm, like every later container start
            runs = gateway_runs(args.runs, Path(tmp))
            httpx_runs = gateway_runs(args.runs, Path(tmp), {CLIENT_ENV: "httpx"})
        finally:
            stop(fake)
    models = statistics.median(r[0] for r in runs)
    chat = statistics.median(r[1] for r in runs)
    print(f"  python -c pass (interpreter alone)              {bare * 1000:7.0f} ms")
    print(f"  floor: pydantic+jwt+uvicorn raw ASGI, 1st answer {floor * 1000:7.0f} ms   1.00x")
    print(
        f"  gateway: 1st authenticated GET /v1/models        {models * 1000:7.0f} ms   {models / floor:4.2f}x"
        f"   (+{(models - floor) * 1000:.0f} ms over the floor)"
    )
    print(
        f"  gateway: + 1st POST /v1/chat/completions (fake)  {chat * 1000:7.0f} ms   {chat / floor:4.2f}x"
        f"   (chat alone {(chat - models) * 1000:.0f} ms)"
    )
    httpx_chat = statistics.median(r[1] - r[0] for r in httpx_runs)
    print(
        f"     the same first chat with {CLIENT_ENV}=httpx: chat alone {httpx_chat * 1000:.0f} ms "
        f"({httpx_chat / (chat - models):.1f}x; httpx is imported on first use)"
    )
    imp, create = in_process_phases()
    print(f"  in a fresh process: import functions.local.asgi {imp:.0f} ms, create_app() {create:.0f} ms")

    print_import_report("from functions.local.asgi import create_app", "import pydantic, jwt, uvicorn", args.top)


if __name__ == "__main__":
    main()
