"""``python -m functions.aws.local``: the AWS functions served locally (what ``make serve CLOUD=aws`` runs)."""

from __future__ import annotations

import os

from functions.local.cloud_main import parser, prepare, say, say_admin_key, say_models, serve


def main(argv: list[str] | None = None) -> int:
    p = parser(
        "python -m functions.aws.local",
        "Serve the AWS Lambda handler over HTTP as API Gateway's HTTP API would, against moto (in memory) with the"
        " stack's table, bucket, queue and secrets. No Docker, no AWS account.",
        batch_help="do not run the batch function on queued messages",
    )
    p.add_argument(
        "--workers",
        type=int,
        default=int(os.environ.get("WORKERS") or 4),
        help="simulated api containers, each one request at a time (default: WORKERS or 4)",
    )
    args = p.parse_args(argv)
    data_dir, key, created = prepare("aws", args.data_dir, ("botocore", "werkzeug", "urllib3"))

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
    host, port = args.host, args.port

    def banner() -> None:
        say_admin_key(key, created, data_dir / "aws" / "admin-key")
        say(
            f"TextNLP on AWS (local: API Gateway HTTP API -> Lambda x{options.workers} -> moto) on http://{host}:{port}"
            f"  (OpenAI base URL: http://{host}:{port}/v1)"
        )
        say(
            "moto keeps DynamoDB, S3, SQS and Secrets Manager in memory: tenants, keys, usage and files are gone on"
            " exit."
        )
        say_models(local.model_ids)
        say("Responses come whole, as HTTP APIs send them: a stream arrives as one SSE body.")

    return serve(local, host, port, banner, "Stopped (moto's state is gone).")


if __name__ == "__main__":
    raise SystemExit(main())
