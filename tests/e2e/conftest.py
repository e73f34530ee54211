"""End-to-end fixtures: the fake OpenAI backend and the TextNLP server, as real subprocesses.

A failing test gets the tail of every live server's stderr attached to its report.
"""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.e2e import _support
from tests.e2e._support import Server, Tenant


@pytest.fixture(scope="session")
def e2e_dir(tmp_path_factory: pytest.TempPathFactory):
    return tmp_path_factory.mktemp("e2e")


@pytest.fixture(scope="session")
def fake_openai(e2e_dir) -> Iterator[str]:
    """Base URL (ending in /v1) of the zero-latency fake OpenAI server, one per session."""
    proc, base_url = _support.start_fake_openai(e2e_dir / "logs")
    try:
        yield base_url
    finally:
        proc.stop()


@pytest.fixture(scope="session")
def server(e2e_dir, fake_openai: str) -> Iterator[Server]:
    """One single-worker TextNLP server for the session, with fake-gen/fake-embed registered."""
    with _support.run_server(e2e_dir / "data-1w", workers=1, fake_base_url=fake_openai) as srv:
        yield srv


@pytest.fixture(scope="session")
def server_2w(e2e_dir, fake_openai: str) -> Iterator[Server]:
    """A TextNLP server with two worker processes sharing one SQLite file."""
    with _support.run_server(e2e_dir / "data-2w", workers=2, fake_base_url=fake_openai) as srv:
        yield srv


@pytest.fixture(scope="session")
def server_2w_sharded(e2e_dir, fake_openai: str) -> Iterator[Server]:
    """Two workers whose counters spread every tenant over 8 shards from the first request (core.budget_shards)."""
    env = {"TEXTNLP_COUNTER_SHARDS": "8", "TEXTNLP_COUNTER_SHARDS_START": "8", "TEXTNLP_COUNTER_ITEM_WRITES": "0.001"}
    with _support.run_server(e2e_dir / "data-2w-sharded", workers=2, env=env, fake_base_url=fake_openai) as srv:
        yield srv


@pytest.fixture
def tenant(server: Server, request: pytest.FixtureRequest) -> Tenant:
    """A fresh tenant with a generate+embed key on the shared server."""
    return server.create_tenant(request.node.name[:100])


@pytest.hookimpl(wrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo[None]):
    report = yield
    if report.failed:
        for proc in list(_support.LIVE):
            tail = proc.stderr_tail()
            if tail:
                report.sections.append((f"{proc.name} stderr (last {_support.STDERR_TAIL_LINES} lines)", tail))
    return report
