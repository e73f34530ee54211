"""Cold start of the Google Cloud api function (``functions/gcp/main.py``) on the emulators, as a ratio to a floor.

Gateway: a fresh process loads the function as functions-framework does (``create_app("api", main.py)``: the
framework, Flask and the module) and answers its first request, an authenticated GET /v1/models, through the
Flask app: from process start to the answer. That first request builds the runtime (credentials, the Firestore
client and store, the Storage client, the event loop thread; the admin key imported, one read when it is there)
and answers (key, tenant and models read from Firestore). The Firestore emulator runs in its own process group,
the Cloud Storage emulator in this (the parent) process.
Floor: a fresh process that imports functions-framework, pydantic, google-auth and the Firestore and Storage
clients and creates both clients, timed the same way. Medians of ``--runs``, wall time and the child's CPU time
up to its line. Then the import time of ``functions/gcp/main.py`` alone and its heaviest imports.

What this does not include: Cloud Run's own instance start (the container, the Python runtime's launch), TLS
and the metadata server's first token (on the emulators the credentials are anonymous).

    python -m bench.gcp_cold_start [--runs 5] [--top 15]
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path
from typing import Any

from bench._procs import ROOT, cpu_plan, host_note
from bench.cold_start import print_import_report
from bench.cold_start_runs import floor_run, gateway_run, ratio_row

PROJECT = "textnlp-bench"
BUCKET = "textnlp-bench"
ADMIN_KEY = "BenchAdminKeyFromSecretManager0123456789abcdef"
MAIN = str(ROOT / "functions" / "gcp" / "main.py")

GATEWAY_CHILD = """
import json, sys, time
t0 = time.perf_counter()
from functions_framework import create_app
app = create_app("api", sys.argv[2])
t1 = time.perf_counter()
from functions.gcp import bootstrap
bootstrap.runtime()  # what the first request does first (timed apart here)
t2 = time.perf_counter()
answer = app.test_client().get("/v1/models", headers={"authorization": "Bearer " + sys.argv[1]})
t3 = time.perf_counter()
print(json.dumps({"status": answer.status_code, "import_ms": 1000 * (t1 - t0), "runtime_ms": 1000 * (t2 - t1),
                  "request_ms": 1000 * (t3 - t2), "cpu_ms": 1000 * time.process_time()}), flush=True)
"""

FLOOR_CHILD = """
import json, os, time
t0 = time.perf_counter()
import functions_framework, pydantic, google.auth
from google.auth.credentials import AnonymousCredentials
from google.cloud import firestore, storage
credentials = AnonymousCredentials()
db = firestore.Client(project=os.environ["TEXTNLP_GCP_PROJECT"], credentials=credentials)
gcs = storage.Client(project=os.environ["TEXTNLP_GCP_PROJECT"], credentials=credentials,
                     client_options={"api_endpoint": os.environ["STORAGE_EMULATOR_HOST"]})
print(json.dumps({"ms": 1000 * (time.perf_counter() - t0), "cpu_ms": 1000 * time.process_time()}), flush=True)
"""


class Emulators:
    """The Firestore emulator (a process group, stopped whole) and the Storage emulator (in this process)."""

    def __init__(self, log_dir: Path) -> None:
        from functions.gcp.local.emulators import FirestoreEmulator, StorageEmulator

        self.firestore = FirestoreEmulator(log_dir / "firestore-emulator.log")
        self.storage = StorageEmulator()

    def __enter__(self) -> Emulators:
        self.firestore.start()
        self.storage.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.storage.stop()
        self.firestore.stop()

    def env(self) -> dict[str, str]:
        return {
            "FIRESTORE_EMULATOR_HOST": self.firestore.host,
            "STORAGE_EMULATOR_HOST": self.storage.url,
            "TEXTNLP_GCP_PROJECT": PROJECT,
            "TEXTNLP_BUCKET": BUCKET,
            "TEXTNLP_ADMIN_KEY": ADMIN_KEY,
            "TEXTNLP_LOG_LEVEL": "WARNING",
        }


def store_of(env: dict[str, str]) -> Any:
    """A FirestoreStore of the bench's own on the emulator (the environment set in this process)."""
    os.environ.update(env)
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import firestore

    from adapters.gcp.firestore import FirestoreStore

    return FirestoreStore(firestore.Client(project=PROJECT, credentials=AnonymousCredentials()))


def create_bucket(env: dict[str, str]) -> None:
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    client = storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": env["STORAGE_EMULATOR_HOST"]},
    )
    client.create_bucket(BUCKET)


def seed_tenant(
    store: Any, limits: dict[str, int] | None = None, scopes: frozenset[str] = frozenset({"generate"})
) -> str:
    """A tenant and an API key written straight to the store (as the admin API would); the key."""
    from bench.aws_cold_start import limits_of
    from core.auth import api_keys
    from core.domain import Tenant

    now = time.time()
    store.put_tenant(Tenant(id="ten_bench", name="bench", created_at=now, limits=limits_of(limits)))
    key, record = api_keys.mint("ten_bench", "bench", scopes, now, limits=limits_of(limits))
    store.put_key(record)
    return key


def main(argv: list[str] | None = None) -> None:
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0] if __doc__ else None)
    p.add_argument("--runs", type=int, default=5)
    p.add_argument("--top", type=int, default=15)
    args = p.parse_args(argv)
    measured, _ = cpu_plan()
    print("== GCP api function cold start: process start -> first answer (median of runs) ==")
    print(f"   ({host_note()})")
    with tempfile.TemporaryDirectory() as logs, Emulators(Path(logs)) as emulators:
        env = emulators.env()
        create_bucket(env)
        key = seed_tenant(store_of(env))
        # The first instance imports the admin key; .pyc and page cache warm.
        gateway_run([GATEWAY_CHILD, key, MAIN], env, measured)
        floor_run([FLOOR_CHILD], env, measured)
        floor = [floor_run([FLOOR_CHILD], env, measured) for _ in range(args.runs)]
        runs = [gateway_run([GATEWAY_CHILD, key, MAIN], env, measured) for _ in range(args.runs)]
    print(f"  {'':<60} {'wall':>9}  {'':>4}{'cpu':>8}   ratio to the floor (wall, cpu), wall over it")
    print(ratio_row("floor: functions-framework, pydantic, google-auth, clients", floor))
    print(ratio_row("api: create_app + 1st GET /v1/models (Firestore emulator)", [r[:2] for r in runs], floor))
    import_ms = statistics.median(r[2]["import_ms"] for r in runs)
    runtime_ms = statistics.median(r[2]["runtime_ms"] for r in runs)
    request_ms = statistics.median(r[2]["request_ms"] for r in runs)
    print(
        f"     in the child: create_app (functions-framework, Flask, main.py) {import_ms:.0f} ms, runtime() "
        f"{runtime_ms:.0f} ms (clients, store, loop, admin key), first request {request_ms:.0f} ms "
        "(key, tenant, models from Firestore)"
    )
    print_import_report(
        "import functions.gcp.main",
        "import functions_framework, pydantic, google.auth, google.cloud.firestore, google.cloud.storage",
        args.top,
    )


if __name__ == "__main__":
    main()
