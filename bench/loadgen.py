"""A small HTTP/1.1 keep-alive load generator on raw asyncio protocols (uvloop when installed).

N connections each send requests back-to-back (closed loop). Responses are framed by
Content-Length or chunked transfer encoding. One process drives ~20k req/s against a server that
answers at once, far above what the gateway or the fake backend serve, so it is not the bottleneck.

    python -m bench.loadgen --url http://127.0.0.1:9100/v1/chat/completions --body '{...}' -c 8 -d 5
    python -m bench.loadgen --sink --port 9200        # a raw responder, to measure the ceiling

``run_load`` starts one or more loadgen processes (optionally pinned to CPUs) and merges results.
"""

from __future__ import annotations

import argparse
import asyncio
import functools
import json
import os
import resource
import subprocess
import sys
import time
from array import array
from collections import Counter
from dataclasses import dataclass, field
from typing import cast
from urllib.parse import urlsplit

_CRLF2 = b"\r\n\r\n"


def build_request(host: str, port: int, method: str, path: str, body: bytes, headers: dict[str, str]) -> bytes:
    lines = [f"{method} {path} HTTP/1.1", f"Host: {host}:{port}"]
    lines += [f"{k}: {v}" for k, v in headers.items()]
    if body or method in ("POST", "PUT", "PATCH"):
        lines.append(f"Content-Length: {len(body)}")
    return ("\r\n".join(lines) + "\r\n\r\n").encode("latin-1") + body


class _Run:
    """Shared state of one load run in this process."""

    def __init__(self, requests: list[bytes], warmup_s: float, duration_s: float) -> None:
        self.requests = requests
        now = time.perf_counter()
        self.measure_from = now + warmup_s
        self.stop_at = self.measure_from + duration_s
        self.latencies = array("d")
        self.statuses: Counter[int] = Counter()
        self.errors = 0
        self.done = 0  # responses inside the measured window
        self.total = 0  # every response, warm-up and stragglers included
        self.sent = 0

    def next_request(self) -> bytes:
        self.sent += 1
        return self.requests[self.sent % len(self.requests)]


class _Conn(asyncio.Protocol):
    """One keep-alive connection sending a request as soon as the previous response ends."""

    def __init__(self, run: _Run, finished: asyncio.Future[None]) -> None:
        self.run = run
        self.finished = finished
        self.transport: asyncio.Transport | None = None
        self.buf = bytearray()
        self.started = 0.0
        self.header_end = -1
        self.status = 0
        self.length = -1  # Content-Length; -2 for chunked
        self.scan = 0  # chunked: offset of the next chunk-size line
        self.close_after = False

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass
        self._send()

    def connection_lost(self, exc: Exception | None) -> None:
        if self.header_end != -1 or self.buf:
            self.run.errors += 1
        if not self.finished.done():
            self.finished.set_result(None)

    def _send(self) -> None:
        assert self.transport is not None
        self.buf.clear()
        self.header_end = -1
        self.started = time.perf_counter()
        self.transport.write(self.run.next_request())

    def data_received(self, data: bytes) -> None:
        buf = self.buf
        buf += data
        if self.header_end == -1:
            end = buf.find(_CRLF2)
            if end == -1:
                return
            self.header_end = end + 4
            head = bytes(buf[:end]).lower()
            self.status = int(head[9:12])
            self.close_after = b"\r\nconnection: close" in head
            i = head.find(b"\r\ncontent-length:")
            if i != -1:
                j = head.find(b"\r\n", i + 2)
                self.length = int(head[i + 17 : j if j != -1 else len(head)])
            elif b"\r\ntransfer-encoding: chunked" in head:
                self.length = -2
                self.scan = self.header_end
            else:
                self.length = 0
        if self.length >= 0:
            if len(buf) - self.header_end < self.length:
                return
        elif not self._chunked_done():
            return
        self._complete()

    def _chunked_done(self) -> bool:
        buf = self.buf
        while True:
            eol = buf.find(b"\r\n", self.scan)
            if eol == -1:
                return False
            size = int(bytes(buf[self.scan : eol]).split(b";", 1)[0], 16)
            if size == 0:
                return buf.find(b"\r\n", eol + 2) != -1  # the (empty) trailer line
            nxt = eol + 2 + size + 2
            if len(buf) < nxt:
                return False
            self.scan = nxt

    def _complete(self) -> None:
        now = time.perf_counter()
        run = self.run
        run.total += 1
        if now >= run.measure_from:
            if now <= run.stop_at:
                run.latencies.append((now - self.started) * 1000.0)
                run.statuses[self.status] += 1
                run.done += 1
            else:
                assert self.transport is not None
                self.header_end = -1
                self.buf.clear()
                self.transport.close()
                return
        if self.close_after:
            self.header_end = -1
            self.buf.clear()
            assert self.transport is not None
            self.transport.close()
            return
        self._send()


async def _drive(host: str, port: int, run: _Run, concurrency: int) -> None:
    loop = asyncio.get_running_loop()
    pending = []
    for _ in range(concurrency):
        finished: asyncio.Future[None] = loop.create_future()
        pending.append(_keep_connected(loop, host, port, run, finished))
    # A server that stops answering must not hang the run.
    timeout = run.stop_at - time.perf_counter() + 10.0
    try:
        await asyncio.wait_for(asyncio.gather(*pending), timeout=timeout)
    except TimeoutError:
        run.errors += 1


async def _keep_connected(
    loop: asyncio.AbstractEventLoop, host: str, port: int, run: _Run, finished: asyncio.Future[None]
) -> None:
    """Run one connection until the end of the run, reconnecting when the server closes it."""
    while time.perf_counter() < run.stop_at:
        try:
            await loop.create_connection(functools.partial(_Conn, run, finished), host, port)
        except OSError:
            run.errors += 1
            await asyncio.sleep(0.01)
            continue
        await finished
        finished = loop.create_future()


def _new_loop() -> asyncio.AbstractEventLoop:
    try:
        import uvloop

        return uvloop.new_event_loop()
    except ImportError:  # pragma: no cover - uvloop is optional
        return asyncio.new_event_loop()


def load(
    url: str,
    bodies: list[bytes],
    *,
    method: str = "POST",
    headers: dict[str, str] | None = None,
    concurrency: int = 8,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
) -> dict[str, object]:
    """Run the load in this process; returns counts, latencies (ms) and this process's CPU use."""
    parts = urlsplit(url)
    host, port = parts.hostname or "127.0.0.1", parts.port or 80
    path = parts.path + (f"?{parts.query}" if parts.query else "")
    hdrs = {"Content-Type": "application/json", **(headers or {})}
    requests = [build_request(host, port, method, path, body, hdrs) for body in (bodies or [b""])]
    loop = _new_loop()
    cpu0 = resource.getrusage(resource.RUSAGE_SELF)
    try:
        run = _Run(requests, warmup_s, duration_s)
        loop.run_until_complete(_drive(host, port, run, concurrency))
    finally:
        loop.close()
    cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "done": run.done,
        "total": run.total,
        "duration_s": duration_s,
        "errors": run.errors,
        "statuses": {str(k): v for k, v in run.statuses.items()},
        "latencies_ms": list(run.latencies),
        "cpu_s": cpu,
        "wall_s": warmup_s + duration_s,
    }


# -- many processes, merged ----------------------------------------------------------------------


@dataclass
class LoadResult:
    done: int
    duration_s: float
    errors: int
    statuses: dict[str, int]
    latencies_ms: list[float] = field(repr=False)
    cpu_pct: float  # summed over the loadgen processes, % of one core
    total: int = 0  # every response, warm-up included
    server_cpu_s: float = 0.0  # CPU time the server used during the whole run (when watched)

    @property
    def server_cpu_us(self) -> float:
        """Server CPU per response: robust to other work on the host, unlike req/s."""
        return 1e6 * self.server_cpu_s / self.total if self.total else float("nan")

    @property
    def rps(self) -> float:
        return self.done / self.duration_s if self.duration_s else 0.0

    def pct(self, q: float) -> float:
        return percentile(self.latencies_ms, q)


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    k = min(len(ordered) - 1, max(0, round(q / 100 * (len(ordered) - 1))))
    return ordered[k]


def run_load(
    url: str,
    bodies: list[bytes],
    *,
    headers: dict[str, str] | None = None,
    concurrency: int = 8,
    duration_s: float = 5.0,
    warmup_s: float = 1.0,
    processes: int = 1,
    cpus: set[int] | None = None,
    method: str = "POST",
    watch_pid: int | None = None,
) -> LoadResult:
    """Run the load in ``processes`` child processes (connections split between them).

    With ``watch_pid``, the CPU time that process used during the run is in ``server_cpu_s``.
    """
    processes = max(1, min(processes, concurrency))
    shares = [concurrency // processes + (1 if i < concurrency % processes else 0) for i in range(processes)]
    spec = {
        "url": url,
        "bodies": [b.decode() for b in bodies],
        "method": method,
        "headers": headers or {},
        "duration_s": duration_s,
        "warmup_s": warmup_s,
    }
    children = []
    cpu_before = process_cpu_s(watch_pid) if watch_pid else 0.0
    for share in shares:
        child = subprocess.Popen(
            [sys.executable, "-m", "bench.loadgen", "--spec", "-"],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            cwd=os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
        )
        if cpus:
            os.sched_setaffinity(child.pid, cpus)
        assert child.stdin is not None
        child.stdin.write(json.dumps({**spec, "concurrency": share}).encode())
        child.stdin.close()
        children.append(child)
    merged = LoadResult(0, duration_s, 0, {}, [], 0.0)
    for child in children:
        assert child.stdout is not None
        out = json.loads(child.stdout.read())
        child.wait()
        merged.done += out["done"]
        merged.total += out["total"]
        merged.errors += out["errors"]
        for k, v in out["statuses"].items():
            merged.statuses[k] = merged.statuses.get(k, 0) + v
        merged.latencies_ms.extend(out["latencies_ms"])
        merged.cpu_pct += 100.0 * out["cpu_s"] / out["wall_s"]
    if watch_pid:
        merged.server_cpu_s = process_cpu_s(watch_pid) - cpu_before
    return merged


def process_cpu_s(pid: int) -> float:
    """User + system CPU seconds of a process (all its threads), from /proc."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


# -- a raw responder, to measure the load generator's own ceiling --------------------------------

_SINK_REPLY = b'HTTP/1.1 200 OK\r\nContent-Type: application/json\r\nContent-Length: 11\r\n\r\n{"ok":true}'


class _Sink(asyncio.Protocol):
    def __init__(self) -> None:
        self.buf = bytearray()
        self.transport: asyncio.Transport | None = None

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = cast(asyncio.Transport, transport)  # uvloop's is not a subclass

    def data_received(self, data: bytes) -> None:
        self.buf += data
        while True:
            end = self.buf.find(_CRLF2)
            if end == -1:
                return
            head = bytes(self.buf[:end]).lower()
            length = 0
            i = head.find(b"\r\ncontent-length:")
            if i != -1:
                j = head.find(b"\r\n", i + 2)
                length = int(head[i + 17 : j if j != -1 else len(head)])
            total = end + 4 + length
            if len(self.buf) < total:
                return
            del self.buf[:total]
            assert self.transport is not None
            self.transport.write(_SINK_REPLY)


def serve_sink(host: str, port: int) -> None:
    loop = _new_loop()
    server = loop.run_until_complete(loop.create_server(_Sink, host, port))
    print(f"sink listening on {host}:{port}", flush=True)
    try:
        loop.run_forever()
    finally:
        server.close()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description="HTTP/1.1 keep-alive load generator")
    p.add_argument("--spec", help="'-': read a JSON run spec from stdin, print JSON results (internal)")
    p.add_argument("--url", default="http://127.0.0.1:9100/v1/chat/completions")
    p.add_argument("--method", default="POST")
    p.add_argument("--body", default='{"model":"m","messages":[{"role":"user","content":"hello there"}]}')
    p.add_argument("-H", "--header", action="append", default=[], help="'Name: value'")
    p.add_argument("-c", "--concurrency", type=int, default=8)
    p.add_argument("-d", "--duration", type=float, default=5.0)
    p.add_argument("-w", "--warmup", type=float, default=1.0)
    p.add_argument("-p", "--processes", type=int, default=1)
    p.add_argument("--sink", action="store_true", help="serve a raw responder instead of sending load")
    p.add_argument("--port", type=int, default=9200)
    args = p.parse_args(argv)
    if args.spec:
        spec = json.loads(sys.stdin.read())
        out = load(
            spec["url"],
            [b.encode() for b in spec["bodies"]],
            method=spec["method"],
            headers=spec["headers"],
            concurrency=spec["concurrency"],
            duration_s=spec["duration_s"],
            warmup_s=spec["warmup_s"],
        )
        sys.stdout.write(json.dumps(out))
        return
    if args.sink:
        serve_sink("127.0.0.1", args.port)
        return
    headers = dict(h.split(":", 1) for h in args.header)
    result = run_load(
        args.url,
        [args.body.encode()],
        method=args.method,
        headers={k.strip(): v.strip() for k, v in headers.items()},
        concurrency=args.concurrency,
        duration_s=args.duration,
        warmup_s=args.warmup,
        processes=args.processes,
    )
    print(
        f"{result.rps:9.0f} req/s  p50 {result.pct(50):.3f} ms  p99 {result.pct(99):.3f} ms  "
        f"errors {result.errors}  statuses {result.statuses}  loadgen cpu {result.cpu_pct:.0f}%"
    )


if __name__ == "__main__":
    main()
