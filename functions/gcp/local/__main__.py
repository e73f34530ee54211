"""``python -m functions.gcp.local``: the Google Cloud functions served locally (what ``make serve CLOUD=gcp`` runs)."""

from __future__ import annotations

import os

from functions.local.cloud_main import parser, prepare, say, say_admin_key, say_models, serve


def main(argv: list[str] | None = None) -> int:
    args = parser(
        "python -m functions.gcp.local",
        "Serve the Cloud Run functions' api function under functions-framework against the Firestore and Cloud"
        " Storage emulators (in memory), with the batch function on the bucket's batch-input/ objects."
        " No Docker, no Google account.",
        batch_help="do not run the batch function on the bucket's objects",
    ).parse_args(argv)
    data_dir, key, created = prepare("gcp", args.data_dir, ("werkzeug", "urllib3", "google"))

    from functions.gcp.local.server import BUCKET, LocalGcp, Options

    local = LocalGcp(Options(args.host, args.port, data_dir, key, models=not args.no_models, batch=not args.no_batch))
    host, port = args.host, args.port

    def banner() -> None:
        say_admin_key(key, created, data_dir / "gcp" / "admin-key")
        say(
            f"TextNLP on Google Cloud (local: functions-framework -> Firestore and Cloud Storage emulators) on"
            f" http://{host}:{port}  (OpenAI base URL: http://{host}:{port}/v1)"
        )
        say("The emulators keep Firestore and Cloud Storage in memory: tenants, keys, usage and files go on exit.")
        say(
            f"Emulators: FIRESTORE_EMULATOR_HOST={os.environ.get('FIRESTORE_EMULATOR_HOST', '')}"
            f" STORAGE_EMULATOR_HOST={os.environ.get('STORAGE_EMULATOR_HOST', '')} (project textnlp-local)"
        )
        say_models(local.model_ids)
        say(
            f"Batches: put a file at gs://{BUCKET}/batch-input/<tenant>/<name>.jsonl on the storage emulator; the"
            " batch function runs it and writes batch-output/<tenant>/<name>.jsonl and <name>.errors.jsonl."
        )

    return serve(local, host, port, banner, "Stopped (the emulators' state is gone).")


if __name__ == "__main__":
    raise SystemExit(main())
