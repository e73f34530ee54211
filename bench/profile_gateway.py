"""Profile the gateway under load: the local server in this process under cProfile.

The fake backend and the load generator run as subprocesses; the server (uvicorn + uvloop +
httptools + ``functions.local.asgi:create_app``) runs in this process's main thread, and cProfile
covers exactly the loaded seconds. Prints the top functions by own time and by cumulative time.
cProfile inflates Python-level call costs, so read it for proportions, not absolute figures.

    python -m bench.profile_gateway [--seconds 5] [--concurrency 8] [--top 35] [--out prof.out]
"""

from __future__ import annotations

import argparse
import asyncio
import cProfile
import io
import os
import pstats
import tempfile
import threading
from pathlib import Path

from bench._procs import ADMIN_KEY, chat_bodies, free_port, setup_tenant, start_fake, stop, wait_http
from bench.loadgen import LoadResult, run_load


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--seconds", type=float, default=5.0)
    p.add_argument("--concurrency", type=int, default=8)
    p.add_argument("--top", type=int, default=35)
    p.add_argument("--out", help="also dump the raw stats here (for snakeviz / pstats)")
    args = p.parse_args(argv)

    import uvicorn

    tmp = tempfile.TemporaryDirectory(prefix="textnlp-prof-")
    fake_port, port = free_port(), free_port()
    fake = start_fake(fake_port)
    os.environ.update(TEXTNLP_DATA_DIR=tmp.name, TEXTNLP_ADMIN_KEY=ADMIN_KEY, TEXTNLP_LOG_LEVEL="INFO")
    from functions.local.asgi import create_app
    from functions.local.bootstrap import open_store, seed

    store = open_store(Path(tmp.name))
    seed(store, ADMIN_KEY)
    store.close()
    log = open(Path(tmp.name) / "server.log", "w")  # noqa: SIM115
    os.dup2(log.fileno(), 2)  # the JSON request log goes to a file, as it would in a container

    config = uvicorn.Config(
        create_app(),
        host="127.0.0.1",
        port=port,
        http="httptools",
        loop="uvloop",
        log_level="warning",
        access_log=False,
        lifespan="on",
    )
    server = uvicorn.Server(config)
    profiler = cProfile.Profile()
    result: list[LoadResult] = []

    def drive() -> None:
        try:
            wait_http(port, "/health")
            key = setup_tenant(port, fake_port)
            bodies = chat_bodies("bench")
            headers = {"Authorization": f"Bearer {key}"}
            url = f"http://127.0.0.1:{port}/v1/chat/completions"
            run_load(url, bodies, headers=headers, concurrency=args.concurrency, duration_s=1.0, warmup_s=0.0)
            loop.call_soon_threadsafe(profiler.enable)
            result.append(
                run_load(
                    url, bodies, headers=headers, concurrency=args.concurrency, duration_s=args.seconds, warmup_s=0.0
                )
            )
            loop.call_soon_threadsafe(profiler.disable)
        finally:
            server.should_exit = True

    import uvloop

    loop = uvloop.new_event_loop()
    asyncio.set_event_loop(loop)
    thread = threading.Thread(target=drive, daemon=True)
    thread.start()
    try:
        loop.run_until_complete(server.serve())
    finally:
        stop(fake)
        thread.join(timeout=30)
        tmp.cleanup()

    if result:
        r = result[0]
        print(
            f"under cProfile: {r.rps:.0f} req/s at c={args.concurrency}, p50 {r.pct(50):.2f} ms, statuses {r.statuses}"
        )
    if args.out:
        profiler.dump_stats(args.out)
    for key in ("tottime", "cumulative"):
        out = io.StringIO()
        stats = pstats.Stats(profiler, stream=out)
        stats.sort_stats(key).print_stats(args.top)
        print(f"\n==== by {key} ====")
        print("\n".join(line for line in out.getvalue().splitlines() if line.strip())[:20000])


if __name__ == "__main__":
    main()
