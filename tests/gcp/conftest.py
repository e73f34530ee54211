"""Fixtures for the Google Cloud adapters: the Cloud Storage emulator (one per run, in this process), storage
clients that record their requests, a local Secret Manager REST server per test, and the Firestore emulator (one
per session, in a process group of its own, stopped by the session's finaliser and at exit)."""

from __future__ import annotations

import threading
from collections.abc import Iterator
from dataclasses import dataclass
from typing import Any

import pytest
import requests

from tests.gcp.firestore_emulator import FirestoreEmulator, firestore_emulator, stop_firestore_emulator
from tests.gcp.gcs_emulator import PROJECT, gcs_emulator_url, new_bucket
from tests.gcp.secret_manager_server import SecretManagerServer, secret_manager_server


@dataclass(frozen=True)
class Sent:
    method: str
    url: str
    thread: str


class RecordingSession(requests.Session):
    """A plain session (anonymous: nothing can reach a real project) that keeps every request it sends."""

    def __init__(self) -> None:
        super().__init__()
        self.sent: list[Sent] = []

    def request(self, method: str | bytes, url: str | bytes, *args: Any, **kwargs: Any) -> requests.Response:
        self.sent.append(Sent(str(method), str(url), threading.current_thread().name))
        return super().request(method, url, *args, **kwargs)

    @property
    def made(self) -> list[Sent]:
        """The requests the code under test made: without the storage client's own background checks of a
        bucket's metadata (threads ``_fetch_background``, ``_verify_existence_background``, started on a 404)."""
        return [s for s in self.sent if "_background" not in s.thread]


@pytest.fixture
def gcs_session() -> Iterator[RecordingSession]:
    session = RecordingSession()
    yield session
    session.close()


@pytest.fixture
def gcs_client(gcs_session: RecordingSession) -> Any:
    """A storage client on the shared emulator whose requests are recorded in ``gcs_session.sent``."""
    from google.auth.credentials import AnonymousCredentials
    from google.cloud import storage

    return storage.Client(
        project=PROJECT,
        credentials=AnonymousCredentials(),
        client_options={"api_endpoint": gcs_emulator_url()},
        _http=gcs_session,
    )


@pytest.fixture
def bucket(gcs_client: Any) -> str:
    """A new bucket for the test."""
    return new_bucket(gcs_client)


@dataclass
class SecretManager:
    url: str  # the /v1 base URL
    api: SecretManagerServer


@pytest.fixture
def secret_manager() -> Iterator[SecretManager]:
    """A Secret Manager REST server of the test's own (hooks and faults stay with the test); stopped after it."""
    with secret_manager_server() as (url, api):
        yield SecretManager(url, api)


@pytest.fixture(scope="session")
def firestore_emulator_host() -> Iterator[FirestoreEmulator]:
    """The session's Firestore emulator; its whole process group is killed when the session ends (and at exit,
    should the session not end normally). Tests keep apart by project (``firestore_emulator.new_project``)."""
    emulator = firestore_emulator()
    yield emulator
    stop_firestore_emulator()
