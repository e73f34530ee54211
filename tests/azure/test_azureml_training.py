"""AzureMLTrainingTuner against a local Azure Resource Manager server for Azure ML (tests/azure/azureml_jobs_server.py):
the command job a fine-tune job becomes, its statuses, the deploy step (model version, online endpoint, deployment:
long-running operations that take a few polls), the registered ``azureml`` route, cancel, and the failures (a failed
job, a refused token, throttling, quota, a deployment that fails)."""

from __future__ import annotations

import itertools
import subprocess
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from adapters.azure.azureml_jobs_rest import Answer, AzureMLRest
from adapters.azure.azureml_jobs_wire import CANCELLED_TAG, DEPLOYMENT, endpoint_name, job_name
from adapters.azure.azureml_route import AzureMLRoute
from adapters.azure.azureml_training import AzureMLTrainingTuner
from adapters.azure.backend_types import azureml_type
from adapters.local.memory_blobs import MemoryBlobStore
from core.backend_types import BackendCatalog
from core.errors import APIError, BackendError, InvalidRequest, NotFound, ServiceUnavailable
from core.fine_tuning.job import FineTuneJob, TunerStatus
from tests.azure.azureml_jobs_server import (
    ARGS,
    LOCATION,
    TOKEN,
    WS,
    AzureMLJobsServer,
    FakeCredential,
    azureml_jobs_server,
    tuner_kwargs,
)
from tests.fakes import FakeBackend, json_of, make_harness, training_jsonl

pytestmark = pytest.mark.azure

JOB_ID = "ftjob-0000000001aa0123456789ab"
NAME = f"textnlp-{JOB_ID}"
ENDPOINT = "tnlp-0000000001aa0123456789ab"
EP = f"onlineEndpoints/{ENDPOINT}"
SCORING = f"https://{ENDPOINT}.{LOCATION}.inference.ml.azure.com/score"
ROUTE = {
    "type": "azureml",
    "scoring_uri": SCORING,
    "format": "hf",
    "deployment": DEPLOYMENT,
    "auth": "entra",
    "chat_template": "chatml",
}


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
def server() -> Iterator[tuple[str, AzureMLJobsServer]]:
    """Operations take two reads (of them or their resource) to finish; jobs move only when a test moves them."""
    with azureml_jobs_server(lro_ticks=2) as started:
        yield started


@pytest.fixture
def api(server: tuple[str, AzureMLJobsServer]) -> AzureMLJobsServer:
    return server[1]


@pytest.fixture
def tuner(server: tuple[str, AzureMLJobsServer]) -> AzureMLTrainingTuner:
    return tuner_on(server[0])


def tuner_on(url: str, **kw: Any) -> AzureMLTrainingTuner:
    options: dict[str, Any] = {"data_prefix": "prod/", "artifacts_datastore": "models", "instance_count": 2}
    return AzureMLTrainingTuner(*ARGS, **tuner_kwargs(url, **{**options, **kw}))


def started(api: AzureMLJobsServer, tuner: AzureMLTrainingTuner, status: str = "Completed") -> FineTuneJob:
    j = job()
    j.external_id = tuner.start(j, j.training_key, None)
    api.set_status(j.external_id, status)
    api.calls.clear()
    return j


def settle(tuner: AzureMLTrainingTuner, j: FineTuneJob, polls: int = 12) -> list[TunerStatus]:
    seen = [tuner.status(j)]
    while seen[-1].state == "running" and len(seen) < polls:
        seen.append(tuner.status(j))
    return seen


def test_start_puts_a_command_job(api: AzureMLJobsServer, tuner: AzureMLTrainingTuner) -> None:
    j = job()
    assert tuner.start(j, "files/ten_a/file-1", "files/ten_a/file-2") == NAME
    props = api.jobs[NAME]["properties"]
    assert (props["jobType"], props["computeId"]) == ("Command", f"{WS}/computes/gpu-cluster")
    assert props["command"] == (
        "python -m textnlp_train --model_id HuggingFaceTB/SmolLM2-135M-Instruct --train_data ${{inputs.train}} "
        "--validation_data ${{inputs.validation}} --n_epochs 3 --batch_size auto --learning_rate_multiplier 0.5 "
        "--seed 42 --output_dir ${{outputs.model}}"
    )
    assert props["inputs"] == {
        "train": {
            "jobInputType": "uri_file",
            "uri": "azureml://datastores/workspaceblobstore/paths/prod/files/ten_a/file-1",
            "mode": "ReadOnlyMount",
        },
        "validation": {
            "jobInputType": "uri_file",
            "uri": "azureml://datastores/workspaceblobstore/paths/prod/files/ten_a/file-2",
            "mode": "ReadOnlyMount",
        },
    }
    output = f"azureml://datastores/models/paths/models/ten_a/{JOB_ID}/model/"
    assert props["outputs"] == {"model": {"jobOutputType": "custom_model", "uri": output, "mode": "Upload"}}
    assert props["limits"] == {"jobLimitsType": "Command", "timeout": "PT86400S"}
    assert props["tags"] == {"textnlp-job": JOB_ID, "textnlp-tenant": "ten_a"}
    (environment,) = api.environments.values()  # the Docker image became an environment version
    assert props["environmentId"] == environment["id"]
    assert environment["properties"] == {"image": ARGS[4], "osType": "Linux"}
    assert tuner.start(j, "files/ten_a/file-1", None) == NAME  # a repeated start finds the job
    assert (len(api.jobs), api.calls.count("createJob")) == (1, 1)


def test_files_are_staged_on_the_datastore_when_a_staging_store_is_given(server: tuple[str, AzureMLJobsServer]) -> None:
    url, api = server
    files, staging = MemoryBlobStore(), MemoryBlobStore()
    files.write_object("files/ten_a/file-1", training_jsonl())
    tuner = tuner_on(url, files=files, staging=staging, data_prefix="")
    j = job()
    tuner.start(j, "files/ten_a/file-1", None)
    staged = f"fine-tune/ten_a/{JOB_ID}/train.jsonl"
    assert staging.read_object(staged) == training_jsonl()
    uri = api.jobs[NAME]["properties"]["inputs"]["train"]["uri"]
    assert uri == f"azureml://datastores/workspaceblobstore/paths/{staged}"
    with pytest.raises(InvalidRequest):
        tuner.start(job("ftjob-0000000001aa0000000000ff"), "files/ten_a/gone", None)


@pytest.mark.parametrize(
    ("status", "expected"),
    [
        ("NotStarted", "queued"),
        ("Queued", "queued"),
        ("Preparing", "queued"),
        ("Provisioning", "queued"),
        ("Starting", "queued"),
        ("Unknown", "queued"),  # no news: the service never moves a job back
        ("Running", "running"),
        ("Finalizing", "running"),
        ("NotResponding", "running"),
        ("Paused", "running"),
        ("CancelRequested", "cancelled"),
        ("Canceled", "cancelled"),
        ("Failed", "failed"),
        ("Completed", "running"),  # trained: deploying now
    ],
)
def test_job_statuses_map_to_job_states(
    api: AzureMLJobsServer, tuner: AzureMLTrainingTuner, status: str, expected: str
) -> None:
    j = started(api, tuner, status)
    found = tuner.status(j)
    assert found.state == expected
    assert found.fine_tuned_model_route is None
    assert bool(api.resources) is (status == "Completed")


def test_a_completed_job_is_registered_deployed_and_served(api: AzureMLJobsServer, tuner: AzureMLTrainingTuner) -> None:
    j = started(api, tuner)
    polls = settle(tuner, j)
    assert [s.state for s in polls] == ["running"] * (len(polls) - 1) + ["succeeded"]
    assert len(polls) > 2  # the endpoint and the deployment each took polls
    for earlier, later in itertools.pairwise(polls):
        assert later.events[: len(earlier.events)] == earlier.events  # the service records events by position
    done = polls[-1]
    assert done.fine_tuned_model_route == ROUTE
    assert done.events[-4:] == [
        f"Creating online endpoint {ENDPOINT}",
        f"Registering the model {NAME} version 1",
        f"Deploying the model to endpoint {ENDPOINT}",
        f"Endpoint {ENDPOINT} is serving the model",
    ]
    model = api.models[f"{NAME}/1"]["properties"]
    assert (model["modelType"], model["modelUri"]) == (
        "custom_model",
        f"azureml://datastores/models/paths/models/ten_a/{JOB_ID}/model/",
    )
    endpoint = api.resources[EP]
    assert (endpoint["location"], endpoint["properties"]["authMode"]) == (LOCATION, "AADToken")
    deployment = api.resources[f"{EP}/deployments/{DEPLOYMENT}"]
    assert deployment["sku"] == {"name": "Default", "capacity": 2}
    props = deployment["properties"]
    assert (props["instanceType"], props["model"]) == ("Standard_NC4as_T4_v3", f"{WS}/models/{NAME}/versions/1")
    assert props["environmentVariables"]["MODEL_ID"] == f"/var/azureml-app/azureml-models/{NAME}/1/model"
    serving = next(e for e in api.environments.values() if "inferenceConfig" in e["properties"])
    assert props["environmentId"] == serving["id"]
    assert serving["properties"]["inferenceConfig"]["scoringRoute"] == {"path": "/", "port": 80}
    assert done.metadata["azureml_model"] == f"{NAME}:1"
    assert api.pending() == []
    assert [api.calls.count(a) for a in ("putEndpoint", "putModel", "putDeployment")] == [1, 1, 1]
    api.calls.clear()
    assert tuner.status(j).state == "succeeded"  # later polls create nothing
    assert api.calls == ["getJob", "getEndpoint", "getDeployment", "getEndpoint"]


def test_the_route_is_one_the_azureml_backend_type_serves(api: AzureMLJobsServer, tuner: AzureMLTrainingTuner) -> None:
    route = settle(tuner, started(api, tuner))[-1].fine_tuned_model_route
    assert route is not None
    BackendCatalog([azureml_type()], "Azure").check_route(route)  # what registering the model checks
    parsed = AzureMLRoute.parse(route)
    assert (parsed.format, parsed.deployment, parsed.auth) == ("hf", DEPLOYMENT, "entra")


def test_the_gateway_trains_on_azureml_and_registers_the_model(server: tuple[str, AzureMLJobsServer]) -> None:
    url, api = server
    api.auto = True
    tuner = tuner_on(url, data_prefix="")
    h = make_harness(backend=FakeBackend(), fine_tuner=tuner)
    tuner.files, tuner.staging = h.blobs, MemoryBlobStore()  # the gateway's files, copied to the datastore
    _, key = h.new_tenant("trainer", scopes=frozenset({"fine_tune"}))
    uploaded = json_of(h.upload(training_jsonl(), purpose="fine-tune", key=key))
    body = {"model": "fake-gen", "training_file": uploaded["id"], "hyperparameters": {"n_epochs": 2}}
    created = json_of(h.call_json("POST", "/v1/fine_tuning/jobs", body, key=key))
    assert created["status"] == "queued"
    for _ in range(15):
        h.clock.advance(10)
        found = json_of(h.call("GET", f"/v1/fine_tuning/jobs/{created['id']}", key=key))
        if found["status"] == "succeeded":
            break
    assert found["status"] == "succeeded"
    spec = h.gateway.registry.get(found["fine_tuned_model"])
    endpoint = endpoint_name(created["id"])
    assert spec.backend == {**ROUTE, "scoring_uri": f"https://{endpoint}.{LOCATION}.inference.ml.azure.com/score"}
    assert (spec.metadata["tenant_id"], spec.metadata["deployed"]) == ("ten_trainer", True)
    (command_job,) = api.jobs.values()
    assert "--n_epochs 2" in command_job["properties"]["command"]
    events = json_of(h.call("GET", f"/v1/fine_tuning/jobs/{created['id']}/events", key=key))["data"]
    assert f"Endpoint {endpoint} is serving the model" in [e["message"] for e in events]


def test_a_failed_job_reports_its_error_and_deploys_nothing(
    api: AzureMLJobsServer, tuner: AzureMLTrainingTuner
) -> None:
    j = started(api, tuner, "Failed")
    status = tuner.status(j)
    assert status.state == "failed"
    assert status.error == f"the Azure ML job {NAME} ended Failed; its logs: https://ml.azure.com/runs/{NAME}?wsid={WS}"
    assert status.events[-1] == f"Training failed: {status.error}"
    api.jobs[NAME]["properties"]["error"] = {"code": "UserError", "message": "CUDA out of memory"}
    assert tuner.status(j).error == "CUDA out of memory"  # an error on the resource is taken as it is
    assert api.calls == ["getJob", "getJob"]


def test_a_deployment_that_fails_fails_the_job(api: AzureMLJobsServer, tuner: AzureMLTrainingTuner) -> None:
    j = started(api, tuner)
    api.deploy_errors.append("Not enough quota for Standard_NC4as_T4_v3 in westeurope.")
    polls = settle(tuner, j)
    assert polls[-1].state == "failed"
    assert polls[-1].error == (
        f"the trained model could not be deployed (endpoint {ENDPOINT}): the deployment {DEPLOYMENT} is Failed"
    )
    assert polls[-1].fine_tuned_model_route is None
    assert tuner.status(j).state == "failed"  # and stays failed: no second deployment
    assert api.calls.count("putDeployment") == 1


def test_a_refused_deployment_fails_the_job_and_a_passing_error_waits(
    api: AzureMLJobsServer, tuner: AzureMLTrainingTuner
) -> None:
    j = started(api, tuner)
    api.lro_ticks = 0
    quota = "Not enough quota available for Standard_NC4as_T4_v3."
    api.faults["putDeployment"] = [(503, "ServiceUnavailable", "try again", {})] * 4
    api.faults["putDeployment"] += [(400, "InferencingQuotaExceeded", quota, {})]
    with pytest.raises(ServiceUnavailable):  # retried, then 503: the service keeps the job for the next poll
        settle(tuner, j)
    status = tuner.status(j)
    assert status.state == "failed"
    assert quota in (status.error or "")


def test_cancel_stops_a_running_job(api: AzureMLJobsServer, tuner: AzureMLTrainingTuner) -> None:
    j = started(api, tuner, "Running")
    tuner.cancel(j)
    assert api.jobs[NAME]["properties"]["status"] == "CancelRequested"
    assert tuner.status(j).state == "cancelled"
    api.set_status(NAME, "Canceled")
    api.calls.clear()
    tuner.cancel(j)  # ended: nothing to cancel
    tuner.cancel(job("ftjob-0000000001aa0000000000ff"))  # never started: nothing either
    assert api.calls == ["getJob", "getJob"]
    assert not api.resources


def test_a_cancel_after_the_model_is_served_takes_it_down(api: AzureMLJobsServer, tuner: AzureMLTrainingTuner) -> None:
    j = started(api, tuner)
    api.lro_ticks = 0
    assert settle(tuner, j)[-1].state == "succeeded"
    tuner.cancel(j)
    assert api.resources[EP]["tags"][CANCELLED_TAG] == "true"
    assert f"{EP}/deployments/{DEPLOYMENT}" not in api.resources
    assert api.models == {}
    assert tuner.status(j).state == "cancelled"


def test_a_cancel_refused_because_the_job_just_completed_marks_the_endpoint(
    api: AzureMLJobsServer, tuner: AzureMLTrainingTuner
) -> None:
    j = started(api, tuner, "Running")
    api.hooks["getJob"] = lambda: api.set_status(NAME, "Completed")
    tuner.cancel(j)  # cancel answers 400: it completed meanwhile
    assert api.calls[:3] == ["getJob", "cancelJob", "getJob"]
    assert api.resources[EP]["tags"][CANCELLED_TAG] == "true"  # an empty endpoint, created as the marker
    assert tuner.status(j).state == "cancelled"
    assert "putDeployment" not in api.calls


def test_a_cancel_racing_a_poll_that_deploys_leaves_nothing_deployed(
    api: AzureMLJobsServer, tuner: AzureMLTrainingTuner
) -> None:
    j = started(api, tuner)
    api.hooks["putDeployment"] = lambda: tuner.cancel(j)  # another instance cancels just after this poll deploys
    polls = settle(tuner, j)
    assert polls[-1].state == "cancelled"
    deployment = api.resources.get(f"{EP}/deployments/{DEPLOYMENT}")
    assert deployment is None or deployment["properties"]["provisioningState"] == "Deleting"
    assert api.calls.count("putDeployment") == 1
    assert tuner.status(j).state == "cancelled"


def test_a_refused_token_is_a_clear_error_without_the_token(server: tuple[str, AzureMLJobsServer]) -> None:
    url, api = server
    secret = "wrong-token-0b1c2d3e4f"
    tuner = tuner_on(url, credential=FakeCredential(secret))
    with pytest.raises(BackendError) as err:
        tuner.start(job(), "files/ten_a/file-1", None)
    assert (err.value.status, err.value.code, err.value.retryable) == (502, "backend_misconfigured", False)
    assert err.value.message.startswith("the Azure ML workspace ws-textnlp in resource group rg-textnlp refused")
    assert secret not in err.value.message
    assert secret not in str(err.value.body())
    assert api.jobs == {}


def test_a_401_gets_one_fresh_token_and_a_403_names_the_missing_role(
    api: AzureMLJobsServer, tuner: AzureMLTrainingTuner
) -> None:
    credential = FakeCredential()
    tuner.rest._credential = credential
    api.faults["getJob"] = [(401, "ExpiredAuthenticationToken", "The token expired.", {})]
    tuner.start(job(), "files/ten_a/file-1", None)  # the 401 fetched a new token once, then it went through
    assert len(credential.scopes) == 2
    assert credential.scopes[0] == ("https://management.azure.com/.default",)
    api.faults["getJob"] = [(403, "AuthorizationFailed", "The client does not have authorization.", {})]
    with pytest.raises(BackendError) as err:
        tuner.status(job())
    assert "lacks a role" in err.value.message
    assert TOKEN not in err.value.message


def test_throttling_is_retried_then_a_503(api: AzureMLJobsServer, tuner: AzureMLTrainingTuner) -> None:
    api.faults["createJob"] = [(429, "TooManyRequests", "Rate limit exceeded.", {"retry-after": "0"})] * 2
    assert tuner.start(job(), "files/ten_a/file-1", None) == NAME
    assert api.calls.count("createJob") == 3
    api.faults["getJob"] = [(500, "InternalServerError", "Something went wrong.", {})] * 4
    with pytest.raises(ServiceUnavailable) as err:
        tuner.status(job())
    assert err.value.status == 503
    assert "after 4 attempts: Something went wrong. (HTTP 500)" in err.value.message


def test_a_job_azure_does_not_have_is_not_found(tuner: AzureMLTrainingTuner) -> None:
    with pytest.raises(NotFound) as err:
        tuner.status(job())
    assert (err.value.status, err.value.code) == (404, "training_job_not_found")
    assert NAME in err.value.message


@pytest.mark.parametrize(
    ("fault", "status", "code"),
    [
        ((400, "UserError", "Compute gpu-cluster was not found in the workspace."), 502, "backend_misconfigured"),
        ((400, "QuotaExceeded", "Quota exceeded for Standard_NC24ads_A100_v4 cores."), 503, "training_capacity"),
    ],
)
def test_a_refused_start_is_a_backend_error(
    api: AzureMLJobsServer, tuner: AzureMLTrainingTuner, fault: tuple[int, str, str], status: int, code: str
) -> None:
    api.faults["createJob"] = [(*fault, {})]
    with pytest.raises(BackendError) as err:
        tuner.start(job(), "files/ten_a/file-1", None)
    assert (err.value.status, err.value.code, err.value.retryable) == (status, code, False)
    assert fault[2] in err.value.message
    assert api.jobs == {}


def test_bad_specs_are_refused_before_anything_is_recorded(tuner: AzureMLTrainingTuner) -> None:
    with pytest.raises(InvalidRequest) as err:
        tuner.check(job(base_model_ref="azureml://x; rm -rf /"))
    assert (err.value.status, err.value.param, err.value.code) == (400, "model", "model_not_available")
    with pytest.raises(InvalidRequest) as err:
        tuner.check(job(hyperparameters={"n_epochs": "$(reboot)"}))
    assert err.value.param == "hyperparameters.n_epochs"
    tuner.check(job())  # a plain job: accepted


def test_a_bad_configuration_is_an_error_at_construction() -> None:
    with pytest.raises(ValueError, match="workspace"):
        AzureMLTrainingTuner("sub", "rg", "ws/../x", "gpu", "img")
    with pytest.raises(ValueError, match="together"):
        AzureMLTrainingTuner("sub", "rg", "ws", "gpu", "img", files=MemoryBlobStore())
    with pytest.raises(ValueError, match="endpoint_auth"):
        AzureMLTrainingTuner("sub", "rg", "ws", "gpu", "img", endpoint_auth="anonymous")


def test_no_connection_is_retried_then_a_503() -> None:
    with azureml_jobs_server() as (url, _):
        pass  # stopped: nothing listens there any more
    tuner = tuner_on(url, attempts=2)
    with pytest.raises(ServiceUnavailable, match="unavailable after 2 attempts: unreachable"):
        tuner.status(job())


def test_a_credential_that_fails_is_a_retryable_misconfiguration(server: tuple[str, AzureMLJobsServer]) -> None:
    class Broken:
        def get_token(self, *scopes: str) -> Any:
            raise RuntimeError("secret-detail-123")

    with pytest.raises(BackendError) as err:
        tuner_on(server[0], credential=Broken()).status(job())
    assert (err.value.code, err.value.retryable) == ("backend_misconfigured", True)
    assert "RuntimeError" in err.value.message
    assert "secret-detail-123" not in err.value.message


def test_without_a_credential_azure_identity_is_loaded_on_first_use(
    server: tuple[str, AzureMLJobsServer], monkeypatch: pytest.MonkeyPatch
) -> None:
    import azure.identity

    made: list[FakeCredential] = []

    def default_credential() -> FakeCredential:
        made.append(FakeCredential())
        return made[-1]

    monkeypatch.setattr(azure.identity, "DefaultAzureCredential", default_credential)
    tuner = tuner_on(server[0], credential=None)
    assert made == []  # nothing at construction
    assert tuner.start(job(), "files/ten_a/file-1", None) == NAME
    assert len(made) == 1
    assert made[0].scopes[0] == ("https://management.azure.com/.default",)


def test_an_operation_is_read_from_its_location_when_it_has_no_async_header(api: AzureMLJobsServer) -> None:
    rest = AzureMLRest(api.base_url, WS, "ws", FakeCredential())
    api.lro_ticks = 2
    api.resources[EP] = {"properties": {"provisioningState": "Succeeded"}}
    deleting = rest.call("DELETE", EP)
    assert deleting.status == 202
    assert "azure-asyncoperation" not in deleting.headers
    assert rest.operation(deleting) == ("InProgress", "")
    assert rest.operation(deleting) == ("Succeeded", "")
    assert EP not in api.resources


def test_an_operation_on_another_host_is_never_sent_the_token() -> None:
    rest = AzureMLRest("https://management.azure.com", WS, "ws", FakeCredential())
    elsewhere = Answer(201, {}, {"azure-asyncoperation": "https://attacker.example/op?api-version=1"})
    with pytest.raises(APIError, match="another host"):
        rest.operation(elsewhere)


@pytest.mark.parametrize("job_id", [JOB_ID, "ftjob-" + "a" * 60, "FTJOB_With.Odd/chars", "ftjob-trailing-"])
def test_names_fit_azure_ml(job_id: str) -> None:
    import re

    assert re.fullmatch(r"[a-z][a-z0-9-]{2,31}", endpoint_name(job_id))
    assert re.fullmatch(r"[a-z0-9][a-z0-9_-]{0,254}", job_name(job_id))
    assert (job_name(job_id) == f"textnlp-{job_id}") is (job_id in (JOB_ID, "ftjob-" + "a" * 60, "ftjob-trailing-"))


def test_importing_the_tuner_imports_no_sdk() -> None:
    heavy = "{'azure.ai.ml', 'azure.identity', 'azure.core', 'httpx'}"
    code = f"import sys, adapters.azure.azureml_training; print(sorted({heavy} & set(sys.modules)))"
    run = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert run.stdout.strip() == "[]"
