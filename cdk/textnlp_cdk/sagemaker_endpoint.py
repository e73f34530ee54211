"""``SageMakerEndpoint``: an optional real-time GPU endpoint (TGI or LMI container) that the gateway calls."""

from __future__ import annotations

from dataclasses import dataclass

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sagemaker as sagemaker
from constructs import Construct

from textnlp_cdk.config import ENDPOINT_PREFIX, SageMakerSettings
from textnlp_cdk.nag import allow
from textnlp_cdk.storage import PREFIX_MODELS
from textnlp_cdk.training import DLC_ACCOUNT, pull_images, write_sagemaker_logs

# Pin another tag (or a private copy) with -c sagemaker_image_uri=... when these age.
DEFAULT_IMAGES = {
    "tgi": "huggingface-pytorch-tgi-inference:2.7.0-tgi3.3.6-gpu-py311-cu124-ubuntu22.04",
    "lmi": "djl-inference:0.35.0-lmi17.0.0-cu128",
}
VARIANT = "AllTraffic"


@dataclass(frozen=True)
class InstanceSize:
    instance_type: str
    gpus: int


SIZES = {
    "small": InstanceSize("ml.g5.xlarge", 1),
    "medium": InstanceSize("ml.g5.2xlarge", 1),
    "large": InstanceSize("ml.g5.12xlarge", 4),
    "xlarge": InstanceSize("ml.p4d.24xlarge", 8),
}


def container_environment(settings: SageMakerSettings, gpus: int) -> dict[str, str]:
    """What the container reads at start: the model (when not in model data) and how to shard it over GPUs."""
    env: dict[str, str] = {}
    if settings.hf_model_id and not settings.model_data_url:
        env["HF_MODEL_ID"] = settings.hf_model_id
    if settings.container == "tgi":
        env["SM_NUM_GPUS"] = str(gpus)
        env["MESSAGES_API_ENABLED"] = "true"
    else:
        env["OPTION_TENSOR_PARALLEL_DEGREE"] = str(gpus)
        env["OPTION_ROLLING_BATCH"] = "vllm"
    return env


def image_account(image_uri: str | None) -> str:
    """The account that owns the image's ECR repository (the AWS Deep Learning Containers by default)."""
    if image_uri is None:
        return DLC_ACCOUNT
    account = image_uri.split(".", 1)[0]
    return account if account.isdigit() and len(account) == 12 else Aws.ACCOUNT_ID


class SageMakerEndpoint(Construct):
    """Model -> endpoint config -> endpoint, run by a role that can pull the image and read models/ only."""

    def __init__(
        self, scope: Construct, construct_id: str, *, settings: SageMakerSettings, bucket: s3.IBucket, stage: str
    ) -> None:
        super().__init__(scope, construct_id)
        size = SIZES[settings.size]
        gpus = settings.num_gpus or size.gpus
        self.instance_type = size.instance_type
        self.variant_name = VARIANT
        self.endpoint_name = f"{ENDPOINT_PREFIX}{stage}-{settings.container}-{settings.size}"
        image = settings.image_uri or (
            f"{DLC_ACCOUNT}.dkr.ecr.{Aws.REGION}.{Aws.URL_SUFFIX}/{DEFAULT_IMAGES[settings.container]}"
        )
        self.role = iam.Role(
            self,
            "ExecutionRole",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="TextNLP SageMaker endpoint: pull the container image and the model artefacts",
        )
        models = bucket.arn_for_objects(f"{PREFIX_MODELS}*")
        allow(self.role, ["s3:GetObject"], [models], why="Model artefacts live under models/<model or job id>/.")
        allow(self.role, ["s3:ListBucket"], [bucket.bucket_arn])
        pull_images(self.role, image_account(settings.image_uri))
        write_sagemaker_logs(self.role, "Endpoints")

        model = sagemaker.CfnModel(
            self,
            "Model",
            execution_role_arn=self.role.role_arn,
            primary_container=sagemaker.CfnModel.ContainerDefinitionProperty(
                image=image,
                model_data_url=settings.model_data_url,
                environment=container_environment(settings, gpus),
            ),
        )
        model.node.add_dependency(self.role)
        # No KmsKeyId: g5 and p4d carry local NVMe storage, for which SageMaker rejects one (the hardware
        # encrypts that storage itself).
        config = sagemaker.CfnEndpointConfig(
            self,
            "Config",
            production_variants=[
                sagemaker.CfnEndpointConfig.ProductionVariantProperty(
                    variant_name=VARIANT,
                    model_name=model.attr_model_name,
                    initial_instance_count=1,
                    instance_type=size.instance_type,
                    container_startup_health_check_timeout_in_seconds=900,
                    model_data_download_timeout_in_seconds=1800,
                )
            ],
        )
        self.endpoint = sagemaker.CfnEndpoint(
            self, "Endpoint", endpoint_name=self.endpoint_name, endpoint_config_name=config.attr_endpoint_config_name
        )
