"""``AzureMLDeployer``: the deploy step of a trained model on Azure ML: its model version, a managed online endpoint
and a deployment (TGI), advanced one step per poll, and taken down again on cancel; the ``azureml`` route it yields.

Stateless between polls: each poll reads the resources and takes the next step (ARM PUTs are create-or-update),
so polls from many instances at once are safe.
"""

from __future__ import annotations

from dataclasses import dataclass, replace
from typing import Any

from adapters.azure.azureml_jobs_rest import ArmError, AzureMLRest, arm_error, deploy_refusal
from adapters.azure.azureml_jobs_wire import (
    BUSY,
    CANCELLED_TAG,
    DEPLOYMENT,
    MODEL_VERSION,
    SERVING_ENVIRONMENT,
    SUCCEEDED,
    deployment_body,
    endpoint_body,
    endpoint_name,
    environment_body,
    environment_version,
    is_cancelled,
    job_name,
    job_tags,
    model_body,
    properties,
    provisioning,
)
from core.fine_tuning.job import FineTuneJob, TunerStatus

#: Hugging Face's TGI container; ``/`` answers in the ``hf`` format of the ``azureml`` route.
DEFAULT_SERVING_IMAGE = "ghcr.io/huggingface/text-generation-inference:3.3.6"
DEPLOY_FAILED = "the trained model could not be deployed"
AUTH_MODES = {"entra": "AADToken", "key": "Key"}


@dataclass(frozen=True, slots=True)
class Serving:
    """How a trained model is served: the image, ``count`` instances of ``instance_type``, the endpoint's auth
    (``entra``: the gateway's identity, no key to hand out; ``key``) and the chat template of the route."""

    image: str = DEFAULT_SERVING_IMAGE
    instance_type: str = "Standard_NC4as_T4_v3"
    count: int = 1
    auth: str = "entra"
    chat_template: str = "chatml"


class AzureMLDeployer:
    """The deploy step on one workspace: endpoint ``tnlp-<job id hex>``, model ``textnlp-<job id>`` version 1,
    deployment ``tuned``."""

    def __init__(self, rest: AzureMLRest, workspace_id: str, serving: Serving, location: str | None = None) -> None:
        self.rest, self.workspace_id, self.serving, self._location = rest, workspace_id, serving, location

    def route(self, scoring_uri: str) -> dict[str, Any]:
        """The registry route of the deployed model, as the ``azureml`` backend type reads it: the endpoint's
        scoring URI in the ``hf`` format (TGI), pinned to the job's deployment."""
        return {
            "type": "azureml",
            "scoring_uri": scoring_uri,
            "format": "hf",
            "deployment": DEPLOYMENT,
            "auth": self.serving.auth,
            "chat_template": self.serving.chat_template,
        }

    def advance(self, job: FineTuneJob, training: TunerStatus, output_uri: str) -> TunerStatus:
        """Endpoint, then model version, then deployment: each poll takes the steps it can; events only grow."""
        endpoint = endpoint_name(job.id)
        model = job_name(job.id)
        base = f"onlineEndpoints/{endpoint}"
        steps = [
            f"Creating online endpoint {endpoint}",
            f"Registering the model {model} version {MODEL_VERSION}",
            f"Deploying the model to endpoint {endpoint}",
        ]

        def now(state: str, reached: int, error: str | None = None, **extra: Any) -> TunerStatus:
            return replace(training, state=state, events=[*training.events, *steps[:reached]], error=error, **extra)

        def failed(reached: int, why: str) -> TunerStatus:
            return now("failed", reached, f"{DEPLOY_FAILED} (endpoint {endpoint}): {why}")

        found = self.rest.find(base)
        if found is None:
            state, why = self._create(base, endpoint_body(job, self.location(), AUTH_MODES[self.serving.auth]))
            if state in ("Failed", "Canceled"):
                return failed(1, why or f"the endpoint's creation ended {state}")
            found = self.rest.find(base) if state == SUCCEEDED else None
        if is_cancelled(found):
            return now("cancelled", 1)
        if found is None or provisioning(found) in BUSY:
            return now("running", 1)
        if provisioning(found) != SUCCEEDED:  # Failed, Canceled, Deleting
            return failed(1, f"the endpoint is {provisioning(found) or 'in an unknown state'}")
        deployment = self.rest.find(f"{base}/deployments/{DEPLOYMENT}")
        if deployment is None:
            model_id = f"{self.workspace_id}/models/{model}/versions/{MODEL_VERSION}"
            if self.rest.find(f"models/{model}/versions/{MODEL_VERSION}") is None:
                try:
                    self.rest.put(f"models/{model}/versions/{MODEL_VERSION}", model_body(job, output_uri))
                except ArmError as exc:
                    return failed(2, deploy_refusal(exc))
            body = deployment_body(
                job,
                location=self.location(),
                model_id=model_id,
                model_name=model,
                environment_id=self.environment(self.serving.image, SERVING_ENVIRONMENT, inference=True),
                instance_type=self.serving.instance_type,
                instances=self.serving.count,
            )
            state, why = self._create(f"{base}/deployments/{DEPLOYMENT}", body)
            if is_cancelled(self.rest.find(base)):  # a cancel that ran meanwhile: take down what was just started
                self._quietly("DELETE", f"{base}/deployments/{DEPLOYMENT}")
                return now("cancelled", 3)
            if state in ("Failed", "Canceled"):
                return failed(3, why or f"the deployment's creation ended {state}")
            deployment = self.rest.find(f"{base}/deployments/{DEPLOYMENT}") if state == SUCCEEDED else None
        if deployment is None or provisioning(deployment) in BUSY:
            return now("running", 3)
        if provisioning(deployment) != SUCCEEDED:
            return failed(3, f"the deployment {DEPLOYMENT} is {provisioning(deployment) or 'in an unknown state'}")
        scoring_uri = properties(self.rest.get(base)).get("scoringUri")
        if not scoring_uri:
            return now("running", 3)
        metadata = {
            **training.metadata,
            "artifact_uri": output_uri,
            "azureml_model": f"{model}:{MODEL_VERSION}",
            "azureml_endpoint": endpoint,
            "azureml_deployment": DEPLOYMENT,
            "deployed": True,
        }
        done = now("succeeded", 3, fine_tuned_model_route=self.route(str(scoring_uri)), metadata=metadata)
        return replace(done, events=[*done.events, f"Endpoint {endpoint} is serving the model"])

    def _create(self, path: str, body: dict[str, Any]) -> tuple[str, str]:
        """PUT a resource whose creation is a long-running operation, and read the operation once; a refusal that
        will not pass (quota, a bad instance type, access) is ``Failed``, a passing one is raised (next poll)."""
        try:
            return self.rest.operation(self.rest.put(path, body))
        except ArmError as exc:
            if exc.status == 409:  # another poll's creation is under way
                return "InProgress", ""
            return "Failed", deploy_refusal(exc)

    def undeploy(self, job: FineTuneJob) -> None:
        """Tag the endpoint cancelled (creating it, empty, if no poll has yet: an endpoint without a deployment
        costs nothing), then delete the deployment and the model version. A poll reads the tag before it deploys
        and again right after, so either it sees the tag or its deployment is deleted here."""
        base = f"onlineEndpoints/{endpoint_name(job.id)}"
        found = self.rest.find(base)
        if found is None:
            self._create(base, endpoint_body(job, self.location(), AUTH_MODES[self.serving.auth], cancelled=True))
        elif not is_cancelled(found):
            tags = {**(found.get("tags") or {}), **job_tags(job), CANCELLED_TAG: "true"}
            self.rest.call("PATCH", base, {"tags": tags})
        self._quietly("DELETE", f"{base}/deployments/{DEPLOYMENT}")
        self._quietly("DELETE", f"models/{job_name(job.id)}/versions/{MODEL_VERSION}")

    def _quietly(self, method: str, path: str) -> None:
        """A delete of something that may be gone already, or still in use (404, 409: no error)."""
        try:
            self.rest.call(method, path)
        except ArmError as exc:
            if exc.status not in (404, 409):
                raise

    def location(self) -> str:
        """The workspace's region (endpoints and deployments name it), read once."""
        if self._location is None:
            found = self.rest.get("").get("location")
            if not found:
                raise arm_error(ArmError(404, "NoLocation", "the workspace has no location"), self.rest.where)
            self._location = str(found)
        return self._location

    def environment(self, image: str, name: str, *, inference: bool) -> str:
        """The ARM id of the environment ``image`` names: itself when it is one, else a version made for it."""
        if image.startswith(("azureml:", "/subscriptions/")):
            return image
        body = environment_body(image, inference)
        version = environment_version(body["properties"])
        path = f"environments/{name}/versions/{version}"
        if self.rest.find(path) is None:
            self.rest.put(path, body)
        return f"{self.workspace_id}/{path}"
