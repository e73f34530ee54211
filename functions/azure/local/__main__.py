"""``python -m functions.azure.local``: the Azure functions served locally (what ``make serve CLOUD=azure`` runs)."""

from __future__ import annotations

from functions.local.cloud_main import parser, prepare, say, say_admin_key, say_models, serve


def main(argv: list[str] | None = None) -> int:
    args = parser(
        "python -m functions.azure.local",
        "Serve the Azure function app (Python v2 model) through a local stand-in of the Functions host, against"
        " Azurite and a Cosmos DB server (in memory), with the batch function on the container's batch-input/"
        " blobs. No Docker, no Azure account, no Core Tools.",
        batch_help="do not run the batch function on the container's blobs",
    ).parse_args(argv)
    data_dir, key, created = prepare("azure", args.data_dir, ("azure", "urllib3", "uvicorn.error"))

    from functions.azure.local.server import CONTAINER, LocalAzure, Options

    local = LocalAzure(Options(args.host, args.port, data_dir, key, models=not args.no_models, batch=not args.no_batch))
    host, port = args.host, args.port

    def banner() -> None:
        say_admin_key(key, created, data_dir / "azure" / "admin-key")
        say(
            f"TextNLP on Azure (local: Functions host stand-in -> function_app.py -> Cosmos DB server and Azurite) on"
            f" http://{host}:{port}  (OpenAI base URL: http://{host}:{port}/v1)"
        )
        say("The emulators keep Cosmos DB and Blob Storage in memory: tenants, keys, usage and files go on exit.")
        say(
            f"Emulators: AZURITE_BLOB_ENDPOINT={local.azurite.blob_endpoint if local.azurite else ''}"
            f" COSMOS_ENDPOINT={local.cosmos.endpoint if local.cosmos else ''} (container {CONTAINER})"
        )
        say_models(local.model_ids)
        say(
            f"Batches: put a blob at {CONTAINER}/batch-input/<tenant>/<name>.jsonl on Azurite; the batch function"
            " runs it and writes batch-output/<tenant>/<name>.jsonl and <name>.errors.jsonl."
        )
        say("Admin API: /admin/... here; on Azure the host keeps /admin for itself: use /_admin/... there (both here).")

    # uvicorn handles SIGTERM itself, then raises it again with the handler it found (serve's): that one only
    # asks the server to stop, so the emulators and the model server are stopped below as on Ctrl-C.
    return serve(local, host, port, banner, "Stopped (the emulators' state is gone).")


if __name__ == "__main__":
    raise SystemExit(main())
