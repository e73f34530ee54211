"""The Azure ML (ARM) bodies of one fine-tune job, as pure functions: the command job that trains it, the
environments, the model version, the managed online endpoint and deployment that serve it, their names, and what
a job's status means in the gateway's terms."""

from __future__ import annotations

import hashlib
import json
import re
import shlex
from collections.abc import Mapping
from typing import Any

from core.fine_tuning.job import FineTuneJob

NAME_PREFIX = "textnlp-"
EXPERIMENT = "textnlp-fine-tuning"
DEPLOYMENT = "tuned"  # the one deployment of a job's endpoint (3-32 characters)
MODEL_VERSION = "1"
JOB_TAG, TENANT_TAG = "textnlp-job", "textnlp-tenant"
CANCELLED_TAG = "textnlp-cancelled"  # on the job's endpoint: cancel ran, nothing may be deployed there
TRAINING_ENVIRONMENT, SERVING_ENVIRONMENT = "textnlp-training", "textnlp-tgi"
MODEL_MOUNT = "/var/azureml-app/azureml-models"  # where a deployment mounts its model (AZUREML_MODEL_DIR's parent)

# Job statuses (JobStatus) -> the gateway's. Waiting for or setting up compute is OpenAI's ``queued``. Completed is
# not here: the model still has to be registered and deployed, and the job runs on until its endpoint serves it.
# CancelRequested is as good as cancelled: the run stops. Unknown maps to ``queued``, which the service reads as
# no news (it never moves a job back).
QUEUED = frozenset({"NotStarted", "Queued", "Preparing", "Provisioning", "Starting", "Unknown"})
RUNNING = frozenset({"Running", "Finalizing", "NotResponding", "Paused"})
ENDED = {"Failed": "failed", "Canceled": "cancelled", "CancelRequested": "cancelled"}
COMPLETED = "Completed"
ACTIVE = QUEUED | RUNNING
_PROGRESS = (
    ("Preparing", "Provisioning", "Starting"),
    ("Running", "Finalizing", "NotResponding", "Paused"),
    (COMPLETED,),
)
_PROGRESS_EVENTS = ("Preparing the compute", "Training", "Training completed")
# provisioningState of endpoints and deployments.
BUSY = frozenset({"Creating", "Updating", "Scaling", "Provisioning", "Accepted"})
SUCCEEDED = "Succeeded"

_JOB_NAME = re.compile(r"^[a-z0-9][a-z0-9_-]{0,254}$")
_JOB_ID = re.compile(r"^ftjob-([0-9a-f]{24})$")
_UNSAFE = re.compile(r"[^a-z0-9-]+")
#: A TGI container: ``/`` answers ``[{"generated_text": ...}]`` (the ``hf`` format of the ``azureml`` route).
INFERENCE_CONFIG = {
    "livenessRoute": {"path": "/health", "port": 80},
    "readinessRoute": {"path": "/health", "port": 80},
    "scoringRoute": {"path": "/", "port": 80},
}


def _digest(text: str, size: int = 12) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:size]


def job_name(job_id: str) -> str:
    """``textnlp-<job id>``: the job's Azure ML job and model name (lowercase, digits, ``-``/``_``); any other id
    is made safe and ends in a hash of the whole id."""
    plain = f"{NAME_PREFIX}{job_id}"
    if _JOB_NAME.match(plain):
        return plain
    return f"{_UNSAFE.sub('-', plain.lower())[:200].strip('-')}-{_digest(job_id)}"


def endpoint_name(job_id: str) -> str:
    """``tnlp-<24 hex>``: online endpoint names are unique in an Azure region and 3-32 characters long (a letter
    first, no ``-`` last); the job id's random part when it has one, else a hash of the whole id."""
    found = _JOB_ID.match(job_id)
    return f"tnlp-{found.group(1) if found else _digest(job_id, 24)}"


def job_tags(job: FineTuneJob) -> dict[str, str]:
    return {JOB_TAG: job.id, TENANT_TAG: job.tenant_id}


def environment_version(properties: Mapping[str, Any]) -> str:
    """An environment version named after its content: writing it again is a no-op, never a conflict."""
    return _digest(json.dumps(properties, sort_keys=True), 16)


def environment_body(image: str, inference: bool) -> dict[str, Any]:
    properties: dict[str, Any] = {"image": image, "osType": "Linux"}
    if inference:
        properties["inferenceConfig"] = INFERENCE_CONFIG
    return {"properties": properties}


def training_command(command: str, job: FineTuneJob, validation: bool) -> str:
    """The command line: the image's trainer with ``--name value`` arguments, inputs and the output as Azure ML
    expressions (resolved to mounted paths). Values are quoted; ``check`` allowed only ids and numbers anyway."""
    hyper = job.hyperparameters
    args: dict[str, object] = {
        "model_id": job.base_model_ref,
        "train_data": "${{inputs.train}}",
        **({"validation_data": "${{inputs.validation}}"} if validation else {}),
        "n_epochs": hyper.get("n_epochs", "auto"),
        "batch_size": hyper.get("batch_size", "auto"),
        "learning_rate_multiplier": hyper.get("learning_rate_multiplier", "auto"),
        "seed": job.seed,
        "output_dir": "${{outputs.model}}",
    }
    quoted = [f"--{k} {v}" if str(v).startswith("${{") else f"--{k} {shlex.quote(str(v))}" for k, v in args.items()]
    return " ".join([command, *quoted])


def command_job_body(
    job: FineTuneJob,
    *,
    command: str,
    compute_id: str,
    environment_id: str,
    inputs: Mapping[str, str],
    output_uri: str,
    timeout_s: int,
) -> dict[str, Any]:
    """``PUT .../jobs/{name}``: a command job on ``compute_id``; ``inputs`` (``train``, ``validation``) are
    ``uri_file`` URIs, mounted read-only; the model is uploaded to ``output_uri`` as a ``custom_model``."""
    properties = {
        "jobType": "Command",
        "displayName": job_name(job.id),
        "experimentName": EXPERIMENT,
        "description": f"TextNLP fine-tuning job {job.id} of {job.base_model_ref}"[:500],
        "tags": job_tags(job),
        "computeId": compute_id,
        "environmentId": environment_id,
        "command": training_command(command, job, "validation" in inputs),
        "inputs": {
            name: {"jobInputType": "uri_file", "uri": uri, "mode": "ReadOnlyMount"} for name, uri in inputs.items()
        },
        "outputs": {"model": {"jobOutputType": "custom_model", "uri": output_uri, "mode": "Upload"}},
        "resources": {"instanceCount": 1},
        "limits": {"jobLimitsType": "Command", "timeout": f"PT{timeout_s}S"},
    }
    return {"properties": properties}


def model_body(job: FineTuneJob, model_uri: str) -> dict[str, Any]:
    """``PUT .../models/{name}/versions/1``: the job's output folder as a ``custom_model``."""
    description = f"fine-tuned from {job.base_model_ref} by TextNLP job {job.id}"[:500]
    properties = {"modelType": "custom_model", "modelUri": model_uri, "description": description}
    return {"properties": {**properties, "tags": job_tags(job)}}


def endpoint_body(job: FineTuneJob, location: str, auth_mode: str, cancelled: bool = False) -> dict[str, Any]:
    """``PUT .../onlineEndpoints/{name}``: a managed online endpoint (``AADToken``: the gateway's Entra identity
    calls it, no key to hand out; ``Key``: the endpoint keys)."""
    tags = job_tags(job) | ({CANCELLED_TAG: "true"} if cancelled else {})
    properties = {"authMode": auth_mode, "description": f"TextNLP fine-tuned model of job {job.id}"}
    return {"location": location, "identity": {"type": "SystemAssigned"}, "tags": tags, "properties": properties}


def deployment_body(
    job: FineTuneJob,
    *,
    location: str,
    model_id: str,
    model_name: str,
    environment_id: str,
    instance_type: str,
    instances: int,
) -> dict[str, Any]:
    """``PUT .../onlineEndpoints/{e}/deployments/{d}``: TGI on ``instances`` of ``instance_type``, loading the model
    from where the deployment mounts it; probes that wait for the weights to load."""
    probe = {"initialDelay": "PT600S", "period": "PT10S", "timeout": "PT10S", "failureThreshold": 30}
    environment = {
        "MODEL_ID": f"{MODEL_MOUNT}/{model_name}/{MODEL_VERSION}/model",
        "MESSAGES_API_ENABLED": "true",
    }
    properties = {
        "endpointComputeType": "Managed",
        "model": model_id,
        "environmentId": environment_id,
        "instanceType": instance_type,
        "environmentVariables": environment,
        "requestSettings": {"requestTimeout": "PT90S", "maxConcurrentRequestsPerInstance": 8},
        "livenessProbe": probe,
        "readinessProbe": {**probe, "initialDelay": "PT60S"},
        "appInsightsEnabled": True,
    }
    sku = {"name": "Default", "capacity": instances}
    return {"location": location, "sku": sku, "tags": job_tags(job), "properties": properties}


def state_of(status: str) -> str:
    """A job status in the gateway's terms (``Completed`` is ``running``: the model is being deployed)."""
    return ENDED.get(status) or ("running" if status in RUNNING or status == COMPLETED else "queued")


def training_events(described: Mapping[str, Any]) -> list[str]:
    """The job's history as far as its status shows it; each later status's list extends the earlier ones'."""
    status = str(properties(described).get("status") or "")
    events = [f"Azure ML job {described.get('name', '')} created"]
    reached = next((i + 1 for i, group in enumerate(_PROGRESS) if status in group), 0)
    events += _PROGRESS_EVENTS[:reached]
    if status in ENDED and status != "CancelRequested":
        message = failure_message(described) if status == "Failed" else ""
        events.append(f"Training {ENDED[status]}" + (f": {message}" if message else ""))
    return events


def failure_message(described: Mapping[str, Any]) -> str:
    """Why a job failed, as far as the job resource says: its ``error`` if given, else where its logs are (the run's
    error text is in the workspace's run history, not in the ARM resource)."""
    props = properties(described)
    error = props.get("error")
    if isinstance(error, Mapping) and error.get("message"):
        return str(error["message"])[:500]
    studio = ((props.get("services") or {}).get("Studio") or {}).get("endpoint")
    where = f"; its logs: {studio}" if studio else ""
    return f"the Azure ML job {described.get('name', '')} ended {props.get('status', 'Failed')}{where}"[:500]


def properties(resource: Mapping[str, Any] | None) -> dict[str, Any]:
    found = (resource or {}).get("properties")
    return found if isinstance(found, dict) else {}


def provisioning(resource: Mapping[str, Any] | None) -> str:
    return str(properties(resource).get("provisioningState") or "")


def is_cancelled(endpoint: Mapping[str, Any] | None) -> bool:
    """Whether a cancel marked the endpoint (the job's deploy must stop)."""
    return ((endpoint or {}).get("tags") or {}).get(CANCELLED_TAG) == "true"
