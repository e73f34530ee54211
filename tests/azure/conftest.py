"""Fixtures for the Cosmos DB store: the session's emulator (cosmosdb-server, in a process group of its own, stopped
by the session's finaliser and at exit). Each test makes its stores on databases of its own
(``tests.azure.cosmos_server.cosmos_store``)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest

from tests.azure.cosmos_server import CosmosServer, cosmos_server, stop_cosmos_server


@pytest.fixture(scope="session")
def cosmos_emulator() -> Iterator[CosmosServer]:
    server = cosmos_server()
    yield server
    stop_cosmos_server()
