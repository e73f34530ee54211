"""The Vertex AI control-plane bodies of one fine-tune job, as pure functions: the CustomJob that trains it, the
Model Registry upload and the endpoint deployment that serve it, the machines a size names, and what a
CustomJob's state means in the gateway's terms."""

from __future__ import annotations

import hashlib
import re
from collections.abc import Mapping
from dataclasses import dataclass
from typing import Any

from core.fine_tuning.job import FineTuneJob

NAME_PREFIX = "textnlp-"
ID_LIMIT = 63  # endpoint and model ids: [a-z][a-z0-9-]{0,62} (models also allow "_"); label values: 63 chars
_ID_UNSAFE = re.compile(r"[^a-z0-9-]+")
_LABEL_UNSAFE = re.compile(r"[^a-z0-9_-]+")
JOB_LABEL = "textnlp-job"
TENANT_LABEL = "textnlp-tenant"
CANCELLED_LABEL = "textnlp-cancelled"  # on the job's endpoint: cancel ran, nothing may be deployed there

# CustomJob states (JobState) -> the gateway's. SUCCEEDED is not here: the model still has to be uploaded and
# deployed, and the job runs on until its endpoint serves it. CANCELLING is as good as cancelled: the run stops.
QUEUED_STATES = frozenset({"JOB_STATE_QUEUED", "JOB_STATE_PENDING"})
ACTIVE_STATES = QUEUED_STATES | {"JOB_STATE_RUNNING", "JOB_STATE_UPDATING", "JOB_STATE_PAUSED"}
ENDED_STATES = {
    "JOB_STATE_FAILED": "failed",
    "JOB_STATE_EXPIRED": "failed",
    "JOB_STATE_PARTIALLY_SUCCEEDED": "failed",
    "JOB_STATE_CANCELLING": "cancelled",
    "JOB_STATE_CANCELLED": "cancelled",
}
SUCCEEDED = "JOB_STATE_SUCCEEDED"
_PROGRESS = ("JOB_STATE_QUEUED", "JOB_STATE_PENDING", "JOB_STATE_RUNNING", SUCCEEDED)
_PROGRESS_EVENTS = ("Preparing the training machines", "Training", "Training completed")


@dataclass(frozen=True, slots=True)
class MachineSpec:
    """A Vertex AI ``machineSpec``: a machine type and the GPUs attached to it."""

    machine_type: str
    accelerator_type: str
    accelerator_count: int

    def body(self) -> dict[str, Any]:
        return {
            "machineType": self.machine_type,
            "acceleratorType": self.accelerator_type,
            "acceleratorCount": self.accelerator_count,
        }


#: A size names the machine of a training job or of a deployed model: the same table as Terraform's endpoint
#: (terraform/gcp/locals.tf ``vertex_sizes``), so one size means one machine everywhere.
SIZES: dict[str, MachineSpec] = {
    "small": MachineSpec("g2-standard-4", "NVIDIA_L4", 1),  # 24 GB of GPU memory
    "medium": MachineSpec("g2-standard-8", "NVIDIA_L4", 1),  # 24 GB, more CPU and memory
    "large": MachineSpec("g2-standard-48", "NVIDIA_L4", 4),  # 96 GB
    "xlarge": MachineSpec("a2-highgpu-8g", "NVIDIA_TESLA_A100", 8),  # 320 GB
}


def machine(size: str) -> MachineSpec:
    try:
        return SIZES[size]
    except KeyError:
        raise ValueError(f"unknown Vertex AI machine size {size!r}; sizes: {', '.join(SIZES)}") from None


def _digest(text: str) -> str:
    return hashlib.sha256(text.encode()).hexdigest()[:12]


def resource_id(job_id: str) -> str:
    """``textnlp-<job id>``: the id of one fine-tune job's Model Registry model and endpoint.

    Both take a lowercase letter first, then lowercase letters, digits and hyphens, 63 characters at most, no
    hyphen last. Job ids (``ftjob-`` + hex) fit as they are; any other id is lowercased, its unsafe characters
    replaced, and ends in a hash of the whole id, so two ids never share a resource.
    """
    plain = f"{NAME_PREFIX}{job_id}"
    safe = _ID_UNSAFE.sub("-", plain.lower()).strip("-")
    if safe == plain and len(plain) <= ID_LIMIT:
        return plain
    digest = _digest(job_id)
    return f"{safe[: ID_LIMIT - len(digest) - 1].rstrip('-')}-{digest}"


def label_value(value: str) -> str:
    """A label value (lowercase letters, digits, ``_``, ``-``; 63 characters); altered values end in a hash."""
    safe = _LABEL_UNSAFE.sub("-", value.lower())
    if safe == value and len(value) <= ID_LIMIT:
        return value
    digest = _digest(value)
    return f"{safe[: ID_LIMIT - len(digest) - 1]}-{digest}"


def job_labels(job: FineTuneJob) -> dict[str, str]:
    return {JOB_LABEL: label_value(job.id), TENANT_LABEL: label_value(job.tenant_id)}


def job_filter(job: FineTuneJob) -> str:
    """The ``customJobs.list`` filter that finds the job's CustomJob (its label)."""
    return f'labels.{JOB_LABEL}="{label_value(job.id)}"'


def training_args(job: FineTuneJob, train_uri: str, validation_uri: str | None) -> list[str]:
    """The training container's arguments: ``--name=value``, the convention of Vertex AI's training images."""
    hyper = job.hyperparameters
    args = {
        "model_id": job.base_model_ref,
        "train_data": train_uri,
        **({"validation_data": validation_uri} if validation_uri else {}),
        "n_epochs": hyper.get("n_epochs", "auto"),
        "batch_size": hyper.get("batch_size", "auto"),
        "learning_rate_multiplier": hyper.get("learning_rate_multiplier", "auto"),
        "seed": job.seed,
    }
    return [f"--{name}={value}" for name, value in args.items()]


def custom_job_body(
    job: FineTuneJob,
    *,
    image_uri: str,
    spec: MachineSpec,
    args: list[str],
    output_uri: str,
    service_account: str | None,
    boot_disk_gb: int,
    timeout_s: int,
) -> dict[str, Any]:
    """The ``customJobs.create`` body: one worker on ``spec`` running ``image_uri``; the model goes to
    ``output_uri`` + ``model/`` (Vertex AI sets ``AIP_MODEL_DIR`` there)."""
    pool = {
        "machineSpec": spec.body(),
        "replicaCount": "1",
        "diskSpec": {"bootDiskType": "pd-ssd", "bootDiskSizeGb": boot_disk_gb},
        "containerSpec": {"imageUri": image_uri, "args": args},
    }
    job_spec: dict[str, Any] = {
        "workerPoolSpecs": [pool],
        "baseOutputDirectory": {"outputUriPrefix": output_uri},
        "scheduling": {"timeout": f"{timeout_s}s"},
    }
    if service_account:
        job_spec["serviceAccount"] = service_account
    return {"displayName": f"{NAME_PREFIX}{job.id}"[:128], "labels": job_labels(job), "jobSpec": job_spec}


def upload_body(
    job: FineTuneJob, model_id: str, artifact_uri: str, image_uri: str, spec: MachineSpec
) -> dict[str, Any]:
    """``models:upload``: the trained artefact with the serving image (Hugging Face's TGI container for Vertex
    AI loads the model from ``AIP_STORAGE_URI``, the copy of ``artifactUri``; one shard per GPU)."""
    env = {"NUM_SHARD": str(spec.accelerator_count), "MESSAGES_API_ENABLED": "true"}
    container = {
        "imageUri": image_uri,
        "env": [{"name": name, "value": value} for name, value in env.items()],
        "ports": [{"containerPort": 8080}],
    }
    model = {
        "displayName": model_id,
        "description": f"fine-tuned from {job.base_model_ref} by TextNLP job {job.id}"[:1000],
        "artifactUri": artifact_uri,
        "containerSpec": container,
        "labels": job_labels(job),
    }
    return {"modelId": model_id, "model": model}


def deploy_body(model_name: str, display_name: str, spec: MachineSpec) -> dict[str, Any]:
    """``endpoints.deployModel``: one replica on ``spec``, all of the endpoint's traffic."""
    deployed = {
        "model": model_name,
        "displayName": display_name,
        "dedicatedResources": {"machineSpec": spec.body(), "minReplicaCount": 1, "maxReplicaCount": 1},
    }
    return {"deployedModel": deployed, "trafficSplit": {"0": 100}}


def training_events(custom_job: Mapping[str, Any]) -> list[str]:
    """The job's history as far as its state shows it; each later state's list extends the earlier ones'."""
    state = str(custom_job.get("state") or "")
    events = [f"Vertex AI custom job {str(custom_job.get('name', '')).rsplit('/', 1)[-1]} created"]
    reached = _PROGRESS.index(state) if state in _PROGRESS else (2 if custom_job.get("startTime") else 0)
    events += _PROGRESS_EVENTS[:reached]
    if state in ENDED_STATES:
        message = error_message(custom_job.get("error"))
        events.append(f"Training {ENDED_STATES[state]}" + (f": {message}" if message else ""))
    return events


def error_message(error: object) -> str:
    """The message of a ``google.rpc.Status`` (a job's or an operation's ``error``)."""
    if isinstance(error, Mapping):
        return str(error.get("message") or f"code {error.get('code')}")[:500]
    return ""


def deployed_model_of(endpoint: Mapping[str, Any], model_name: str) -> dict[str, Any] | None:
    """The endpoint's deployment of ``model_name`` (a Model's resource name; project number or id alike)."""
    tail = "/" + model_name.split("/locations/", 1)[-1]
    for deployed in endpoint.get("deployedModels") or []:
        if isinstance(deployed, dict) and str(deployed.get("model", "")).endswith(tail):
            return deployed
    return None


@dataclass(frozen=True, slots=True)
class Names:
    """The resource names of one job's Vertex AI model and endpoint (both ``textnlp-<job id>``)."""

    id: str
    model: str
    endpoint: str


@dataclass(frozen=True, slots=True)
class Step:
    """Where one long-running step is: ``start`` (not begun), ``running``, ``done``, ``failed`` or ``cancelled``."""

    state: str
    error: str = ""


def is_cancelled(endpoint: dict[str, Any]) -> bool:
    """Whether a cancel marked the endpoint (the job's deploy must stop)."""
    return (endpoint.get("labels") or {}).get(CANCELLED_LABEL) == "true"


def created_at(operation: dict[str, Any]) -> str:
    """When a long-running operation was created (its order among a resource's operations)."""
    metadata = operation.get("metadata") or {}
    generic = metadata.get("genericMetadata") or {}
    return str(generic.get("createTime") or "")
