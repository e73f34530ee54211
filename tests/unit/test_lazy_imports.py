"""A cold start imports only what its first request needs: route areas, batches, fine-tuning and JWT load late."""

from __future__ import annotations

import json
import subprocess
import sys
import threading
from pathlib import Path

import pytest

from core.api import AREAS, build_router
from core.errors import NotFound
from core.http import Request
from core.routes import Router

ROOT = Path(__file__).resolve().parents[2]


def test_a_request_loads_only_the_area_its_path_names() -> None:
    router = build_router()
    assert router.match(Request("GET", "/v1/models")).path == "/v1/models"
    assert [module for module, _ in router._areas] == [f"core.api.{a}" for a, _ in AREAS if a != "models"]
    assert router.match(Request("POST", "/v1/chat/completions")).path == "/v1/chat/completions"
    assert len(router._areas) == len(AREAS) - 2


def test_an_unknown_path_loads_every_area_then_is_404() -> None:
    router = build_router()
    with pytest.raises(NotFound):
        router.match(Request("GET", "/v2/nothing"))
    assert router._areas == []


def test_a_path_outside_every_prefix_still_finds_its_route() -> None:
    """The prefixes are a shortcut: a route they do not name is found after every area is loaded."""
    router = build_router()
    router._areas = [(module, ("/nowhere",)) for module, _ in router._areas]
    assert router.match(Request("GET", "/v1/files/file-1")).path == "/v1/files/{file_id}"


def test_listing_routes_loads_every_area_in_a_stable_order() -> None:
    router = build_router()
    router.match(Request("GET", "/admin/tenants"))  # loaded first, still listed last
    paths = [r.path for r in router.routes]
    assert paths == [r.path for r in build_router().routes]
    assert paths[0] == "/health"
    assert paths[-1] == "/admin/signing-keys/rotate"


_PROBE = """
import asyncio, json, sys
from adapters.local.memory_store import MemoryStore
from core.app import Gateway
from core.auth import api_keys
from core.clock import FixedClock
from core.domain import Tenant
from core.http import Request
from core.routes import Router

clock = FixedClock()
store = MemoryStore(clock=clock.now)
store.put_tenant(Tenant("t1", "t", clock.now()))
key, record = api_keys.mint("t1", "k", frozenset({"generate"}), clock.now())
store.put_key(record)
gateway = Gateway(store, None, clock=clock)
response = asyncio.run(gateway.handle(Request("GET", "/v1/models", {"authorization": f"Bearer {key}"})))
watched = ["jwt", "cryptography", "core.batch.runner", "core.fine_tuning.service", "core.validation",
           "core.api.validate", "core.api.files", "core.api.admin"]
print(json.dumps({"status": response.status, "loaded": [m for m in watched if m in sys.modules]}))
"""


def test_a_first_request_with_an_api_key_imports_no_jwt_batch_fine_tuning_or_validation() -> None:
    done = subprocess.run(
        [sys.executable, "-c", _PROBE], cwd=ROOT, capture_output=True, text=True, timeout=60, check=True
    )
    result = json.loads(done.stdout.strip().splitlines()[-1])
    assert result == {"status": 200, "loaded": []}


def _race(router: Router, paths: list[str]) -> tuple[list[str], list[BaseException]]:
    """Every path matched at once, one thread each."""
    found: list[str] = []
    errors: list[BaseException] = []
    start = threading.Barrier(len(paths))

    def call(path: str) -> None:
        start.wait()
        try:
            found.append(router.match(Request("GET", path)).path)
        except BaseException as exc:
            errors.append(exc)

    threads = [threading.Thread(target=call, args=(path,)) for path in paths]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return found, errors


def test_threads_racing_to_load_areas_all_find_their_routes() -> None:
    """A thread that misses while another registers the area must match again, not answer 404/405."""
    paths = ["/health", "/v1/models", "/v1/files", "/admin/tenants", "/v1/usage", "/v1/batches"] * 3
    for _ in range(50):  # a lost race is rare: many rounds
        found, errors = _race(build_router(), paths)
        assert errors == []
        assert sorted(found) == sorted(paths)
