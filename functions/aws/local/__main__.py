"""``python -m functions.aws.local``: the AWS functions served locally (what ``make serve CLOUD=aws`` runs)."""

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
        prog="python -m functions.aws.local",
        description="Serve the AWS Lambda handler over HTTP as API Gateway's HTTP API would, against moto"
        " (in memory) with the stack's table, bucket, queue and secrets. No Docker, no AWS account.",
    )
    p.add_argument("--host", default=DEFAULT_HOST)
    p.add_argument("--port", type=int, default=DEFAULT_PORT)
    p.add_argument("--data-dir", default=os.environ.get("TEXTNLP_DATA_DIR", DEFAULT_DATA_DIR))
    p.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WORKERS") or 4),
        help="simulated api containers, each one request at a time (default: WORKERS or 4)",
    )
    p.add_argument("--no-models", action="store_true", help="register no models (no local model server)")
    p.add_argument("--no-batch", action="store_true", help="do not run the batch function on queued messages")
    return p


def admin_key(aws_dir: Path) -> tuple[str, bool]:
    """TEXTNLP_ADMIN_KEY, else the key kept in ``aws_dir/admin-key`` (made on first start); True if just made.

    The file is the local stand-in of the stack's admin-key secret: the table is new on every start (moto
    keeps it in memory), the key stays the same.
    """
    given = os.environ.get("TEXTNLP_ADMIN_KEY", "").strip()
    if given:
        if len(given) < MIN_ADMIN_KEY_CHARS:
            raise SystemExit(f"TEXTNLP_ADMIN_KEY needs at least {MIN_ADMIN_KEY_CHARS} characters")
        return given, False
    kept = aws_dir / "admin-key"
    if kept.is_file():
        return kept.read_text().strip(), False
    aws_dir.mkdir(parents=True, exist_ok=True)
    plaintext, _ = api_keys.mint("ten_admin", "admin", frozenset(ALL_SCOPES), SystemClock().now())
    fd = os.open(kept, os.O_WRONLY | os.O_CREAT | os.O_TRUNC, 0o600)
    with os.fdopen(fd, "w") as out:
        out.write(plaintext + "\n")
    return plaintext, True


def banner(host: str, port: int, key: str, created: bool, data_dir: Path, models: list[str], workers: int) -> None:
    if created:
        say("Created the first admin key (shown once, keep it safe):")
        say(f"  {key}")
    elif os.environ.get("TEXTNLP_ADMIN_KEY"):
        say("Admin key: TEXTNLP_ADMIN_KEY.")
    else:
        say(f"Admin key: the one printed on the first start (kept in {data_dir / 'aws' / 'admin-key'}).")
    say(
        f"TextNLP on AWS (local: API Gateway HTTP API -> Lambda x{workers} -> moto) on http://{host}:{port}"
        f"  (OpenAI base URL: http://{host}:{port}/v1)"
    )
    say("moto keeps DynamoDB, S3, SQS and Secrets Manager in memory: tenants, keys, usage and files are gone on exit.")
    say(f"Models: {', '.join(models)} (served by the local runtime)" if models else "Models: none registered.")
    say("Responses come whole, as HTTP APIs send them: a stream arrives as one SSE body.")


def say(text: str) -> None:
    print(text, flush=True)


def main(argv: list[str] | None = None) -> int:
    args = parser().parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    for noisy in ("botocore", "werkzeug", "urllib3"):
        logging.getLogger(noisy).setLevel(logging.WARNING)
    data_dir = Path(args.data_dir).resolve()
    key, created = admin_key(data_dir / "aws")

    from functions.aws.local.server import LocalAws, Options

    options = Options(
        host=args.host,
        port=args.port,
        data_dir=data_dir,
        admin_key=key,
        workers=max(1, args.workers),
        models=not args.no_models,
        batch=not args.no_batch,
    )
    local = LocalAws(options)
    try:
        local.start()
    except OSError as exc:
        print(f"cannot serve on {args.host}:{args.port}: {exc}", file=sys.stderr)
        return 1

    def on_term(signum: int, frame: FrameType | None) -> None:
        threading.Thread(target=local.shutdown, daemon=True).start()

    signal.signal(signal.SIGTERM, on_term)
    banner(args.host, args.port, key, created, data_dir, local.model_ids, options.workers)
    try:
        local.serve_forever()
    except KeyboardInterrupt:
        pass
    finally:
        local.stop()
        print("Stopped (moto's state is gone).", flush=True)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
