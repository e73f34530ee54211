"""VertexTrainingTuner: the FineTuner port on Vertex AI custom training jobs, and the deploy step that serves the
trained model from a Vertex AI endpoint (the Model Registry upload, then ``deployModel``).

REST over google-auth (``adapters.gcp.vertex_jobs_rest``), never ``google-cloud-aiplatform``; google-auth and
requests are imported on the first call, so nothing here weighs on a cold start or on the request path.
"""

from __future__ import annotations

import re
from collections.abc import Callable
from dataclasses import replace
from typing import Any

from adapters.gcp.backend_types import VERTEX_APIS
from adapters.gcp.vertex_jobs_rest import (
    HttpSession,
    VertexApiError,
    VertexJobsRest,
    job_error,
    operation_error,
    operation_kind,
    regional_url,
)
from adapters.gcp.vertex_jobs_wire import (
    ACTIVE_STATES,
    CANCELLED_LABEL,
    ENDED_STATES,
    QUEUED_STATES,
    SUCCEEDED,
    Names,
    Step,
    created_at,
    custom_job_body,
    deploy_body,
    deployed_model_of,
    error_message,
    is_cancelled,
    job_filter,
    job_labels,
    machine,
    resource_id,
    training_args,
    training_events,
    upload_body,
)
from core.errors import BackendError, InvalidRequest
from core.fine_tuning.job import FineTuneJob, TunerStatus

#: Hugging Face's TGI container for Vertex AI: it loads the model from ``AIP_STORAGE_URI`` (the artefact).
DEFAULT_SERVING_IMAGE = (
    "us-docker.pkg.dev/deeplearning-platform-release/gcr.io/"
    "huggingface-text-generation-inference-cu124.2-4.ubuntu2204.py311"
)
DEPLOY_FAILED = "the trained model could not be deployed"
_SEGMENT = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,127}$")
_HF_ID = re.compile(r"^[A-Za-z0-9][A-Za-z0-9._-]{0,95}(/[A-Za-z0-9][A-Za-z0-9._-]{0,95})?$")
_CANCELLED_CODE = 1  # google.rpc.Code.CANCELLED: an operation cancelled by ``operations.cancel``
_ENDED = ("failed", "cancelled")


class VertexTrainingTuner:
    """One Vertex AI CustomJob per fine-tune job, then the Model Registry model and endpoint that serve it.

    The training data are the uploaded files where the Cloud Storage BlobStore keeps them
    (``gs://<bucket>/<data_prefix>files/<tenant>/<file id>``); the job writes the model under
    ``gs://<artifacts bucket>/<artifacts_prefix>models/<tenant>/<job id>/model/`` (``AIP_MODEL_DIR``). The
    training image gets ``--model_id`` (the base model's Hugging Face id), ``--train_data``,
    ``--validation_data``, ``--n_epochs``, ``--batch_size``, ``--learning_rate_multiplier`` (``auto`` or a
    number) and ``--seed``; it must write the whole model (weights, config, tokenizer with its chat template).

    Deployment happens in ``status``: once the job has SUCCEEDED, polls create the endpoint, upload the model and
    deploy it, one long-running operation each. Nothing is remembered between polls: each finds where the
    deployment is from the resources and their operations (ids are the job's), so polls from many instances at
    once are safe. The job stays ``running`` until the endpoint serves the model, then succeeds with the route
    ``{"type": "vertex", "project", "location", "endpoint_id", "api"}``.
    """

    name = "vertex"

    def __init__(
        self,
        project: str,
        location: str,
        bucket: str,
        image_uri: str,
        *,
        data_prefix: str = "",
        artifacts_bucket: str | None = None,
        artifacts_prefix: str = "",
        training_size: str = "small",
        serving_size: str = "small",
        serving_image: str = DEFAULT_SERVING_IMAGE,
        api: str = "predict-tgi",
        service_account: str | None = None,
        boot_disk_gb: int = 100,
        timeout_s: int = 24 * 3600,
        session: HttpSession | None = None,
        api_url: str | None = None,
    ) -> None:
        for label, value in (("project", project), ("location", location)):
            if not _SEGMENT.match(value):
                raise ValueError(f"the Vertex AI {label} is not a valid identifier: {value!r}")
        if api not in VERTEX_APIS:
            raise ValueError(f"api must be one of {VERTEX_APIS}, not {api!r}")
        if not bucket or not image_uri:
            raise ValueError("a Vertex AI tuner needs the data bucket and the training image")
        self.project, self.location, self.api = project, location, api
        self.bucket, self.data_prefix = bucket, data_prefix
        self.artifacts_bucket, self.artifacts_prefix = artifacts_bucket or bucket, artifacts_prefix
        self.image_uri, self.serving_image = image_uri, serving_image
        self.training_machine, self.serving_machine = machine(training_size), machine(serving_size)
        self.service_account, self.boot_disk_gb, self.timeout_s = service_account, boot_disk_gb, timeout_s
        self.parent = f"projects/{project}/locations/{location}"
        self.rest = VertexJobsRest(api_url or regional_url(location), session)

    # --- names ----------------------------------------------------------------------------------------------

    def data_uri(self, key: str) -> str:
        return f"gs://{self.bucket}/{self.data_prefix}{key}"

    def output_uri(self, job: FineTuneJob) -> str:
        return f"gs://{self.artifacts_bucket}/{self.artifacts_prefix}models/{job.tenant_id}/{job.id}/"

    def _names(self, job: FineTuneJob) -> Names:
        rid = resource_id(job.id)
        return Names(rid, f"{self.parent}/models/{rid}", f"{self.parent}/endpoints/{rid}")

    def route(self, endpoint_id: str) -> dict[str, Any]:
        """The registry route of the deployed model, as the ``vertex`` backend type reads it."""
        return {
            "type": "vertex",
            "project": self.project,
            "location": self.location,
            "endpoint_id": endpoint_id,
            "api": self.api,
        }

    # --- the port -------------------------------------------------------------------------------------------

    def check(self, job: FineTuneJob) -> None:
        """A 400 for what no training image can take: a base model that is not a Hugging Face id, a
        hyperparameter that is neither ``auto`` nor a number."""
        if not _HF_ID.match(job.base_model_ref):
            raise InvalidRequest(
                f"model {job.model!r} cannot be fine-tuned on Vertex AI: its base {job.base_model_ref!r} is not a "
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

    def training_request(self, job: FineTuneJob, training_key: str, validation_key: str | None) -> dict[str, Any]:
        """The ``customJobs.create`` body for ``job``."""
        validation = self.data_uri(validation_key) if validation_key is not None else None
        return custom_job_body(
            job,
            image_uri=self.image_uri,
            spec=self.training_machine,
            args=training_args(job, self.data_uri(training_key), validation),
            output_uri=self.output_uri(job),
            service_account=self.service_account,
            boot_disk_gb=self.boot_disk_gb,
            timeout_s=self.timeout_s,
        )

    def start(self, job: FineTuneJob, training_key: str, validation_key: str | None) -> str:
        """The CustomJob's resource name; a job that has one already (a repeated start) keeps it."""
        try:
            existing = self._custom_job(job)
            if existing is not None:
                return str(existing["name"])
            created = self.rest.post(
                f"{self.parent}/customJobs", self.training_request(job, training_key, validation_key)
            )
        except VertexApiError as exc:
            raise job_error(exc, "Vertex AI training") from None
        return str(created["name"])

    def status(self, job: FineTuneJob) -> TunerStatus:
        """The CustomJob's state; once it succeeded, the deployment's (advanced by this poll)."""
        try:
            described = self._custom_job(job)
            if described is None:
                raise BackendError(
                    f"Vertex AI has no custom job for fine-tuning job {job.id}", code="backend_misconfigured"
                )
            training = self.status_of(described)
            if described.get("state") != SUCCEEDED:
                return training
            return self._deployment(job, described, training)
        except VertexApiError as exc:
            raise job_error(exc) from None

    def status_of(self, described: dict[str, Any]) -> TunerStatus:
        """A CustomJob in the gateway's terms (a succeeded one is still ``running``: it deploys)."""
        state = str(described.get("state") or "")
        mapped = ENDED_STATES.get(state) or ("queued" if state in QUEUED_STATES else "running")
        error = None
        if mapped == "failed":
            error = error_message(described.get("error")) or f"the custom job ended {state}"
        return TunerStatus(mapped, error=error, events=training_events(described))

    def cancel(self, job: FineTuneJob) -> None:
        """Cancel the training; once it succeeded, take down whatever the deploy step made (see ``_undeploy``)."""
        try:
            described = self._custom_job(job)
            if described is None:
                return  # never started
            state = described.get("state")
            if state in ACTIVE_STATES:
                try:
                    self.rest.post(f"{described['name']}:cancel", {})
                    return
                except VertexApiError as exc:
                    if not exc.failed_precondition:
                        raise
                    state = self.rest.get(str(described["name"])).get("state")  # it ended meanwhile
            if state == SUCCEEDED:
                self._undeploy(self._names(job), job)
        except VertexApiError as exc:
            raise job_error(exc) from None

    # --- the deploy step ------------------------------------------------------------------------------------

    def _custom_job(self, job: FineTuneJob) -> dict[str, Any] | None:
        """The job's CustomJob: by its resource name once started, else by its label (a start that did not
        record the name)."""
        if job.external_id and "/customJobs/" in job.external_id:
            return self.rest.find(job.external_id)
        found = self.rest.get(f"{self.parent}/customJobs", {"filter": job_filter(job)}).get("customJobs") or []
        return found[0] if found else None

    def _deployment(self, job: FineTuneJob, described: dict[str, Any], training: TunerStatus) -> TunerStatus:
        """Endpoint, then model, then deployment: each poll takes the steps it can; events only grow."""
        names = self._names(job)
        creating = f"Creating endpoint {names.id}"
        uploading = "Uploading the model to the Vertex AI Model Registry"
        deploying = f"Deploying the model to endpoint {names.id}"

        def now(state: str, *events: str, error: str | None = None) -> TunerStatus:
            return replace(training, state=state, events=[*training.events, *events], error=error)

        def ended(step: Step, *events: str) -> TunerStatus:
            if step.state == "cancelled":
                return now("cancelled", *events)
            return now("failed", *events, error=f"{DEPLOY_FAILED} (endpoint {names.id}): {step.error}")

        endpoint = self.rest.find(names.endpoint)
        if endpoint is None:
            step = self._advance(names.endpoint, "CreateEndpoint", lambda: self._create_endpoint(job, names))
            if step.state in _ENDED:
                return ended(step, creating)
            endpoint = self.rest.find(names.endpoint) if step.state == "done" else None
            if endpoint is None:
                return now("running", creating)
        if is_cancelled(endpoint):
            return now("cancelled", creating)
        served = deployed_model_of(endpoint, names.model)
        if served is None:
            model = self.rest.find(names.model)
            if model is None:
                artifact = self.output_uri(job) + "model/"
                upload = upload_body(job, names.id, artifact, self.serving_image, self.serving_machine)
                step = self._advance(
                    names.model, "UploadModel", lambda: self.rest.post(f"{self.parent}/models:upload", upload)
                )
                if step.state in _ENDED:
                    return ended(step, creating, uploading)
                model = self.rest.find(names.model) if step.state == "done" else None
                if model is None:
                    return now("running", creating, uploading)
            body = deploy_body(str(model["name"]), names.id, self.serving_machine)
            step = self._advance(names.endpoint, "DeployModel", lambda: self._deploy(names, body))
            if step.state in _ENDED:
                return ended(step, creating, uploading, deploying)
            endpoint = self.rest.get(names.endpoint) if step.state == "done" else endpoint
            served = deployed_model_of(endpoint, names.model)
            if served is None:
                return now("running", creating, uploading, deploying)
        metadata = {
            "artifact_uri": self.output_uri(job) + "model/",
            "vertex_custom_job": described.get("name"),
            "vertex_model": names.model,
            "vertex_endpoint": names.endpoint,
            "deployed_model_id": served.get("id"),
            "trained_at": described.get("endTime"),
            "deployed": True,
        }
        done = now("succeeded", creating, uploading, deploying, f"Endpoint {names.id} is serving the model")
        return replace(done, fine_tuned_model_route=self.route(names.id), metadata=metadata)

    def _advance(self, resource: str, kind: str, start: Callable[[], dict[str, Any]]) -> Step:
        """Where the newest ``kind`` operation on ``resource`` is; one still running is read again
        (``operations.get``). None yet: ``start()`` one; so too when an endpoint or model creation succeeded
        earlier and left nothing (deleted since: creating it again is safe). A deployment is never started
        twice: one that succeeded is ``done`` (the caller reads the endpoint). Called while the step's resource
        is missing."""
        ops = [op for op in self.rest.operations(resource) if operation_kind(op) == kind]
        newest = max(ops, key=created_at, default=None)
        if newest is not None and not newest.get("done"):
            newest = self.rest.get(str(newest["name"]))
        elif newest is None or (kind != "DeployModel" and operation_error(newest) is None):
            try:
                newest = start()
            except VertexApiError as exc:
                if exc.already_exists:
                    return Step("running")  # another poll started it a moment ago
                refused = job_error(exc)
                if refused.retryable:
                    raise  # throttled, a 5xx: the next poll tries again
                return Step("failed", refused.message)  # refused: quota, a bad machine type, permissions
        if not newest.get("done"):
            return Step("running")
        error = operation_error(newest)
        if error is None:
            return Step("done")
        if error.get("code") == _CANCELLED_CODE:
            return Step("cancelled")
        return Step("failed", error_message(error))

    def _create_endpoint(self, job: FineTuneJob, names: Names, *, cancelled: bool = False) -> dict[str, Any]:
        labels = job_labels(job) | ({CANCELLED_LABEL: "true"} if cancelled else {})
        body = {"displayName": names.id, "labels": labels}
        return self.rest.post(f"{self.parent}/endpoints", body, {"endpointId": names.id})

    def _deploy(self, names: Names, body: dict[str, Any]) -> dict[str, Any]:
        """``deployModel``, then the endpoint read again: a cancel that labelled it meanwhile gets the new
        deployment's operation cancelled here (its own cancel may have listed the operations before it began)."""
        operation = self.rest.post(f"{names.endpoint}:deployModel", body)
        if is_cancelled(self.rest.get(names.endpoint)) and not operation.get("done"):
            self.rest.post(f"{operation['name']}:cancel", {})
            return {**operation, "done": True, "error": {"code": _CANCELLED_CODE, "message": "cancelled"}}
        return operation

    def _undeploy(self, names: Names, job: FineTuneJob) -> None:
        """Label the endpoint cancelled (creating it, empty, if no poll has yet: an endpoint without a model
        costs nothing), then cancel the operations still running, undeploy what is deployed and delete the
        model. A poll reads the label before each step and again right after it starts a deployment, so
        either it sees the label or its operation is listed here: no GPU outlives a cancelled job."""
        endpoint = self.rest.find(names.endpoint)
        kinds = {"UploadModel", "DeployModel"}
        if endpoint is None:
            try:
                self._create_endpoint(job, names, cancelled=True)
            except VertexApiError as exc:
                if not exc.already_exists:
                    raise
                kinds.add("CreateEndpoint")  # a poll is creating it, unlabelled: its operation is cancelled
        else:
            self._label_cancelled(names, endpoint)
        for resource in (names.endpoint, names.model):
            for op in self.rest.operations(resource):
                if not op.get("done") and operation_kind(op) in kinds:
                    self._quietly("POST", f"{op['name']}:cancel", {})
        endpoint = self.rest.find(names.endpoint)
        if endpoint is None:
            return
        self._label_cancelled(names, endpoint)  # a poll's endpoint that came up meanwhile
        for deployed in endpoint.get("deployedModels") or []:
            self._quietly("POST", f"{names.endpoint}:undeployModel", {"deployedModelId": str(deployed.get("id"))})
        # Still deployed while the undeploy runs: FAILED_PRECONDITION; a model without a deployment costs nothing.
        self._quietly("DELETE", names.model)

    def _label_cancelled(self, names: Names, endpoint: dict[str, Any]) -> None:
        if not is_cancelled(endpoint):
            labels = {**(endpoint.get("labels") or {}), CANCELLED_LABEL: "true"}
            self.rest.call("PATCH", names.endpoint, body={"labels": labels}, params={"updateMask": "labels"})

    def _quietly(self, method: str, path: str, body: Any = None) -> None:
        """A call on something that may have ended or gone meanwhile (NOT_FOUND, FAILED_PRECONDITION: no error)."""
        try:
            self.rest.call(method, path, body=body)
        except VertexApiError as exc:
            if not (exc.not_found or exc.failed_precondition):
                raise
