"""What every ``python -m functions.<cloud>.local`` (``make serve CLOUD=<cloud>``) does alike.

Each cloud serves its real function code on that cloud's emulators; what differs is the emulators, how
requests reach the function and the banner's words. What is the same is written here: the options shared
with ``make serve`` (``--host``, ``--port``, ``--data-dir``, ``--no-models``, ``--no-batch``), the kept admin
key and how it is announced, logging, and the serving loop (SIGTERM and Ctrl-C stop it, and the emulators
with it).
"""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterable
from pathlib import Path
from types import FrameType
from typing import Protocol

from functions.local.model_server import admin_key

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = ".textnlp"


class LocalCloud(Protocol):
    """A cloud's local server: started, served until shut down (from another thread), then stopped."""

    model_ids: list[str]

    def start(self) -> object: ...

    def serve_forever(self) -> None: ...

    def shutdown(self) -> None: ...

    def stop(self) -> None: ...


def parser(prog: str, description: str, batch_help: str) -> argparse.ArgumentParser:
    """The options every cloud's local server takes, as ``make serve`` passes them."""
    p = argparse.ArgumentParser(prog=prog, description=description)
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--data-dir", default=os.environ.get("TEXTNLP_DATA_DIR", DEFAULT_DATA_DIR))
    p.add_argument("--no-models", action="store_true", help="register no models (no local model server)")
    p.add_argument("--no-batch", action="store_true", help=batch_help)
    return p


def say(text: str) -> None:
    print(text, flush=True)


def say_admin_key(key: str, created: bool, kept_in: Path) -> None:
    """The first start shows the minted key once; later starts say where it comes from, never the key."""
    if created:
        say("Created the first admin key (shown once, keep it safe):")
        say(f"  {key}")
    elif os.environ.get("TEXTNLP_ADMIN_KEY"):
        say("Admin key: TEXTNLP_ADMIN_KEY.")
    else:
        say(f"Admin key: the one printed on the first start (kept in {kept_in}).")


def say_models(models: list[str]) -> None:
    say(f"Models: {', '.join(models)} (served by the local runtime)" if models else "Models: none registered.")


def prepare(cloud: str, data_dir: str, quiet_loggers: Iterable[str]) -> tuple[Path, str, bool]:
    """Logging set up, the data directory resolved, and the cloud's admin key: (data dir, key, created now)."""
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in quiet_loggers:
        logging.getLogger(noisy).setLevel(logging.WARNING)
    resolved = Path(data_dir).resolve()
    key, created = admin_key(resolved / cloud)
    return resolved, key, created


def serve(local: LocalCloud, host: str, port: int, banner: Callable[[], None], stopped: str) -> int:
    """Start ``local``, announce it, serve until SIGTERM or Ctrl-C, then stop it; the process's exit code."""
    try:
        local.start()
    except OSError as exc:
        print(f"cannot serve on {host}:{port}: {exc}", file=sys.stderr)
        return 1

    def on_term(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=local.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    banner()
    try:
        local.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        local.stop()
        print(stopped, flush=True)
    return 0


__all__ = ["LocalCloud", "parser", "prepare", "say", "say_admin_key", "say_models", "serve"]
