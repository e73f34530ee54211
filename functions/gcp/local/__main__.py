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

from core.auth import api_keys
from core.clock import SystemClock
from core.domain import ALL_SCOPES

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = ".textnlp"
MIN_ADMIN_KEY_CHARS = 20


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


def admin_key(gcp_dir: Path) -> tuple[str, bool]:
    """TEXTNLP_ADMIN_KEY, else the key kept in ``gcp_dir/admin-key`` (made on first start); True if just made.

    The file is the local stand-in of the admin-key secret: the database is new on every start (the emulator
    keeps it in memory), the key stays the same.
    """
    given = os.environ.get("TEXTNLP_ADMIN_KEY", "").strip()
    if given:
        if len(given) < MIN_ADMIN_KEY_CHARS:
            raise SystemExit(f"TEXTNLP_ADMIN_KEY needs at least {MIN_ADMIN_KEY_CHARS} characters")
        return given, False
    kept = gcp_dir / "admin-key"
    if kept.is_file():
        return kept.read_text().strip(), False
    gcp_dir.mkdir(parents=True, exist_ok=True)
    plaintext, _ = api_keys.mint("ten_admin", "admin", frozenset(ALL_SCOPES), SystemClock().now())
    fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(plaintext + "\n")
    return plaintext, True


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
