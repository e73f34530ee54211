"""AzureMLTrainingTuner: the FineTuner port on Azure ML command jobs, and the deploy step that serves the trained
model from a managed online endpoint (model version, endpoint, deployment), registered as an ``azureml`` route.

The Azure Resource Manager REST API over httpx (``adapters.azure.azureml_jobs_rest``), never ``azure-ai-ml``: the
issue allows importing that SDK on this path only, but it takes about 3 s to import and the REST calls are few,
so it is kept off every path. httpx and azure-identity are imported on the first call.
"""

from __future__ import annotations

import re
from typing import TYPE_CHECKING, Any

from adapters.azure.azureml_deploy import AUTH_MODES, DEFAULT_SERVING_IMAGE, AzureMLDeployer, Serving
from adapters.azure.azureml_jobs_rest import (
    ARM_URL,
    ArmError,
    AzureMLRest,
    TokenCredential,
    arm_error,
)
from adapters.azure.azureml_jobs_wire import (
    ACTIVE,
    COMPLETED,
    TRAINING_ENVIRONMENT,
    command_job_body,
    failure_message,
    job_name,
    properties,
    state_of,
    training_events,
)
from adapters.azure.backend_types import AZUREML_CHAT_TEMPLATES
from core.errors import InvalidRequest, NotFound
from core.fine_tuning.job import FineTuneJob, TunerStatus
from core.ports import BlobStore

if TYPE_CHECKING:
    import httpx

DEFAULT_COMMAND = "python -m textnlp_train"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._()-]{0,89}$")
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")


class AzureMLTrainingTuner:
    """One Azure ML command job per fine-tune job, then the model version, online endpoint and deployment that
    serve it (endpoint ``tnlp-<job id hex>``, model and job ``textnlp-<job id>``, deployment ``tuned``).

    Training data: the uploaded files as ``azureml://datastores/<datastore>/paths/<data_prefix><key>`` (the
    datastore registered on the container the gateway's BlobStore writes); or, given ``files`` (the gateway's
    BlobStore) and ``staging`` (a BlobStore on the datastore's container), copied there first under
    ``<staging_prefix><tenant>/<job id>/``. The job runs ``command`` in ``image`` (an environment's ARM id or
    ``azureml:`` reference, else a Docker image made an environment version) on ``compute`` with ``--model_id``,
    ``--train_data``, ``--validation_data``, ``--n_epochs``, ``--batch_size``, ``--learning_rate_multiplier``,
    ``--seed``, ``--output_dir``; it must write the whole model (weights, config, tokenizer) to ``--output_dir``.

    Deployment happens in ``status`` (``AzureMLDeployer``): once the job is Completed, polls create the endpoint,
    register the model and create the deployment. Nothing is remembered between polls: each reads the resources
    (PUTs are create-or-update), so polls from many instances at once are safe. The job stays ``running`` until the
    deployment has succeeded, then succeeds with the route ``{"type": "azureml", "scoring_uri", "format": "hf",
    "deployment": "tuned", "auth"}``.
    """

    name = "azureml"

    def __init__(
        self,
        subscription_id: str,
        resource_group: str,
        workspace: str,
        compute: str,
        image: str,
        datastore: str = "workspaceblobstore",
        *,
        data_prefix: str = "",
        files: BlobStore | None = None,
        staging: BlobStore | None = None,
        staging_prefix: str = "fine-tune/",
        artifacts_datastore: str | None = None,
        artifacts_prefix: str = "",
        command: str = DEFAULT_COMMAND,
        serving_image: str = DEFAULT_SERVING_IMAGE,
        instance_type: str = "Standard_NC4as_T4_v3",
        instance_count: int = 1,
        endpoint_auth: str = "entra",
        chat_template: str = "chatml",
        location: str | None = None,
        timeout_s: int = 24 * 3600,
        credential: TokenCredential | None = None,
        api_url: str | None = None,
        client: httpx.Client | None = None,
        attempts: int = 4,
        backoff_s: float = 0.5,
    ) -> None:
        names = {"subscription": subscription_id, "resource group": resource_group, "workspace": workspace}
        for label, value in (*names.items(), ("datastore", datastore)):
            if not _SEGMENT.match(value):
                raise ValueError(f"the Azure ML {label} is not a valid name: {value!r}")
        if not compute or not image:
            raise ValueError("an Azure ML tuner needs the compute cluster and the training image or environment")
        if (files is None) != (staging is None):
            raise ValueError("files and staging go together: the tuner copies from one to the other")
        if endpoint_auth not in AUTH_MODES or chat_template not in AZUREML_CHAT_TEMPLATES:
            raise ValueError(f"endpoint_auth must be in {tuple(AUTH_MODES)}, chat_template in {AZUREML_CHAT_TEMPLATES}")
        self.workspace_id = (
            f"/subscriptions/{subscription_id}/resourceGroups/{resource_group}"
            f"/providers/Microsoft.MachineLearningServices/workspaces/{workspace}"
        )
        self.compute_id = (
            compute if compute.startswith("/subscriptions/") else f"{self.workspace_id}/computes/{compute}"
        )
        self.image, self.command, self.timeout_s = image, command, timeout_s
        self.datastore, self.data_prefix = datastore, data_prefix
        self.files, self.staging, self.staging_prefix = files, staging, staging_prefix
        self.artifacts_datastore, self.artifacts_prefix = artifacts_datastore or datastore, artifacts_prefix
        where = f"{workspace} in resource group {resource_group}"
        self.rest = AzureMLRest(
            api_url or ARM_URL, self.workspace_id, where, credential, client, attempts=attempts, backoff_s=backoff_s
        )
        serving = Serving(serving_image, instance_type, instance_count, endpoint_auth, chat_template)
        self.deployer = AzureMLDeployer(self.rest, self.workspace_id, serving, location)

    # --- names ----------------------------------------------------------------------------------------------

    def data_uri(self, key: str) -> str:
        return f"azureml://datastores/{self.datastore}/paths/{self.data_prefix}{key}"

    def output_uri(self, job: FineTuneJob) -> str:
        path = f"{self.artifacts_prefix}models/{job.tenant_id}/{job.id}/model/"
        return f"azureml://datastores/{self.artifacts_datastore}/paths/{path}"

    def route(self, scoring_uri: str) -> dict[str, Any]:
        return self.deployer.route(scoring_uri)

    # --- the port -------------------------------------------------------------------------------------------

    def check(self, job: FineTuneJob) -> None:
        """A 400 for what no training image can take: a base model that is not a Hugging Face id, a
        hyperparameter that is neither ``auto`` nor a number."""
        if not _HF_ID.match(job.base_model_ref):
            raise InvalidRequest(
                f"model {job.model!r} cannot be fine-tuned on Azure ML: its base {job.base_model_ref!r} is not a "
                "Hugging Face model id",
                param="model",
                code="model_not_available",
            )
        for name, value in job.hyperparameters.items():
            if value != "auto" and (isinstance(value, bool) or not isinstance(value, int | float)):
                raise InvalidRequest(
                    f"hyperparameter {name} must be 'auto' or a number, not {value!r}",
                    param=f"hyperparameters.{name}",
                    code="invalid_value",
                )

    def start(self, job: FineTuneJob, training_key: str, validation_key: str | None) -> str:
        """The Azure ML job's name; a job that exists already (a repeated start) keeps it."""
        self.check(job)
        name = job_name(job.id)
        try:
            if self.rest.find(f"jobs/{name}") is not None:
                return name
            inputs = {"train": self._input(job, "train", training_key)}
            if validation_key is not None:
                inputs["validation"] = self._input(job, "validation", validation_key)
            body = command_job_body(
                job,
                command=self.command,
                compute_id=self.compute_id,
                environment_id=self.deployer.environment(self.image, TRAINING_ENVIRONMENT, inference=False),
                inputs=inputs,
                output_uri=self.output_uri(job),
                timeout_s=self.timeout_s,
            )
            self.rest.put(f"jobs/{name}", body)
        except ArmError as exc:
            if exc.status == 409:  # another start created it a moment ago
                return name
            raise arm_error(exc, self.rest.where, "Azure ML training") from None
        return name

    def status(self, job: FineTuneJob) -> TunerStatus:
        """The job's status; once it completed, the deployment's (advanced by this poll)."""
        name = job_name(job.id)
        try:
            described = self.rest.find(f"jobs/{name}")
            if described is None:
                raise NotFound(
                    f"the Azure ML workspace {self.rest.where} has no job {name} (fine-tuning job {job.id})",
                    code="training_job_not_found",
                )
            status = str(properties(described).get("status") or "")
            training = TunerStatus(
                state_of(status),
                error=failure_message(described) if status == "Failed" else None,
                events=training_events(described),
                metadata={"azureml_job": name},
            )
            if status != COMPLETED:
                return training
            return self.deployer.advance(job, training, self.output_uri(job))
        except ArmError as exc:
            raise arm_error(exc, self.rest.where) from None

    def cancel(self, job: FineTuneJob) -> None:
        """Cancel the run; once it completed, take down whatever the deploy step made (see ``_undeploy``)."""
        name = job_name(job.id)
        try:
            described = self.rest.find(f"jobs/{name}")
            if described is None:
                return  # never started
            status = properties(described).get("status")
            if status in ACTIVE:
                try:
                    self.rest.call("POST", f"jobs/{name}/cancel")
                    return
                except ArmError as exc:
                    if exc.not_found:
                        return
                    status = properties(self.rest.get(f"jobs/{name}")).get("status")  # it ended meanwhile
            if status == COMPLETED:
                self.deployer.undeploy(job)
        except ArmError as exc:
            raise arm_error(exc, self.rest.where) from None

    def _input(self, job: FineTuneJob, kind: str, key: str) -> str:
        """The datastore URI of one training file; copied to the staging store first when one is configured."""
        if self.files is None or self.staging is None:
            return self.data_uri(key)
        staged = f"{self.staging_prefix}{job.tenant_id}/{job.id}/{kind}.jsonl"
        try:
            data = self.files.read_object(key)
        except FileNotFoundError:
            raise InvalidRequest(f"the {kind} file is gone: {key}", param=f"{kind}_file") from None
        self.staging.write_object(staged, data)
        return self.data_uri(staged)
