"""Revocation reaches every worker at once: three worker processes on one SQLite file, 5 s record caches.

Every worker has just served the key, so its cached key and tenant records say "active" for 5 s more; the
spending calls right after the revocation must all be refused all the same (the guard in the counters).
"""

from __future__ import annotations

import time
from collections.abc import Iterator

import httpx
import pytest

from tests.e2e import _support
from tests.e2e._support import FAKE_GEN, Server, error_code

pytestmark = pytest.mark.e2e
WORKERS = 3
CACHE_TTL = {"TEXTNLP_KEY_CACHE_TTL": "5", "TEXTNLP_TENANT_CACHE_TTL": "5"}


@pytest.fixture(scope="module")
def server_3w(e2e_dir, fake_openai: str) -> Iterator[Server]:
    with _support.run_server(e2e_dir / "data-3w", workers=WORKERS, env=CACHE_TTL, fake_base_url=fake_openai) as srv:
        yield srv


def generate(srv: Server, credential: str) -> httpx.Response:
    """A fresh connection per call, so the calls spread over the workers."""
    return httpx.post(
        srv.base_url + "/v1/generate",
        json={"model": FAKE_GEN, "prompt": "a b c", "max_tokens": 4},
        headers={"authorization": f"Bearer {credential}"},
        timeout=10,
    )


def test_a_revoked_key_and_its_token_are_refused_by_every_worker_at_once(server_3w: Server) -> None:
    srv = server_3w
    t = srv.create_tenant("revoke-3w")
    token = httpx.post(srv.base_url + "/auth/token", headers={"authorization": f"Bearer {t.key}"}).json()
    for _ in range(10 * WORKERS):
        assert generate(srv, t.key).status_code == 200
        assert generate(srv, token["access_token"]).status_code == 200

    assert srv.admin.delete(f"/admin/keys/{t.key_id}").status_code == 200
    started = time.monotonic()
    for _ in range(10 * WORKERS):
        for credential in (t.key, token["access_token"]):
            r = generate(srv, credential)
            assert r.status_code == 401, r.text
            assert error_code(r) == "key_revoked"
    assert time.monotonic() - started < 5, "all within the cache lifetime, so the caches did not do it"


def test_a_suspended_tenant_is_refused_by_every_worker_at_once(server_3w: Server) -> None:
    srv = server_3w
    t = srv.create_tenant("suspend-3w")
    for _ in range(10 * WORKERS):
        assert generate(srv, t.key).status_code == 200

    assert srv.admin.post(f"/admin/tenants/{t.id}/suspend").status_code == 200
    started = time.monotonic()
    for _ in range(10 * WORKERS):
        r = generate(srv, t.key)
        assert r.status_code == 403, r.text
        assert error_code(r) == "tenant_suspended"
    assert time.monotonic() - started < 5
