"""The Cloud Storage emulator (gcp-storage-emulator) in this process, and storage clients on it.

Plain functions (no fixtures), so the contract suites in tests/contract can use it too: one server for the
whole run, started on first use (about 60 ms) on a free port of 127.0.0.1 and stopped at exit. Suites name
their buckets uniquely instead of resetting it. Its quirks: it does not enforce generation preconditions
(``if_generation_match``), and it serves the current object whatever ``generation`` a download asks for.
"""

from __future__ import annotations

import atexit
import functools
import logging
import uuid
from typing import Any

PROJECT = "textnlp-test"


@functools.cache
def gcs_emulator_url() -> str:
    """Start the shared emulator (in memory) and return its URL; it is stopped when the process exits."""
    from gcp_storage_emulator.server import create_server

    logging.getLogger("gcp_storage_emulator").setLevel(logging.CRITICAL)  # it logs every request
    server = create_server("127.0.0.1", 0, in_memory=True)
    server._api.daemon = True  # never keeps the interpreter alive, even if the exit hook did not run
    server.start()
    atexit.register(server.stop)
    host, port = server._api._httpd.server_address[:2]  # port 0: the port the OS chose
    return f"http://{host}:{port}"


def storage_client(url: str | None = None) -> Any:
    """A client with anonymous credentials on the emulator: nothing can reach a real project."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": url or gcs_emulator_url()},
    )


def new_bucket(client: Any) -> str:
    """A bucket of its own for one test."""
    name = f"textnlp-{uuid.uuid4().hex[:16]}"
    client.create_bucket(name)
    return name
