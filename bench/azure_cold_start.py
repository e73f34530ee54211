"""Cold start of the Azure function app (``functions/azure/function_app.py``) on the emulators, as a ratio to a floor.

Gateway: a fresh process loads the app as the Python worker does (imports ``function_app`` and indexes it,
``app.get_functions()``) and answers its first request, an authenticated GET /v1/models, through the registered
``api`` function object on an event loop: from process start to the answer. That first request builds the runtime
(the Cosmos DB client, which reads the account, and the store; the Blob client; the admin key imported: one read,
it is there) and answers (key, tenant and models read from Cosmos DB). The Cosmos DB server and Azurite run in
process groups of their own (``functions/azure/local/emulators.py``).
Floor: a fresh process that imports azure-functions, pydantic and the Cosmos DB and Blob Storage clients and creates
both clients (the Cosmos client's account read included), timed the same way. Medians of ``--runs``, wall time and
the child's CPU time up to its line. Then the import time of ``function_app.py`` alone and its heaviest imports.

What this does not include: the Functions host's and the worker's own start, TLS, and the managed identity's first
token (on the emulators the keys are given).

    python -m bench.azure_cold_start [--runs 5] [--top 15]
"""

from __future__ import annotations

import argparse
import statistics
import tempfile
import uuid
from pathlib import Path
from typing import Any

from bench._procs import cpu_plan, host_note
from bench.cold_start import print_import_report
from bench.cold_start_runs import floor_run, gateway_run, ratio_row

CONTAINER = "textnlp-bench"
ADMIN_KEY = "BenchAdminKeyFromKeyVault0123456789abcdef"

GATEWAY_CHILD = """
import asyncio, json, sys, time
t0 = time.perf_counter()
from functions.azure.function_app import app
functions = {f.get_function_name(): f for f in app.get_functions()}
t1 = time.perf_counter()
import azure.functions as func
from functions.azure import bootstrap
bootstrap.runtime()  # what the first invocation does first (timed apart here)
t2 = time.perf_counter()
class Context:
    invocation_id = "bench-1"
req = func.HttpRequest("GET", "http://localhost/v1/models", headers={"authorization": "Bearer " + sys.argv[1]},
                       params={}, route_params={"path": "v1/models"}, body=b"")
answer = asyncio.run(functions["api"].get_user_function()(req, Context()))
t3 = time.perf_counter()
print(json.dumps({"status": answer.status_code, "import_ms": 1000 * (t1 - t0), "runtime_ms": 1000 * (t2 - t1),
                  "request_ms": 1000 * (t3 - t2), "cpu_ms": 1000 * time.process_time()}), flush=True)
"""

FLOOR_CHILD = """
import json, os, time
t0 = time.perf_counter()
import azure.functions, pydantic
from azure.cosmos import CosmosClient
from azure.storage.blob import ContainerClient
cosmos = CosmosClient(os.environ["TEXTNLP_COSMOS_ENDPOINT"], credential=os.environ["TEXTNLP_COSMOS_KEY"],
                      enable_endpoint_discovery=False)
blobs = ContainerClient.from_connection_string(os.environ["TEXTNLP_STORAGE_CONNECTION_STRING"],
                                               os.environ["TEXTNLP_BLOB_CONTAINER"])
print(json.dumps({"ms": 1000 * (time.perf_counter() - t0), "cpu_ms": 1000 * time.process_time()}), flush=True)
"""

FLOOR_IMPORTS = "import azure.functions, pydantic, azure.cosmos, azure.storage.blob"


class Emulators:
    """The Cosmos DB server and Azurite, each a process group of its own, stopped whole."""

    def __init__(self, log_dir: Path) -> None:
        from functions.azure.local.emulators import Azurite, CosmosServer

        self.cosmos = CosmosServer(log_dir / "cosmosdb-server.log")
        self.azurite = Azurite(log_dir / "azurite.log")
        self.database = f"bench{uuid.uuid4().hex[:8]}"

    def __enter__(self) -> Emulators:
        self.cosmos.start()
        self.azurite.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.azurite.stop()
        self.cosmos.stop()

    def env(self) -> dict[str, str]:
        return {
            "TEXTNLP_COSMOS_ENDPOINT": self.cosmos.endpoint,
            "TEXTNLP_COSMOS_KEY": self.cosmos.key,
            "TEXTNLP_COSMOS_DATABASE": self.database,
            "TEXTNLP_STORAGE_CONNECTION_STRING": self.azurite.connection_string,
            "TEXTNLP_BLOB_CONTAINER": CONTAINER,
            "TEXTNLP_ADMIN_KEY": ADMIN_KEY,
            "TEXTNLP_LOG_LEVEL": "WARNING",
        }


def store_of(env: dict[str, str]) -> Any:
    """A CosmosStore of the bench's own on the server (database and containers created)."""
    from adapters.azure.cosmos import open_cosmos_store

    return open_cosmos_store(
        env["TEXTNLP_COSMOS_ENDPOINT"],
        key=env["TEXTNLP_COSMOS_KEY"],
        database=env["TEXTNLP_COSMOS_DATABASE"],
        create=True,
    )


def create_container(env: dict[str, str]) -> None:
    from azure.storage.blob import ContainerClient

    ContainerClient.from_connection_string(
        env["TEXTNLP_STORAGE_CONNECTION_STRING"], env["TEXTNLP_BLOB_CONTAINER"]
    ).create_container()


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    measured, _ = cpu_plan()
    print("== Azure function app cold start: process start -> first answer (median of runs) ==")
    print(f"   ({host_note()})")
    from bench.gcp_cold_start import seed_tenant

    with tempfile.TemporaryDirectory() as logs, Emulators(Path(logs)) as emulators:
        env = emulators.env()
        create_container(env)
        key = seed_tenant(store_of(env))
        # The first worker imports the admin key; .pyc and page cache warm.
        gateway_run([GATEWAY_CHILD, key], env, measured)
        floor_run([FLOOR_CHILD], env, measured)
        floor = [floor_run([FLOOR_CHILD], env, measured) for _ in range(args.runs)]
        runs = [gateway_run([GATEWAY_CHILD, key], env, measured) for _ in range(args.runs)]
    print(f"  {'':<60} {'wall':>9}  {'':>4}{'cpu':>8}   ratio to the floor (wall, cpu), wall over it")
    print(ratio_row("floor: azure-functions, pydantic, Cosmos + Blob clients", floor))
    print(ratio_row("api: index function_app + 1st GET /v1/models (Cosmos server)", [r[:2] for r in runs], floor))
    import_ms = statistics.median(r[2]["import_ms"] for r in runs)
    runtime_ms = statistics.median(r[2]["runtime_ms"] for r in runs)
    request_ms = statistics.median(r[2]["request_ms"] for r in runs)
    print(
        f"     in the child: import + index function_app {import_ms:.0f} ms, runtime() {runtime_ms:.0f} ms (clients,"
        f" store, admin key), first request {request_ms:.0f} ms (key, tenant, models from Cosmos DB)"
    )
    print_import_report("import functions.azure.function_app", FLOOR_IMPORTS, args.top)


if __name__ == "__main__":
    main()
