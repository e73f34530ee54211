"""SageMakerTrainingTuner: the FineTuner port on SageMaker training jobs (a Hugging Face training image).

Only the boto3 ``sagemaker`` control-plane client is used (never the ``sagemaker`` SDK); boto3 is imported
and the client created on the first call that needs it, so nothing here weighs on a cold start.
"""

from __future__ import annotations

import threading
from datetime import datetime
from typing import TYPE_CHECKING, Any

from core.errors import BackendError
from core.fine_tuning.job import FineTuneJob, TunerStatus

if TYPE_CHECKING:
    from botocore.exceptions import ClientError
    from mypy_boto3_sagemaker.client import SageMakerClient
    from mypy_boto3_sagemaker.type_defs import DescribeTrainingJobResponseTypeDef

NAME_LIMIT = 63  # training job and endpoint names: [a-zA-Z0-9](-*[a-zA-Z0-9]){0,62}
# While SageMaker finds and prepares instances the job waits, as OpenAI's ``queued`` does.
WAITING = frozenset({"Starting", "Pending", "LaunchingMLInstances", "PreparingTrainingStack"})
STATES = {"Completed": "succeeded", "Failed": "failed", "Stopped": "cancelled", "Deleting": "cancelled"}
TOKEN_METRICS = ("trained_tokens", "train_tokens")
_THROTTLING = frozenset({"ThrottlingException", "Throttling", "TooManyRequestsException"})
_GONE = frozenset({"ResourceNotFound", "ValidationException"})  # StopTrainingJob on an ended or unknown job


def training_job_name(job_id: str) -> str:
    return f"textnlp-{job_id}"[:NAME_LIMIT].rstrip("-")


def endpoint_name(job_id: str) -> str:
    """The endpoint a deploy step creates for the trained model (the same name as the training job)."""
    return training_job_name(job_id)


class SageMakerTrainingTuner:
    """One SageMaker training job per fine-tune job, named ``textnlp-<job id>``.

    Input channels are the uploaded files where the S3 BlobStore keeps them (``s3://bucket/<key_prefix>
    files/<tenant>/<file id>``); the model is written under ``s3://bucket/<key_prefix>models/<tenant>/<job id>/``.
    The image runs ``entry_point`` from ``source_uri`` (a ``sourcedir.tar.gz``, the Hugging Face training
    containers' convention) when given; otherwise the image's own entry point trains. Hyperparameters go as
    strings: ``model_id`` (the base model's ``hf_model_id``), ``n_epochs``, ``batch_size``,
    ``learning_rate_multiplier`` (``auto`` or a number), ``seed``.
    """

    name = "sagemaker"

    def __init__(
        self,
        role_arn: str,
        bucket: str,
        image_uri: str,
        instance_type: str = "ml.g5.2xlarge",
        client: SageMakerClient | None = None,
        *,
        key_prefix: str = "",
        source_uri: str | None = None,
        entry_point: str = "train.py",
        instance_count: int = 1,
        volume_gb: int = 100,
        max_runtime_s: int = 24 * 3600,
        container: str = "tgi",
        region: str | None = None,
    ) -> None:
        self.role_arn = role_arn
        self.bucket = bucket
        self.image_uri = image_uri
        self.instance_type = instance_type
        self.key_prefix = key_prefix
        self.source_uri = source_uri
        self.entry_point = entry_point
        self.instance_count = instance_count
        self.volume_gb = volume_gb
        self.max_runtime_s = max_runtime_s
        self.container = container
        self.region = region
        self._client = client
        self._lock = threading.Lock()

    def client(self) -> SageMakerClient:
        """The client passed in, else one created on first use and kept for the container."""
        with self._lock:
            if self._client is None:
                import boto3
                from botocore.config import Config

                config = Config(retries={"mode": "standard", "total_max_attempts": 3}, connect_timeout=5)
                self._client = boto3.client("sagemaker", region_name=self.region, config=config)
            return self._client

    def s3_uri(self, key: str) -> str:
        return f"s3://{self.bucket}/{self.key_prefix}{key}"

    def check(self, job: FineTuneJob) -> None:
        return None  # every generation model with a Hugging Face id can be trained by the image

    def training_request(self, job: FineTuneJob, training_key: str, validation_key: str | None) -> dict[str, Any]:
        """The CreateTrainingJob arguments for ``job``."""
        channels = [_channel("train", self.s3_uri(training_key))]
        if validation_key is not None:
            channels.append(_channel("validation", self.s3_uri(validation_key)))
        hyperparameters = {
            "model_id": job.base_model_ref,
            **{k: str(job.hyperparameters.get(k, "auto")) for k in ("n_epochs", "batch_size")},
            "learning_rate_multiplier": str(job.hyperparameters.get("learning_rate_multiplier", "auto")),
            "seed": str(job.seed),
        }
        if self.source_uri:
            hyperparameters |= {"sagemaker_program": self.entry_point, "sagemaker_submit_directory": self.source_uri}
        return {
            "TrainingJobName": training_job_name(job.id),
            "HyperParameters": hyperparameters,
            "AlgorithmSpecification": {"TrainingImage": self.image_uri, "TrainingInputMode": "File"},
            "RoleArn": self.role_arn,
            "InputDataConfig": channels,
            "OutputDataConfig": {"S3OutputPath": self.s3_uri(f"models/{job.tenant_id}/{job.id}/")},
            "ResourceConfig": {
                "InstanceType": self.instance_type,
                "InstanceCount": self.instance_count,
                "VolumeSizeInGB": self.volume_gb,
            },
            "StoppingCondition": {"MaxRuntimeInSeconds": self.max_runtime_s},
            "Tags": [{"Key": "textnlp:tenant", "Value": job.tenant_id}, {"Key": "textnlp:job", "Value": job.id}],
        }

    def start(self, job: FineTuneJob, training_key: str, validation_key: str | None) -> str:
        from botocore.exceptions import ClientError

        request = self.training_request(job, training_key, validation_key)
        try:
            self.client().create_training_job(**request)
        except ClientError as exc:
            if _code(exc) != "ResourceInUse":  # a repeated start: the job exists already
                raise training_error(exc) from None
        return str(request["TrainingJobName"])

    def status(self, job: FineTuneJob) -> TunerStatus:
        from botocore.exceptions import ClientError

        try:
            described = self.client().describe_training_job(TrainingJobName=training_job_name(job.id))
        except ClientError as exc:
            raise training_error(exc) from None
        return self.status_of(job, described)

    def status_of(self, job: FineTuneJob, described: DescribeTrainingJobResponseTypeDef) -> TunerStatus:
        """DescribeTrainingJob's answer in the gateway's terms."""
        primary, secondary = described["TrainingJobStatus"], described.get("SecondaryStatus", "")
        state = STATES.get(primary) or ("queued" if secondary in WAITING else "running")
        events = [
            f"{t['Status']}: {t['StatusMessage']}" if t.get("StatusMessage") else t["Status"]
            for t in described.get("SecondaryStatusTransitions", [])
        ]
        tokens = next(
            (int(m["Value"]) for m in described.get("FinalMetricDataList", []) if m.get("MetricName") in TOKEN_METRICS),
            None,
        )
        if state != "succeeded":
            return TunerStatus(state, error=described.get("FailureReason"), trained_tokens=tokens, events=events)
        route = {"type": "sagemaker", "endpoint_name": endpoint_name(job.id), "container": self.container}
        metadata: dict[str, Any] = {
            "artifact_uri": described.get("ModelArtifacts", {}).get("S3ModelArtifacts"),
            "training_job_name": described["TrainingJobName"],
            "deployed": False,  # the route names the endpoint a deploy step creates from the artefact
        }
        end = described.get("TrainingEndTime")
        if isinstance(end, datetime):
            metadata["trained_at"] = end.isoformat()
        return TunerStatus(state, route, None, tokens, events, metadata)

    def cancel(self, job: FineTuneJob) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client().stop_training_job(TrainingJobName=training_job_name(job.id))
        except ClientError as exc:
            if _code(exc) not in _GONE:  # already ended, or never started: nothing to stop
                raise training_error(exc) from None


def _channel(name: str, uri: str) -> dict[str, Any]:
    source = {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
    return {"ChannelName": name, "DataSource": {"S3DataSource": source}, "ContentType": "application/jsonlines"}


def _code(exc: ClientError) -> str:
    return str(exc.response.get("Error", {}).get("Code") or "")


def training_error(exc: ClientError) -> BackendError:
    """The gateway error for a failed SageMaker control-plane call."""
    code = _code(exc)
    message = str(exc.response.get("Error", {}).get("Message") or exc)[:500]
    status = exc.response.get("ResponseMetadata", {}).get("HTTPStatusCode") or 0
    if code in _THROTTLING or status == 429:
        return BackendError(f"SageMaker is throttling: {message}", status=429, retryable=True, code="backend_throttled")
    if code == "ResourceLimitExceeded":
        return BackendError(f"no SageMaker capacity for this job: {message}", status=503, code="training_capacity")
    if status >= 500:
        return BackendError(f"SageMaker failed ({code or status}): {message}", status=502, retryable=True)
    return BackendError(f"SageMaker refused the call ({code or status}): {message}", code="backend_misconfigured")
