"""The role SageMaker runs fine-tune jobs as (TEXTNLP_SAGEMAKER_ROLE_ARN): the training jobs (read training files,
write models) and the endpoints that serve their models (read models, pull the TGI image)."""

from __future__ import annotations

from aws_cdk import Aws
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from constructs import Construct

from textnlp_cdk.nag import allow
from textnlp_cdk.storage import PREFIX_FILES, PREFIX_MODELS

# AWS Deep Learning Containers (training and inference images) are pulled from this account.
DLC_ACCOUNT = "763104351884"


def pull_images(role: iam.IRole, image_account: str) -> None:
    """ECR pull from one account's repositories in this region."""
    repositories = f"arn:{Aws.PARTITION}:ecr:{Aws.REGION}:{image_account}:repository/*"
    allow(
        role,
        ["ecr:BatchGetImage", "ecr:GetDownloadUrlForLayer", "ecr:BatchCheckLayerAvailability"],
        [repositories],
        why="The image repositories of one account (the AWS Deep Learning Containers by default).",
    )
    allow(role, ["ecr:GetAuthorizationToken"], ["*"], why="ecr:GetAuthorizationToken supports no resource ARN.")


def write_sagemaker_logs(role: iam.IRole, *kinds: str) -> None:
    """Logs and metrics of SageMaker jobs or endpoints (``kinds``: TrainingJobs, Endpoints)."""
    paths = [f"/aws/sagemaker/{kind}" for kind in kinds]
    groups = [f"arn:{Aws.PARTITION}:logs:{Aws.REGION}:{Aws.ACCOUNT_ID}:log-group:{path}*" for path in paths]
    allow(
        role,
        ["logs:CreateLogGroup", "logs:CreateLogStream", "logs:PutLogEvents", "logs:DescribeLogStreams"],
        groups,
        why=f"SageMaker names the {' and '.join(paths)} log streams after the job or endpoint at run time.",
    )
    allow(
        role,
        ["cloudwatch:PutMetricData"],
        ["*"],
        why="cloudwatch:PutMetricData supports no resource ARN; a condition limits it to SageMaker namespaces.",
        conditions={"StringLike": {"cloudwatch:namespace": ["/aws/sagemaker/*", "AWS/SageMaker"]}},
    )


class TrainingRole(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, bucket: s3.IBucket) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("sagemaker.amazonaws.com"),
            description="TextNLP fine-tune jobs: read training files, write model artefacts, serve the models",
        )
        why = "Training input is any uploaded file of the tenant; output goes under models/<job id>/."
        allow(self.role, ["s3:GetObject"], [bucket.arn_for_objects(f"{PREFIX_FILES}*")], why=why)
        allow(self.role, ["s3:GetObject", "s3:PutObject"], [bucket.arn_for_objects(f"{PREFIX_MODELS}*")], why=why)
        allow(self.role, ["s3:ListBucket"], [bucket.bucket_arn])
        pull_images(self.role, DLC_ACCOUNT)
        # The tuner's deploy step runs the fine-tuned models' endpoints as this role too (CreateModel).
        write_sagemaker_logs(self.role, "TrainingJobs", "Endpoints")
