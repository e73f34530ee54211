"""Who may do what: the least-privilege IAM statements of the api and batch functions, action by action."""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass

from aws_cdk import Aws
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_iam as iam
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_secretsmanager as secretsmanager
from aws_cdk import aws_sqs as sqs

from textnlp_cdk.config import ENDPOINT_PREFIX, TRAINING_JOB_PREFIX
from textnlp_cdk.nag import allow
from textnlp_cdk.storage import GSI1, PREFIX_BATCH_INPUT, PREFIX_BATCH_OUTPUT, PREFIX_FILES

TABLE_ACTIONS = (
    "dynamodb:GetItem",
    "dynamodb:PutItem",
    "dynamodb:UpdateItem",
    "dynamodb:DeleteItem",
    "dynamodb:Query",
)
IDEMPOTENCY_ACTIONS = ("dynamodb:GetItem", "dynamodb:PutItem", "dynamodb:UpdateItem", "dynamodb:DeleteItem")
INVOKE_ACTIONS = ("sagemaker:InvokeEndpoint", "sagemaker:InvokeEndpointWithResponseStream")
# AddTags/ListTags: a cancel tags the training job, which the deploy step reads (adapters/aws/sagemaker_training.py).
TRAINING_ACTIONS = (
    "sagemaker:CreateTrainingJob",
    "sagemaker:DescribeTrainingJob",
    "sagemaker:StopTrainingJob",
    "sagemaker:AddTags",
    "sagemaker:ListTags",
)
# The deploy step of a fine-tune job: model, endpoint config and endpoint, by the resource type each action is
# authorised on (CreateEndpoint on both the endpoint and the config it uses).
DEPLOY_ACTIONS = {
    "model": ("sagemaker:CreateModel", "sagemaker:DeleteModel"),
    "endpoint-config": ("sagemaker:CreateEndpointConfig", "sagemaker:DeleteEndpointConfig", "sagemaker:CreateEndpoint"),
    "endpoint": ("sagemaker:CreateEndpoint", "sagemaker:DescribeEndpoint", "sagemaker:DeleteEndpoint"),
}
# A fine-tune job's resources are named textnlp-<job id>, and job ids start with ftjob-: the functions can create
# and delete those, never the stack's own endpoint (textnlp-<stage>-...) or one an operator registered.
FINE_TUNED_PREFIX = f"{TRAINING_JOB_PREFIX}ftjob-"

OBJECTS_WHY = "Objects under one prefix of the gateway bucket; the keys are per tenant and per file."
ENDPOINT_WHY = "Every endpoint of this deployment is named textnlp-*; registered models are added at run time."
TRAINING_WHY = "Fine-tune jobs are named textnlp-<job id> at run time; only that prefix is allowed."
DEPLOY_WHY = "A fine-tune job's model, config and endpoint are named textnlp-ftjob-<id> at run time; that prefix only."


@dataclass(frozen=True)
class Resources:
    """What the functions touch, built by the stack."""

    table: dynamodb.ITable
    idempotency_table: dynamodb.ITable
    bucket: s3.IBucket
    queue: sqs.IQueue
    signing_keys: secretsmanager.ISecret
    admin_key: secretsmanager.ISecret
    sagemaker_role: iam.IRole
    endpoint_names: Sequence[str]


def sagemaker_arn(resource_type: str, name: str) -> str:
    return f"arn:{Aws.PARTITION}:sagemaker:{Aws.REGION}:{Aws.ACCOUNT_ID}:{resource_type}/{name}"


def endpoint_arns(names: Sequence[str]) -> list[str]:
    """SageMaker writes endpoint names in lower case in their ARNs."""
    if not names:
        return [sagemaker_arn("endpoint", f"{ENDPOINT_PREFIX}*")]
    return [sagemaker_arn("endpoint", name.lower()) for name in names]


def invoke_arns(names: Sequence[str]) -> list[str]:
    """The endpoints the functions call: the named ones (else every textnlp-* one) and the fine-tuned models'."""
    arns = endpoint_arns(names)
    if names:  # textnlp-* covers them otherwise
        arns.append(sagemaker_arn("endpoint", f"{FINE_TUNED_PREFIX}*"))
    return arns


def _table(role: iam.IRole, table: dynamodb.ITable, actions: Sequence[str], *, index: bool) -> None:
    resources = [table.table_arn, f"{table.table_arn}/index/{GSI1}"] if index else [table.table_arn]
    allow(role, actions, resources)


def _objects(role: iam.IRole, bucket: s3.IBucket, actions: Sequence[str], prefixes: Sequence[str]) -> None:
    allow(role, actions, [bucket.arn_for_objects(f"{p}*") for p in prefixes], why=OBJECTS_WHY)


def _common(role: iam.IRole, res: Resources) -> None:
    _table(role, res.table, TABLE_ACTIONS, index=True)
    # Listing object keys only (no content): without it a missing key reads as 403 instead of 404.
    allow(role, ["s3:ListBucket"], [res.bucket.bucket_arn])
    allow(role, INVOKE_ACTIONS, invoke_arns(res.endpoint_names), why=ENDPOINT_WHY)
    allow(role, ["sqs:SendMessage"], [res.queue.queue_arn])


def grant_api(role: iam.IRole, res: Resources) -> None:
    """The HTTP API: keys, tenants, limits, usage, files, batches (enqueue), fine-tune jobs, signing keys."""
    _common(role, res)
    _objects(role, res.bucket, ["s3:GetObject", "s3:PutObject", "s3:DeleteObject"], [PREFIX_FILES])
    _objects(role, res.bucket, ["s3:GetObject"], [PREFIX_BATCH_INPUT, PREFIX_BATCH_OUTPUT])
    _fine_tuning(role, res.sagemaker_role)
    allow(role, ["secretsmanager:GetSecretValue"], [res.signing_keys.secret_arn, res.admin_key.secret_arn])
    allow(role, ["secretsmanager:PutSecretValue"], [res.signing_keys.secret_arn])


def _fine_tuning(role: iam.IRole, sagemaker_role: iam.IRole) -> None:
    """The tuner: training jobs, then the model, config and endpoint that serve each job's model.

    One statement per resource type; the role passed to SageMaker (CreateTrainingJob, CreateModel) is the
    training role, and only to SageMaker.
    """
    allow(role, TRAINING_ACTIONS, [sagemaker_arn("training-job", f"{TRAINING_JOB_PREFIX}*")], why=TRAINING_WHY)
    for resource_type, actions in DEPLOY_ACTIONS.items():
        allow(role, actions, [sagemaker_arn(resource_type, f"{FINE_TUNED_PREFIX}*")], why=DEPLOY_WHY)
    allow(
        role,
        ["iam:PassRole"],
        [sagemaker_role.role_arn],
        conditions={"StringEquals": {"iam:PassedToService": "sagemaker.amazonaws.com"}},
    )


def grant_batch(role: iam.IRole, res: Resources) -> None:
    """The batch consumer: read the input, write output and error files, resume (re-enqueue) long batches."""
    _common(role, res)
    _table(role, res.idempotency_table, IDEMPOTENCY_ACTIONS, index=False)
    _objects(role, res.bucket, ["s3:GetObject", "s3:GetObjectVersion"], [PREFIX_BATCH_INPUT, PREFIX_FILES])
    _objects(role, res.bucket, ["s3:PutObject", "s3:AbortMultipartUpload"], [PREFIX_BATCH_OUTPUT, PREFIX_FILES])
