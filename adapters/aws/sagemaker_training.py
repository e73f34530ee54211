"""SageMakerTrainingTuner: the FineTuner port on SageMaker training jobs (a Hugging Face training image), and the
deploy step that serves the trained model from a SageMaker endpoint (a Hugging Face TGI image).

Only the boto3 ``sagemaker`` control-plane client is used (never the ``sagemaker`` SDK); boto3 is imported
and the client created on the first call that needs it, so nothing here weighs on a cold start, and the
request path of generate never touches it.
"""

from __future__ import annotations

import threading
from dataclasses import replace
from datetime import datetime
from typing import TYPE_CHECKING, Any

from adapters.aws.sagemaker_control_errors import GONE, error_code, exists_ok, is_missing, missing_ok, training_error

# Re-exported: the tests import the names from here.
from adapters.aws.sagemaker_names import resource_name as resource_name
from adapters.aws.sagemaker_names import training_job_name as training_job_name
from core.fine_tuning.job import FineTuneJob, TunerStatus

if TYPE_CHECKING:
    from mypy_boto3_sagemaker.client import SageMakerClient
    from mypy_boto3_sagemaker.type_defs import DescribeEndpointOutputTypeDef, DescribeTrainingJobResponseTypeDef

# While SageMaker finds and prepares instances the job waits, as OpenAI's ``queued`` does. ``Completed`` is not
# here: a trained model still has to be deployed, and the job runs on until its endpoint is in service.
WAITING = frozenset({"Starting", "Pending", "LaunchingMLInstances", "PreparingTrainingStack"})
STATES = {"Failed": "failed", "Stopped": "cancelled", "Deleting": "cancelled"}
TOKEN_METRICS = ("trained_tokens", "train_tokens")

#: The Hugging Face TGI inference Deep Learning Container (the CDK endpoint's default image, cdk/sagemaker_endpoint.py).
DEFAULT_INFERENCE_IMAGE = (
    "763104351884.dkr.ecr.{region}.amazonaws.com/"
    "huggingface-pytorch-tgi-inference:2.7.0-tgi3.3.6-gpu-py311-cu124-ubuntu22.04"
)
CONTAINER = "tgi"
VARIANT = "AllTraffic"
MODEL_DIR = "/opt/ml/model"  # where SageMaker unpacks ModelDataUrl; TGI loads the model from there
STARTUP_TIMEOUT_S = 900  # TGI loads and warms the weights before its health check answers
DOWNLOAD_TIMEOUT_S = 1800
#: Set on the training job by ``cancel`` before it deletes anything: a deploy step that ran meanwhile sees it.
CANCELLED_TAG = "textnlp:cancelled"
DEPLOY_FAILED = "the trained model could not be deployed"


class SageMakerTrainingTuner:
    """One SageMaker training job per fine-tune job, then the endpoint that serves its model; all named
    ``textnlp-<job id>``.

    Input channels are the uploaded files where the S3 BlobStore keeps them (``s3://bucket/<key_prefix>
    files/<tenant>/<file id>``); the model is written under ``s3://bucket/<key_prefix>models/<tenant>/<job id>/``.
    The image runs ``entry_point`` from ``source_uri`` (a ``sourcedir.tar.gz``, the Hugging Face training
    containers' convention) when given; otherwise the image's own entry point trains. Hyperparameters go as
    strings: ``model_id`` (the base model's ``hf_model_id``), ``n_epochs``, ``batch_size``,
    ``learning_rate_multiplier`` (``auto`` or a number), ``seed``. The artefact must hold the whole model
    (weights, config, tokenizer with its chat template), as TGI loads it from ``/opt/ml/model``.

    Deployment happens in ``status``: once training is ``Completed`` the first poll creates a Model (the TGI
    ``inference_image`` on the artefact, run as ``role_arn``), an EndpointConfig (one ``inference_instance_type``
    instance) and the Endpoint. Every create is idempotent, so polls from many containers at once are safe. The
    job stays ``running`` while the endpoint is created and succeeds when it is ``InService``.
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
        region: str | None = None,
        inference_image: str | None = None,
        inference_instance_type: str = "ml.g5.xlarge",
        inference_gpus: int = 1,
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
        self.region = region
        self.inference_image = inference_image
        self.inference_instance_type = inference_instance_type
        self.inference_gpus = inference_gpus
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

    # --- training -------------------------------------------------------------------------------------------

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
            "TrainingJobName": resource_name(job.id),
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
            if error_code(exc) != "ResourceInUse":  # a repeated start: the job exists already
                raise training_error(exc) from None
        return str(request["TrainingJobName"])

    def status(self, job: FineTuneJob) -> TunerStatus:
        """The training job's state; once it completed, the deployment's (started here on the first poll)."""
        from botocore.exceptions import ClientError

        try:
            described = self.client().describe_training_job(TrainingJobName=resource_name(job.id))
            training = self.status_of(job, described)
            if described["TrainingJobStatus"] != "Completed":
                return training
            return self.deployment_status(job, described, training)
        except ClientError as exc:
            raise training_error(exc) from None

    def status_of(self, job: FineTuneJob, described: DescribeTrainingJobResponseTypeDef) -> TunerStatus:
        """DescribeTrainingJob's answer in the gateway's terms (a completed job is still ``running``: it deploys)."""
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
        return TunerStatus(state, error=described.get("FailureReason"), trained_tokens=tokens, events=events)

    # --- deployment -----------------------------------------------------------------------------------------

    def deployment_status(
        self, job: FineTuneJob, described: DescribeTrainingJobResponseTypeDef, training: TunerStatus
    ) -> TunerStatus:
        """Where the trained model's endpoint is; creates it when it does not exist yet.

        ``events`` only ever grow (the service records them by position): the training history, then
        "Deploying ...", then "... is in service" on success.
        """
        name = resource_name(job.id)
        deploying = replace(
            training, state="running", events=[*training.events, f"Deploying the model to endpoint {name}"]
        )
        endpoint = self._describe_endpoint(name)
        if endpoint is None:
            return self._deploy(name, described, deploying)
        state = endpoint["EndpointStatus"]
        if state == "InService":
            events = [*deploying.events, f"Endpoint {name} is in service"]
            return replace(
                deploying,
                state="succeeded",
                fine_tuned_model_route=self.route(name),
                events=events,
                metadata=self.model_metadata(described, name),
            )
        if state == "Failed":
            reason = endpoint.get("FailureReason") or "no reason given"
            return replace(deploying, state="failed", error=f"{DEPLOY_FAILED} (endpoint {name}): {reason}")
        if state == "Deleting":  # cancel deleted it, or an operator did: nothing will serve this job's model
            return replace(deploying, state="cancelled")
        return deploying  # Creating, Updating, SystemUpdating, RollingBack, OutOfService

    def route(self, name: str) -> dict[str, Any]:
        """The registry route of the deployed model, as ``SageMakerRoute.parse`` reads it.

        ``messages``: TGI applies the fine-tuned model's own chat template (from its tokenizer) to chat prompts
        and reports usage; text prompts go as ``inputs``.
        """
        return {
            "type": "sagemaker",
            "endpoint_name": name,
            "container": CONTAINER,
            "variant": VARIANT,
            "schema": "messages",
        }

    def model_metadata(self, described: DescribeTrainingJobResponseTypeDef, name: str) -> dict[str, Any]:
        metadata: dict[str, Any] = {
            "artifact_uri": described.get("ModelArtifacts", {}).get("S3ModelArtifacts"),
            "training_job_name": described["TrainingJobName"],
            "sagemaker_model": name,
            "deployed": True,
        }
        end = described.get("TrainingEndTime")
        if isinstance(end, datetime):
            metadata["trained_at"] = end.isoformat()
        return metadata

    def model_request(self, name: str, artifact: str) -> dict[str, Any]:
        """CreateModel: the TGI image on the training artefact, run as the same role as the training job."""
        image = self.inference_image or DEFAULT_INFERENCE_IMAGE.format(region=self.client().meta.region_name)
        environment = {
            "HF_MODEL_ID": MODEL_DIR,
            "SM_NUM_GPUS": str(self.inference_gpus),
            "MESSAGES_API_ENABLED": "true",
        }
        return {
            "ModelName": name,
            "ExecutionRoleArn": self.role_arn,
            "PrimaryContainer": {"Image": image, "ModelDataUrl": artifact, "Environment": environment},
        }

    def endpoint_config_request(self, name: str) -> dict[str, Any]:
        """CreateEndpointConfig: one GPU instance (TGI needs one; serverless endpoints have no GPUs)."""
        variant = {
            "VariantName": VARIANT,
            "ModelName": name,
            "InstanceType": self.inference_instance_type,
            "InitialInstanceCount": 1,
            "ContainerStartupHealthCheckTimeoutInSeconds": STARTUP_TIMEOUT_S,
            "ModelDataDownloadTimeoutInSeconds": DOWNLOAD_TIMEOUT_S,
        }
        return {"EndpointConfigName": name, "ProductionVariants": [variant]}

    def _describe_endpoint(self, name: str) -> DescribeEndpointOutputTypeDef | None:
        from botocore.exceptions import ClientError

        try:
            return self.client().describe_endpoint(EndpointName=name)
        except ClientError as exc:
            if is_missing(exc):
                return None
            raise

    def _deploy(self, name: str, described: DescribeTrainingJobResponseTypeDef, deploying: TunerStatus) -> TunerStatus:
        """Create the model, config and endpoint, unless the job was cancelled; a cancel that ran meanwhile
        (its tag appears after the creates) gets what was just created deleted here."""
        from botocore.exceptions import ClientError

        arn = described["TrainingJobArn"]
        if self._cancel_requested(arn):
            return replace(deploying, state="cancelled")
        artifact = described.get("ModelArtifacts", {}).get("S3ModelArtifacts")
        if not artifact:
            return replace(deploying, state="failed", error=f"{DEPLOY_FAILED}: the training job reported no artefact")
        try:
            self._create(name, artifact)
        except ClientError as exc:
            error = training_error(exc)
            if is_missing(exc) or error.retryable:
                raise  # a model or config not visible yet, throttling, a 5xx: the next poll tries again
            return replace(deploying, state="failed", error=f"{DEPLOY_FAILED}: {error.message}")
        if self._cancel_requested(arn):
            self._undeploy(name)
            return replace(deploying, state="cancelled")
        return deploying

    def _create(self, name: str, artifact: str) -> None:
        client = self.client()
        exists_ok(lambda: client.create_model(**self.model_request(name, artifact)))
        exists_ok(lambda: client.create_endpoint_config(**self.endpoint_config_request(name)))
        exists_ok(lambda: client.create_endpoint(EndpointName=name, EndpointConfigName=name))

    def _undeploy(self, name: str) -> None:
        """Delete the endpoint (which stops its creation and its instances), then its config and model."""
        client = self.client()
        missing_ok(lambda: client.delete_endpoint(EndpointName=name))
        missing_ok(lambda: client.delete_endpoint_config(EndpointConfigName=name))
        missing_ok(lambda: client.delete_model(ModelName=name))

    def _cancel_requested(self, training_job_arn: str) -> bool:
        pages = self.client().get_paginator("list_tags").paginate(ResourceArn=training_job_arn)
        return any(tag["Key"] == CANCELLED_TAG for page in pages for tag in page.get("Tags", []))

    # --- cancel ---------------------------------------------------------------------------------------------

    def cancel(self, job: FineTuneJob) -> None:
        """Stop the training and delete whatever the deploy step created (endpoint, config, model).

        The job is tagged cancelled first. A deploy step that creates the endpoint concurrently checks that tag
        after its creates: either it sees the tag and deletes what it made, or it created everything before the
        tag was set, and the deletes here remove it. Either way no GPU endpoint outlives a cancelled job.
        """
        from botocore.exceptions import ClientError

        name = resource_name(job.id)
        client = self.client()
        try:
            described = client.describe_training_job(TrainingJobName=name)
        except ClientError as exc:
            if is_missing(exc):
                return  # never started: nothing to stop
            raise training_error(exc) from None
        if described["TrainingJobStatus"] in ("Failed", "Stopped"):
            return  # ended without a model: nothing was or will be deployed
        try:
            client.add_tags(ResourceArn=described["TrainingJobArn"], Tags=[{"Key": CANCELLED_TAG, "Value": "true"}])
            if described["TrainingJobStatus"] == "InProgress":
                self._stop(name)
            self._undeploy(name)
        except ClientError as exc:
            raise training_error(exc) from None

    def _stop(self, name: str) -> None:
        from botocore.exceptions import ClientError

        try:
            self.client().stop_training_job(TrainingJobName=name)
        except ClientError as exc:
            if error_code(exc) not in GONE:  # ended meanwhile (the deletes that follow cover a completed job)
                raise


def _channel(name: str, uri: str) -> dict[str, Any]:
    source = {"S3DataType": "S3Prefix", "S3Uri": uri, "S3DataDistributionType": "FullyReplicated"}
    return {"ChannelName": name, "DataSource": {"S3DataSource": source}, "ContentType": "application/jsonlines"}
