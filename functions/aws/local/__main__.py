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

from functions.local.model_server import admin_key

DEFAULT_HOST = "127.0.0.1"
DEFAULT_PORT = 8080
DEFAULT_DATA_DIR = ".textnlp"


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
