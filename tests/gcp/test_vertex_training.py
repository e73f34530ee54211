"""VertexTrainingTuner against a local Vertex AI REST server (tests/gcp/vertex_jobs_server.py): the CustomJob a
job becomes, its states, the deploy step (endpoint, Model Registry upload, deployModel: long-running operations
that take a few polls), the registered model's route, cancel, and the failures (a failed job, quota, a deploy
that fails)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest
import requests

from adapters.gcp.backend_types import vertex_type
from adapters.gcp.vertex_jobs_wire import CANCELLED_LABEL, SIZES, resource_id
from adapters.gcp.vertex_route import VertexRoute
from adapters.gcp.vertex_training import VertexTrainingTuner
from core.backend_types import BackendCatalog
from core.errors import BackendError, InvalidRequest
from core.fine_tuning.job import FineTuneJob, TunerStatus
from tests.fakes import FakeBackend, json_of, make_harness, training_jsonl
from tests.gcp.vertex_jobs_server import PROJECT_NUMBER, VertexJobsServer, vertex_jobs_server

pytestmark = pytest.mark.gcp

IMAGE = "us-docker.pkg.dev/textnlp-test/training/hf-trainer:1"
JOB_ID = "ftjob-0000000001aa0123456789ab"
RID = f"textnlp-{JOB_ID}"
PARENT = f"projects/{PROJECT_NUMBER}/locations/us-central1"
ENDPOINT = f"{PARENT}/endpoints/{RID}"
ROUTE = {
    "type": "vertex",
    "project": "textnlp-test",
    "location": "us-central1",
    "endpoint_id": RID,
    "api": "predict-tgi",
}
QUOTA = (
    "The following quota metrics exceed quota limits: aiplatform.googleapis.com/custom_model_training_nvidia_l4_gpus"
)


def job(job_id: str = JOB_ID, **kw: Any) -> FineTuneJob:
    fields: dict[str, Any] = {
        "id": job_id,
        "tenant_id": "ten_a",
        "key_id": "key_1",
        "model": "smollm2",
        "training_file": "file-1",
        "training_key": "files/ten_a/file-1",
        "created_at": 1_790_000_000.0,
        "seed": 42,
        "hyperparameters": {"n_epochs": 3, "batch_size": "auto", "learning_rate_multiplier": 0.5},
        "base_model_ref": "HuggingFaceTB/SmolLM2-135M-Instruct",
    }
    return FineTuneJob(**{**fields, **kw})


@pytest.fixture
def vertex() -> Iterator[tuple[str, VertexJobsServer]]:
    """Operations take one ``operations.get`` to finish; jobs move only when a test moves them."""
    with vertex_jobs_server(lro_gets=1) as started:
        yield started


@pytest.fixture
def api(vertex: tuple[str, VertexJobsServer]) -> VertexJobsServer:
    return vertex[1]


@pytest.fixture
def tuner(vertex: tuple[str, VertexJobsServer]) -> Iterator[VertexTrainingTuner]:
    with requests.Session() as session:
        yield tuner_on(vertex[0], session)


def tuner_on(url: str, session: requests.Session, **kw: Any) -> VertexTrainingTuner:
    options: dict[str, Any] = {"data_prefix": "prod/", "artifacts_bucket": "textnlp-models", "serving_size": "large"}
    return VertexTrainingTuner(
        "textnlp-test", "us-central1", "textnlp-data", IMAGE, session=session, api_url=url, **{**options, **kw}
    )


def started(api: VertexJobsServer, tuner: VertexTrainingTuner, state: str = "JOB_STATE_SUCCEEDED") -> FineTuneJob:
    j = job()
    j.external_id = tuner.start(j, j.training_key, None)
    api.set_state(j.external_id, state)
    api.calls.clear()
    return j


def settle(tuner: VertexTrainingTuner, j: FineTuneJob, polls: int = 10) -> list[TunerStatus]:
    seen = [tuner.status(j)]
    while seen[-1].state == "running" and len(seen) < polls:
        seen.append(tuner.status(j))
    return seen


def test_start_creates_a_custom_job_from_the_spec(api: VertexJobsServer, tuner: VertexTrainingTuner) -> None:
    j = job()
    name = tuner.start(j, "files/ten_a/file-1", "files/ten_a/file-2")
    assert name.startswith(f"{PARENT}/customJobs/")
    created = api.jobs[name]
    (pool,) = created["jobSpec"]["workerPoolSpecs"]
    assert pool["machineSpec"] == {
        "machineType": "g2-standard-4",
        "acceleratorType": "NVIDIA_L4",
        "acceleratorCount": 1,
    }
    assert pool["containerSpec"] == {
        "imageUri": IMAGE,
        "args": [
            "--model_id=HuggingFaceTB/SmolLM2-135M-Instruct",
            "--train_data=gs://textnlp-data/prod/files/ten_a/file-1",
            "--validation_data=gs://textnlp-data/prod/files/ten_a/file-2",
            "--n_epochs=3",
            "--batch_size=auto",
            "--learning_rate_multiplier=0.5",
            "--seed=42",
        ],
    }
    output = f"gs://textnlp-models/models/ten_a/{JOB_ID}/"
    assert created["jobSpec"]["baseOutputDirectory"] == {"outputUriPrefix": output}
    assert created["jobSpec"]["scheduling"] == {"timeout": "86400s"}
    assert created["labels"] == {"textnlp-job": JOB_ID, "textnlp-tenant": "ten_a"}
    assert tuner.start(j, "files/ten_a/file-1", None) == name  # a repeated start finds it by its label
    assert len(api.jobs) == 1


@pytest.mark.parametrize(
    ("state", "expected", "error"),
    [
        ("JOB_STATE_QUEUED", "queued", None),
        ("JOB_STATE_PENDING", "queued", None),
        ("JOB_STATE_RUNNING", "running", None),
        ("JOB_STATE_CANCELLING", "cancelled", None),
        ("JOB_STATE_CANCELLED", "cancelled", None),
        ("JOB_STATE_FAILED", "failed", ("INTERNAL", "Replica workerpool0-0 exited with a non-zero status of 1.")),
        ("JOB_STATE_EXPIRED", "failed", None),
        ("JOB_STATE_SUCCEEDED", "running", None),  # trained: deploying now
    ],
)
def test_custom_job_states_map_to_job_states(
    api: VertexJobsServer, tuner: VertexTrainingTuner, state: str, expected: str, error: tuple[str, str] | None
) -> None:
    j = job()
    j.external_id = tuner.start(j, j.training_key, None)
    api.set_state(j.external_id, state, error)
    status = tuner.status(j)
    assert status.state == expected
    assert status.fine_tuned_model_route is None
    if expected == "failed":
        assert status.error == (error[1] if error else "the custom job ended JOB_STATE_EXPIRED")
    assert bool(api.endpoints or api.operations) is (state == "JOB_STATE_SUCCEEDED")


def test_a_succeeded_job_is_uploaded_deployed_and_served(api: VertexJobsServer, tuner: VertexTrainingTuner) -> None:
    j = started(api, tuner)
    polls = settle(tuner, j)
    assert [s.state for s in polls] == ["running"] * (len(polls) - 1) + ["succeeded"]
    for earlier, later in itertools.pairwise(polls):
        assert later.events[: len(earlier.events)] == earlier.events  # the service records events by position
    done = polls[-1]
    assert done.fine_tuned_model_route == ROUTE
    assert done.events[-4:] == [
        f"Creating endpoint {RID}",
        "Uploading the model to the Vertex AI Model Registry",
        f"Deploying the model to endpoint {RID}",
        f"Endpoint {RID} is serving the model",
    ]
    model = api.models[f"{PARENT}/models/{RID}"]
    assert model["artifactUri"] == f"gs://textnlp-models/models/ten_a/{JOB_ID}/model/"
    assert {"name": "NUM_SHARD", "value": "4"} in model["containerSpec"]["env"]
    (deployed,) = api.endpoints[ENDPOINT]["deployedModels"]
    assert deployed["dedicatedResources"]["machineSpec"] == SIZES["large"].body()
    assert api.endpoints[ENDPOINT]["trafficSplit"] == {deployed["id"]: 100}
    assert done.metadata["deployed_model_id"] == deployed["id"]
    assert done.metadata["artifact_uri"] == model["artifactUri"]
    assert api.pending() == []
    api.calls.clear()
    assert tuner.status(j).state == "succeeded"  # later polls create nothing
    assert api.calls == ["get", "getEndpoint"]


def test_each_step_starts_once_however_many_instances_poll(api: VertexJobsServer, tuner: VertexTrainingTuner) -> None:
    j = started(api, tuner)
    with requests.Session() as other_session:
        other = tuner_on(f"http://127.0.0.1:{_port(tuner)}", other_session)
        for _ in range(10):
            states = {tuner.status(j).state, other.status(j).state}
            if states == {"succeeded"}:
                break
    assert states == {"succeeded"}
    assert [api.calls.count(a) for a in ("createEndpoint", "upload", "deployModel")] == [1, 1, 1]


def test_the_route_is_one_the_vertex_backend_type_serves(api: VertexJobsServer, tuner: VertexTrainingTuner) -> None:
    route = settle(tuner, started(api, tuner))[-1].fine_tuned_model_route
    assert route is not None
    BackendCatalog([vertex_type()], "Google Cloud").check_route(route)  # what registering the model checks
    parsed = VertexRoute.parse(route)
    assert parsed.resource == f"projects/textnlp-test/locations/us-central1/endpoints/{RID}"
    assert parsed.path == f"/v1/{parsed.resource}:predict"


def test_the_gateway_trains_on_vertex_and_registers_the_model(vertex: tuple[str, VertexJobsServer]) -> None:
    url, api = vertex
    api.auto = True
    with requests.Session() as session:
        h = make_harness(backend=FakeBackend(), fine_tuner=tuner_on(url, session))
        _, key = h.new_tenant("trainer", scopes=frozenset({"fine_tune"}))
        uploaded = json_of(h.upload(training_jsonl(), purpose="fine-tune", key=key))
        body = {"model": "fake-gen", "training_file": uploaded["id"], "hyperparameters": {"n_epochs": 2}}
        created = json_of(h.call_json("POST", "/v1/fine_tuning/jobs", body, key=key))
        assert created["status"] == "queued"
        for _ in range(12):
            h.clock.advance(10)
            found = json_of(h.call("GET", f"/v1/fine_tuning/jobs/{created['id']}", key=key))
            if found["status"] == "succeeded":
                break
        assert found["status"] == "succeeded"
        spec = h.gateway.registry.get(found["fine_tuned_model"])
        assert spec.backend == {**ROUTE, "endpoint_id": resource_id(created["id"])}
        assert (spec.metadata["tenant_id"], spec.metadata["deployed"]) == ("ten_trainer", True)
        (custom_job,) = api.jobs.values()
        args = custom_job["jobSpec"]["workerPoolSpecs"][0]["containerSpec"]["args"]
        assert f"--train_data=gs://textnlp-data/prod/files/ten_trainer/{uploaded['id']}" in args
        assert "--n_epochs=2" in args
        events = json_of(h.call("GET", f"/v1/fine_tuning/jobs/{created['id']}/events", key=key))["data"]
        assert f"Endpoint {resource_id(created['id'])} is serving the model" in [e["message"] for e in events]


def test_a_failed_job_carries_its_reason_and_deploys_nothing(api: VertexJobsServer, tuner: VertexTrainingTuner) -> None:
    j = started(api, tuner, "JOB_STATE_FAILED")
    api.jobs[j.external_id or ""]["error"] = {"code": 13, "message": "CUDA out of memory"}
    status = tuner.status(j)
    assert (status.state, status.error) == ("failed", "CUDA out of memory")
    assert status.events[-1] == "Training failed: CUDA out of memory"
    assert api.calls == ["get"]


@pytest.mark.parametrize(
    ("fault", "status", "code", "retryable"),
    [
        (("RESOURCE_EXHAUSTED", QUOTA), 503, "training_capacity", False),
        (
            ("RESOURCE_EXHAUSTED", "Quota exceeded for aiplatform.googleapis.com/requests per minute"),
            429,
            "backend_throttled",
            True,
        ),
        (("UNAVAILABLE", "The service is currently unavailable."), 502, "backend_error", True),
        (
            ("PERMISSION_DENIED", "Permission 'aiplatform.customJobs.create' denied"),
            502,
            "backend_misconfigured",
            False,
        ),
        (("INVALID_ARGUMENT", "Machine type g2-standard-4 is not supported."), 502, "backend_misconfigured", False),
    ],
)
def test_a_refused_start_is_a_backend_error(
    api: VertexJobsServer, tuner: VertexTrainingTuner, fault: tuple[str, str], status: int, code: str, retryable: bool
) -> None:
    api.faults["create"] = [fault]
    with pytest.raises(BackendError) as err:
        tuner.start(job(), "files/ten_a/file-1", None)
    assert (err.value.status, err.value.code, err.value.retryable) == (status, code, retryable)
    assert fault[1] in err.value.message
    assert api.jobs == {}


def test_a_quota_refusal_fails_the_job_through_the_gateway(vertex: tuple[str, VertexJobsServer]) -> None:
    url, api = vertex
    api.faults["create"] = [("RESOURCE_EXHAUSTED", QUOTA)]
    with requests.Session() as session:
        h = make_harness(backend=FakeBackend(), fine_tuner=tuner_on(url, session))
        _, key = h.new_tenant("trainer", scopes=frozenset({"fine_tune"}))
        uploaded = json_of(h.upload(training_jsonl(), purpose="fine-tune", key=key))
        body = {"model": "fake-gen", "training_file": uploaded["id"]}
        created = json_of(h.call_json("POST", "/v1/fine_tuning/jobs", body, key=key))
    assert created["status"] == "failed"
    assert created["error"]["code"] == "training_capacity"
    assert QUOTA in created["error"]["message"]


def test_a_deployment_that_fails_fails_the_job(api: VertexJobsServer, tuner: VertexTrainingTuner) -> None:
    j = started(api, tuner)
    message = "The following quota metrics exceed quota limits: custom_model_serving_nvidia_l4_gpus"
    api.deploy_errors.append(("RESOURCE_EXHAUSTED", message))
    polls = settle(tuner, j)
    assert polls[-1].state == "failed"
    assert polls[-1].error == f"the trained model could not be deployed (endpoint {RID}): {message}"
    assert polls[-1].fine_tuned_model_route is None
    assert tuner.status(j).state == "failed"  # and stays failed: no second deployment
    assert api.calls.count("deployModel") == 1


def test_a_refused_deploy_call_fails_the_job_and_a_passing_error_waits(
    api: VertexJobsServer, tuner: VertexTrainingTuner
) -> None:
    j = started(api, tuner)
    api.faults["deployModel"] = [("UNAVAILABLE", "try again"), ("RESOURCE_EXHAUSTED", QUOTA)]
    with pytest.raises(BackendError) as err:  # 503: the service logs it and keeps the job for the next poll
        settle(tuner, j)
    assert err.value.retryable
    status = tuner.status(j)
    assert status.state == "failed"
    assert QUOTA in (status.error or "")


def test_cancel_stops_a_running_job(api: VertexJobsServer, tuner: VertexTrainingTuner) -> None:
    j = started(api, tuner, "JOB_STATE_RUNNING")
    tuner.cancel(j)
    assert api.jobs[j.external_id or ""]["state"] == "JOB_STATE_CANCELLING"
    assert tuner.status(j).state == "cancelled"
    api.set_state(j.external_id or "", "JOB_STATE_CANCELLED")
    api.calls.clear()
    tuner.cancel(j)  # ended: nothing to cancel
    tuner.cancel(job("ftjob-0000000001aa0000000000ff"))  # never started: nothing either
    assert api.calls == ["get", "list"]


def test_a_cancel_refused_because_the_job_just_succeeded_takes_the_model_down(
    api: VertexJobsServer, tuner: VertexTrainingTuner
) -> None:
    j = started(api, tuner, "JOB_STATE_RUNNING")
    api.hooks["get"] = lambda: api.set_state(j.external_id or "", "JOB_STATE_SUCCEEDED")
    tuner.cancel(j)  # :cancel answers FAILED_PRECONDITION: it succeeded meanwhile
    assert api.calls[:3] == ["get", "cancel", "get"]
    assert tuner.status(j).state == "cancelled"  # the endpoint it created as the marker is labelled
    assert api.endpoints[ENDPOINT]["labels"][CANCELLED_LABEL] == "true"
    assert not {"upload", "deployModel"} & set(api.calls)


def test_cancel_during_deployment_leaves_no_model_deployed(api: VertexJobsServer, tuner: VertexTrainingTuner) -> None:
    j = started(api, tuner)
    while "deployModel" not in api.calls:
        assert tuner.status(j).state == "running"
    assert api.pending()  # the deployment is under way
    tuner.cancel(j)
    (deployment,) = [op for op in api.operations.values() if op.kind == "DeployModel"]
    assert deployment.error == {"code": 1, "message": "Operation was cancelled."}
    assert api.endpoints[ENDPOINT]["labels"][CANCELLED_LABEL] == "true"
    assert not api.endpoints[ENDPOINT].get("deployedModels")
    assert "deleteModel" in api.calls  # a model without a deployment costs nothing; it goes too
    api.calls.clear()
    assert tuner.status(j).state == "cancelled"
    assert "deployModel" not in api.calls


def test_a_cancel_after_the_model_is_served_undeploys_it(api: VertexJobsServer, tuner: VertexTrainingTuner) -> None:
    j = started(api, tuner)
    api.lro_gets = 0
    assert settle(tuner, j)[-1].state == "succeeded"
    tuner.cancel(j)
    assert not api.endpoints[ENDPOINT].get("deployedModels")
    assert api.models == {}
    assert tuner.status(j).state == "cancelled"


def test_a_cancel_racing_a_poll_that_deploys_cancels_its_operation(
    api: VertexJobsServer, tuner: VertexTrainingTuner
) -> None:
    j = started(api, tuner)
    api.lro_gets = 3
    api.hooks["deployModel"] = lambda: tuner.cancel(j)  # another instance cancels just after this poll deploys
    polls = settle(tuner, j)
    assert polls[-1].state == "cancelled"
    (deployment,) = [op for op in api.operations.values() if op.kind == "DeployModel"]
    assert (deployment.done, deployment.error) == (True, {"code": 1, "message": "Operation was cancelled."})
    assert not api.endpoints[ENDPOINT].get("deployedModels")
    assert api.calls.count("deployModel") == 1


def test_bad_specs_are_refused_before_anything_is_recorded(tuner: VertexTrainingTuner) -> None:
    with pytest.raises(InvalidRequest) as err:
        tuner.check(job(base_model_ref="gs://bucket/weights; rm -rf /"))
    assert (err.value.status, err.value.param, err.value.code) == (400, "model", "model_not_available")
    with pytest.raises(InvalidRequest) as err:
        tuner.check(job(hyperparameters={"n_epochs": "many"}))
    assert err.value.param == "hyperparameters.n_epochs"
    assert err.value.type == "invalid_request_error"  # the API's error shape, status 400
    tuner.check(job())  # a plain job: accepted


def test_a_bad_configuration_is_an_error_at_start() -> None:
    with pytest.raises(ValueError, match="sizes: small, medium, large, xlarge"):
        VertexTrainingTuner("p", "us-central1", "b", IMAGE, serving_size="huge")
    with pytest.raises(ValueError, match="project"):
        VertexTrainingTuner("p/../x", "us-central1", "b", IMAGE)


@pytest.mark.parametrize("job_id", [JOB_ID, "ftjob-" + "a" * 60, "FTJOB_With.Odd/chars", "ftjob-trailing-"])
def test_resource_ids_fit_vertex(job_id: str) -> None:
    import re

    rid = resource_id(job_id)
    assert re.fullmatch(r"[a-z][a-z0-9-]{0,62}", rid), rid
    assert not rid.endswith("-")
    assert (rid == f"textnlp-{job_id}") is (job_id == JOB_ID)


def test_importing_the_tuner_imports_no_sdk() -> None:
    heavy = "{'grpc', 'google.cloud.aiplatform', 'google.auth', 'requests'}"
    code = f"import sys, adapters.gcp.vertex_training; print(sorted({heavy} & set(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"


def _port(tuner: VertexTrainingTuner) -> str:
    return tuner.rest._base.split(":")[2].split("/")[0]
