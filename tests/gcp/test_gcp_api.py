"""``functions.gcp.main.api`` through functions-framework's Flask app, on the Firestore and Cloud Storage emulators.

The world is what ``terraform/gcp`` deploys, emulated: a Firestore database (a project of its own on the session's
emulator), a data bucket and an input bucket (the trigger's), the admin key imported at the first request. Models
are ``openai`` routes to the zero-latency fake OpenAI server (``bench.fake_openai_server``), whose ``fault:<mode>``
models give the failures. Requests are the samples of ``events/gcp`` (``http_*.json``).
"""

from __future__ import annotations

import dataclasses
import json
import threading
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
from cloudevents.conversion import to_structured
from cloudevents.http import CloudEvent

import functions.gcp
from functions.gcp import bootstrap
from tests.fakes import multipart
from tests.gcp.firestore_emulator import firestore_emulator, new_project
from tests.gcp.gcs_emulator import gcs_emulator_url, new_bucket, storage_client

pytestmark = pytest.mark.gcp

MAIN = str(Path(functions.gcp.__file__).parent / "main.py")
EVENTS = Path(__file__).resolve().parents[2] / "events" / "gcp"
ADMIN_KEY = "GcpAdminKeyFromSecretManager0123456789abcdefXYZ"
MODEL = "fake-chat"


@dataclass
class World:
    project: str
    bucket: str
    input_bucket: str
    fake_url: str
    api: Any  # Flask test clients
    batch: Any
    gcs: Any

    # -- HTTP ---------------------------------------------------------------------------------------------

    def call(self, name: str, key: str | None = None, **change: Any) -> Any:
        """The sample request ``events/gcp/http_<name>.json``, with ``change`` (path, body, query, headers)."""
        sample = json.loads((EVENTS / f"http_{name}.json").read_text())
        headers = {**sample["headers"], **change.get("headers", {})}
        headers.pop("authorization", None)
        if key is not None:
            headers["authorization"] = f"Bearer {key}"
        body = change.get("body", sample["body"])
        data = body if isinstance(body, str | bytes) or body is None else json.dumps(body)
        return self.api.open(
            change.get("path", sample["path"]),
            method=change.get("method", sample["method"]),
            headers=headers,
            query_string=change.get("query", sample["query"]),
            data=data,
        )

    def admin(self, method: str, path: str, body: Any) -> Any:
        answer = self.call("generate_ok", ADMIN_KEY, method=method, path=path, body=body)
        assert answer.status_code in (200, 201), answer.get_data(as_text=True)
        return answer.get_json()

    def tenant(self, name: str) -> tuple[str, str]:
        """A new tenant and a key of it (generate, embed, batch)."""
        tenant_id: str = self.admin("POST", "/admin/tenants", {"name": name})["id"]
        body = {"name": "test", "scopes": ["generate", "embed", "batch"]}
        key: str = self.admin("POST", f"/admin/tenants/{tenant_id}/keys", body)["key"]
        return tenant_id, key

    def model(self, model_id: str, upstream: str = "m", **fields: Any) -> None:
        backend = {"type": "openai", "base_url": self.fake_url, "model": upstream}
        spec = {"id": model_id, "kind": "generation", "backend": backend, "context_length": 4096}
        self.admin("POST", "/admin/models", {"max_output_tokens": 64, "max_retries": 0, **spec, **fields})

    # -- Cloud Storage --------------------------------------------------------------------------------------

    def put(self, bucket: str, name: str, data: bytes) -> Any:
        blob = self.gcs.bucket(bucket).blob(name)
        blob.upload_from_string(data)
        blob.reload()
        return blob

    def finalized(self, blob: Any, **data: Any) -> tuple[dict[str, str], bytes]:
        """The Eventarc delivery (structured mode) of ``blob``'s "object finalized" event."""
        fields = {
            "bucket": blob.bucket.name,
            "name": blob.name,
            "generation": str(blob.generation),
            "size": str(blob.size),
            "contentType": blob.content_type or "application/octet-stream",
            **data,
        }
        return cloud_event(fields)

    def deliver(self, headers: dict[str, str], body: bytes) -> Any:
        return self.batch.post("/", headers=headers, data=body)


def cloud_event(data: dict[str, Any], name: str = "object_finalized_batch_input", **attrs: Any) -> Any:
    sample = json.loads((EVENTS / f"gcs_{name}.json").read_text())
    attributes = {k: v for k, v in sample.items() if k not in ("data", "specversion", "datacontenttype")}
    attributes.update(attrs, subject=f"objects/{data.get('name', '')}")
    return to_structured(CloudEvent(attributes, {**sample["data"], **data}))


@contextmanager
def gcp_world() -> Iterator[World]:
    """The emulated deployment, its environment set and its runtime dropped again afterwards."""
    from functions_framework import create_app

    from bench.fake_openai_server import start_in_thread

    emulator = firestore_emulator()
    gcs_url = gcs_emulator_url()
    gcs = storage_client(gcs_url)
    data_bucket, input_bucket = new_bucket(gcs), new_bucket(gcs)
    project = new_project()
    fake_url, stop_fake = start_in_thread()
    env = {
        "FIRESTORE_EMULATOR_HOST": emulator.host,
        "STORAGE_EMULATOR_HOST": gcs_url,
        "TEXTNLP_GCP_PROJECT": project,
        "TEXTNLP_BUCKET": data_bucket,
        "TEXTNLP_INPUT_BUCKET": input_bucket,
        "TEXTNLP_ADMIN_KEY": ADMIN_KEY,
        "TEXTNLP_TIMEOUT_S": "30",
        "TEXTNLP_LOG_LEVEL": "WARNING",
        # One line at a time: concurrent lines of one tenant contend for its counter document, and the emulator
        # answers a contended transaction only after its lock timeout (seconds). Budget slices end that (see the
        # core.budget_slices); until then, the tests stay fast this way.
        "TEXTNLP_BATCH_CONCURRENCY": "1",
    }
    try:
        with pytest.MonkeyPatch.context() as patch:
            for name, value in env.items():
                patch.setenv(name, value)
            bootstrap.reset()
            api = create_app("api", MAIN).test_client()
            batch = create_app("batch", MAIN, "cloudevent").test_client()
            yield World(project, data_bucket, input_bucket, fake_url, api, batch, gcs)
            bootstrap.reset()
    finally:
        stop_fake()


@pytest.fixture(scope="module")
def world() -> Iterator[World]:
    with gcp_world() as w:
        w.model(MODEL)
        w.model("fault-500", "fault:500")
        yield w


@pytest.fixture(scope="module")
def acme(world: World) -> tuple[str, str]:
    return world.tenant("acme")


def chat(world: World, key: str, **fields: Any) -> Any:
    body = json.loads(json.loads((EVENTS / "http_chat_completions_ok.json").read_text())["body"])
    body.update({"model": MODEL, **fields})
    return world.call("chat_completions_ok", key, body=body)


def usage_totals(world: World, key: str) -> dict[str, Any]:
    answer = world.call("usage_ok", key)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    totals: dict[str, Any] = answer.get_json()["totals"]
    return totals


# -- auth ----------------------------------------------------------------------------------------------------


def test_the_admin_key_is_imported_at_the_first_request_and_lists_the_models(world: World) -> None:
    answer = world.call("models_list_ok", ADMIN_KEY)
    assert answer.status_code == 200
    assert MODEL in [m["id"] for m in answer.get_json()["data"]]
    assert answer.headers["x-request-id"]


def test_a_request_without_a_key_or_with_a_wrong_one_is_401_in_the_error_shape(world: World) -> None:
    for key in (None, "tnlp_key_nope_nothing"):
        answer = world.call("models_list_ok", key)
        assert answer.status_code == 401
        error = answer.get_json()["error"]
        assert {"message", "type", "code"} <= set(error)


def test_an_access_token_from_auth_token_works_as_a_bearer(world: World, acme: tuple[str, str]) -> None:
    token = world.call("auth_token_ok", acme[1]).get_json()["access_token"]
    assert world.call("models_list_ok", token).status_code == 200


# -- generation ------------------------------------------------------------------------------------------------


def test_a_chat_completion_answers_and_is_metered(world: World) -> None:
    _, key = world.tenant("meter")
    answer = chat(world, key, headers=None)
    assert answer.status_code == 200, answer.get_data(as_text=True)
    body = answer.get_json()
    assert body["choices"][0]["message"]["content"]
    assert answer.headers["x-request-id"]
    totals = usage_totals(world, key)
    assert totals["requests"] == 1
    assert totals["total_tokens"] == body["usage"]["total_tokens"]


def test_a_callers_request_id_is_echoed(world: World, acme: tuple[str, str]) -> None:
    answer = world.call("models_list_ok", acme[1], headers={"x-request-id": "trace-42"})
    assert answer.headers["x-request-id"] == "trace-42"


def test_a_stream_arrives_as_server_sent_events_and_is_charged_once(world: World) -> None:
    _, key = world.tenant("streamer")
    body = json.loads(json.loads((EVENTS / "http_chat_completions_stream.json").read_text())["body"])
    answer = world.call("chat_completions_stream", key, body={**body, "model": MODEL})
    assert answer.status_code == 200
    assert answer.headers["content-type"].startswith("text/event-stream")
    text = answer.get_data(as_text=True)
    events = [line.removeprefix("data: ") for line in text.splitlines() if line.startswith("data: ")]
    assert events[-1] == "[DONE]"
    chunks = [json.loads(e) for e in events[:-1]]
    words = "".join(c["choices"][0]["delta"].get("content") or "" for c in chunks if c["choices"])
    assert words.strip()
    [usage] = [c["usage"] for c in chunks if c.get("usage")]
    totals = usage_totals(world, key)
    assert totals["requests"] == 1
    assert totals["total_tokens"] == usage["total_tokens"]


def test_errors_come_in_the_api_error_shape(world: World, acme: tuple[str, str]) -> None:
    key = acme[1]
    bad = world.call("chat_completions_bad_json", key)
    assert bad.status_code == 400
    assert bad.get_json()["error"]["code"] == "invalid_json"
    missing = world.call("unknown_route_not_found", key)
    assert missing.status_code == 404
    assert missing.get_json()["error"]["type"]
    upstream = chat(world, key, model="fault-500")
    assert upstream.status_code in (502, 503)
    assert upstream.get_json()["error"]["message"]
    too_big = world.call("chat_completions_bad_json", key, body="x" * (1_048_576 + 10))
    assert too_big.status_code == 413
    assert too_big.get_json()["error"]["type"]
    assert too_big.headers["x-request-id"]


def test_many_threads_at_once_share_the_instances_one_loop(world: World) -> None:
    # One tenant each: the emulator serialises transactions on one document (seconds of lock waits), and a
    # tenant's concurrency on Firestore is the budget slices' business (core.budget_slices), not this test's.
    keys = [world.tenant(f"concurrent-{n}")[1] for n in range(8)]
    statuses: list[int] = []

    def one(key: str) -> None:
        statuses.append(chat(world, key, temperature=0.9).status_code)

    threads = [threading.Thread(target=one, args=(key,)) for key in keys]
    for t in threads:
        t.start()
    for t in threads:
        t.join(30)
    assert statuses == [200] * 8


def test_an_instance_without_credentials_says_so_plainly(world: World, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.delenv("FIRESTORE_EMULATOR_HOST")
    monkeypatch.setenv("GOOGLE_APPLICATION_CREDENTIALS", "/nonexistent/credentials.json")
    bootstrap.reset()
    try:
        answer = world.call("models_list_ok", ADMIN_KEY)
        assert answer.status_code == 503
        error = answer.get_json()["error"]
        assert error["code"] == "startup_failed"
        assert "credentials cannot be loaded" in error["message"]
    finally:
        monkeypatch.undo()
        bootstrap.reset()
    assert world.call("models_list_ok", ADMIN_KEY).status_code == 200


# -- files and batches on Cloud Storage ----------------------------------------------------------------------


def test_files_and_an_api_batch_live_on_cloud_storage_and_run_through_the_batch_function(world: World) -> None:
    tenant, key = world.tenant("files")
    lines = [
        {"custom_id": f"r{i}", "method": "POST", "url": "/v1/chat/completions",
         "body": {"model": MODEL, "messages": [{"role": "user", "content": f"say {i} things"}], "max_tokens": 8}}
        for i in range(3)
    ]  # fmt: skip
    content = b"".join(json.dumps(line).encode() + b"\n" for line in lines)
    body = multipart({"purpose": "batch"}, {"file": ("in.jsonl", content)})
    upload = world.call(
        "generate_ok",
        key,
        path="/v1/files",
        body=body,
        headers={"content-type": "multipart/form-data; boundary=b0undary"},
    )
    assert upload.status_code in (200, 201), upload.get_data(as_text=True)
    file_id = upload.get_json()["id"]
    stored = [b.name for b in world.gcs.list_blobs(world.bucket, prefix=f"files/{tenant}/")]
    assert stored, "the upload is an object of the data bucket"
    assert world.call("generate_ok", key, method="GET", path=f"/v1/files/{file_id}/content", body=None).data == content

    sample = json.loads(json.loads((EVENTS / "http_batches_create_ok.json").read_text())["body"])
    created = world.call("batches_create_ok", key, body={**sample, "input_file_id": file_id})
    assert created.status_code in (200, 201), created.get_data(as_text=True)
    batch_id = created.get_json()["id"]
    job = world.gcs.bucket(world.input_bucket).get_blob(f"batch-jobs/{tenant}/{batch_id}.json")
    assert job is not None, "the job object is written before the answer"
    assert world.deliver(*world.finalized(job, contentType="application/json")).status_code == 200
    done = world.call("generate_ok", key, method="GET", path=f"/v1/batches/{batch_id}", body=None).get_json()
    assert done["status"] == "completed"
    assert done["request_counts"] == {"total": 3, "completed": 3, "failed": 0}
    output = world.call("generate_ok", key, method="GET", path=f"/v1/files/{done['output_file_id']}/content", body=None)
    assert sorted(json.loads(line)["custom_id"] for line in output.data.splitlines()) == ["r0", "r1", "r2"]


def test_fine_tuning_runs_on_vertex_ai_where_a_project_region_bucket_and_image_are_configured() -> None:
    from adapters.gcp.vertex_training import VertexTrainingTuner
    from functions.gcp.bootstrap import GcpSettings, fine_tuner

    configured = GcpSettings(project="p1", region="europe-west4", bucket="b1", training_image="img:1")
    assert isinstance(fine_tuner(configured), VertexTrainingTuner)
    for missing in ("project", "region", "bucket", "training_image"):
        assert fine_tuner(dataclasses.replace(configured, **{missing: None})) is None  # says it cannot train
