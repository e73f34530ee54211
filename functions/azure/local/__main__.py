"""``python -m functions.azure.local``: the Azure functions served locally (what ``make serve CLOUD=azure`` runs)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
from pathlib import Path
from types import FrameType

from functions.local.model_server import admin_key

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = ".textnlp"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m functions.azure.local",
        description="Serve the Azure function app (Python v2 model) through a local stand-in of the Functions host,"
        " against Azurite and a Cosmos DB server (in memory), with the batch function on the container's"
        " batch-input/ blobs. No Docker, no Azure account, no Core Tools.",
    )
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--data-dir", default=os.environ.get("TEXTNLP_DATA_DIR", DEFAULT_DATA_DIR))
    p.add_argument("--no-models", action="store_true", help="register no models (no local model server)")
    p.add_argument("--no-batch", action="store_true", help="do not run the batch function on the container's blobs")
    return p


def banner(host: str, port: int, key: str, created: bool, data_dir: Path, models: list[str], local: object) -> None:
    from functions.azure.local.server import CONTAINER, LocalAzure

    assert isinstance(local, LocalAzure)  # nosec B101 - the caller's
    if created:
        say("Created the first admin key (shown once, keep it safe):")
        say(f"  {key}")
    elif os.environ.get("TEXTNLP_ADMIN_KEY"):
        say("Admin key: TEXTNLP_ADMIN_KEY.")
    else:
        say(f"Admin key: the one printed on the first start (kept in {data_dir / 'azure' / 'admin-key'}).")
    say(
        f"TextNLP on Azure (local: Functions host stand-in -> function_app.py -> Cosmos DB server and Azurite) on"
        f" http://{host}:{port}  (OpenAI base URL: http://{host}:{port}/v1)"
    )
    say("The emulators keep Cosmos DB and Blob Storage in memory: tenants, keys, usage and files are gone on exit.")
    say(
        f"Emulators: AZURITE_BLOB_ENDPOINT={local.azurite.blob_endpoint if local.azurite else ''}"
        f" COSMOS_ENDPOINT={local.cosmos.endpoint if local.cosmos else ''} (container {CONTAINER})"
    )
    say(f"Models: {', '.join(models)} (served by the local runtime)" if models else "Models: none registered.")
    say(
        f"Batches: put a blob at {CONTAINER}/batch-input/<tenant>/<name>.jsonl on Azurite; the batch function runs"
        " it and writes batch-output/<tenant>/<name>.jsonl and <name>.errors.jsonl."
    )
    say(
        "Admin API: /admin/... here; on Azure the host keeps /admin for itself: use /_admin/... there (both work here)."
    )


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("azure", "urllib3", "uvicorn.error"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    data_dir = Path(args.data_dir).resolve()
    key, created = admin_key(data_dir / "azure")

    from functions.azure.local.server import LocalAzure, Options

    local = LocalAzure(Options(args.host, args.port, data_dir, key, models=not args.no_models, batch=not args.no_batch))
    try:
        local.start()
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1
    banner(args.host, args.port, key, created, data_dir, local.model_ids, local)

    def on_term(signum: int, frame: FrameType | None) -> None:
        # uvicorn shuts down on SIGTERM, then raises it again with the handler it found: this one, so that the
        # emulators and the model server are stopped below instead of the process dying with them left behind.
        raise SystemExit(0)

    signal.signal(signal.SIGTERM, on_term)
    try:
        local.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        local.stop()
        print("Stopped (the emulators' state is gone).", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
