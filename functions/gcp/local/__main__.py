"""``python -m functions.gcp.local``: the Google Cloud functions served locally (what ``make serve CLOUD=gcp`` runs)."""

from __future__ import annotations

import argparse
import logging
import os
import signal
import sys
import threading
from pathlib import Path
from types import FrameType

from functions.local.model_server import admin_key

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = ".textnlp"


def parser() -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(
        prog="python -m functions.gcp.local",
        description="Serve the Cloud Run functions' api function under functions-framework against the Firestore"
        " and Cloud Storage emulators (in memory), with the batch function on the bucket's batch-input/ objects."
        " No Docker, no Google account.",
    )
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--data-dir", default=os.environ.get("TEXTNLP_DATA_DIR", DEFAULT_DATA_DIR))
    p.add_argument("--no-models", action="store_true", help="register no models (no local model server)")
    p.add_argument("--no-batch", action="store_true", help="do not run the batch function on the bucket's objects")
    return p


def banner(host: str, port: int, key: str, created: bool, data_dir: Path, models: list[str], bucket: str) -> None:
    if created:
        say("Created the first admin key (shown once, keep it safe):")
        say(f"  {key}")
    elif os.environ.get("TEXTNLP_ADMIN_KEY"):
        say("Admin key: TEXTNLP_ADMIN_KEY.")
    else:
        say(f"Admin key: the one printed on the first start (kept in {data_dir / 'gcp' / 'admin-key'}).")
    say(
        f"TextNLP on Google Cloud (local: functions-framework -> Firestore and Cloud Storage emulators) on"
        f" http://{host}:{port}  (OpenAI base URL: http://{host}:{port}/v1)"
    )
    say("The emulators keep Firestore and Cloud Storage in memory: tenants, keys, usage and files are gone on exit.")
    say(
        f"Emulators: FIRESTORE_EMULATOR_HOST={os.environ.get('FIRESTORE_EMULATOR_HOST', '')}"
        f" STORAGE_EMULATOR_HOST={os.environ.get('STORAGE_EMULATOR_HOST', '')} (project textnlp-local)"
    )
    say(f"Models: {', '.join(models)} (served by the local runtime)" if models else "Models: none registered.")
    say(
        f"Batches: put a file at gs://{bucket}/batch-input/<tenant>/<name>.jsonl on the storage emulator; the"
        " batch function runs it and writes batch-output/<tenant>/<name>.jsonl and <name>.errors.jsonl."
    )


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("werkzeug", "urllib3", "google"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    data_dir = Path(args.data_dir).resolve()
    key, created = admin_key(data_dir / "gcp")

    from functions.gcp.local.server import BUCKET, LocalGcp, Options

    local = LocalGcp(Options(args.host, args.port, data_dir, key, models=not args.no_models, batch=not args.no_batch))
    try:
        local.start()
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    def on_term(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=local.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    banner(args.host, args.port, key, created, data_dir, local.model_ids, BUCKET)
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
