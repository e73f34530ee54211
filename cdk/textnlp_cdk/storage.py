"""State: the single DynamoDB table, the idempotency table and the bucket (with its access-log bucket)."""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_dynamodb as dynamodb
from aws_cdk import aws_s3 as s3
from constructs import Construct

from textnlp_cdk.config import StackConfig

GSI1 = "gsi1"
PREFIX_BATCH_INPUT = "batch-input/"
PREFIX_BATCH_OUTPUT = "batch-output/"
PREFIX_FILES = "files/"
PREFIX_MODELS = "models/"


def bucket_name(stage: str) -> str:
    """A deterministic name, so the queue policy can name the bucket without referencing it (no cycle)."""
    return f"textnlp-{stage}-{Aws.ACCOUNT_ID}-{Aws.REGION}"


class Storage(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, config: StackConfig) -> None:
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.RETAIN if config.is_prod else RemovalPolicy.DESTROY
        pitr = dynamodb.PointInTimeRecoverySpecification(point_in_time_recovery_enabled=True)

        self.table = dynamodb.Table(
            self,
            "Table",
            partition_key=dynamodb.Attribute(name="pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="sk", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            time_to_live_attribute="expires_at",
            point_in_time_recovery_specification=pitr,
            deletion_protection=config.is_prod,
            removal_policy=removal,
        )
        self.table.add_global_secondary_index(
            index_name=GSI1,
            partition_key=dynamodb.Attribute(name="gsi1pk", type=dynamodb.AttributeType.STRING),
            sort_key=dynamodb.Attribute(name="gsi1sk", type=dynamodb.AttributeType.STRING),
            projection_type=dynamodb.ProjectionType.ALL,
        )
        self.idempotency_table = dynamodb.Table(
            self,
            "IdempotencyTable",
            partition_key=dynamodb.Attribute(name="id", type=dynamodb.AttributeType.STRING),
            billing_mode=dynamodb.BillingMode.PAY_PER_REQUEST,
            time_to_live_attribute="expiration",
            point_in_time_recovery_specification=pitr,
            removal_policy=RemovalPolicy.DESTROY,
        )

        self.access_logs = s3.Bucket(
            self,
            "AccessLogs",
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            lifecycle_rules=[s3.LifecycleRule(id="expire-access-logs", expiration=Duration.days(90))],
            removal_policy=RemovalPolicy.RETAIN,
        )

        self.bucket = s3.Bucket(
            self,
            "Bucket",
            bucket_name=bucket_name(config.stage),
            encryption=s3.BucketEncryption.S3_MANAGED,
            block_public_access=s3.BlockPublicAccess.BLOCK_ALL,
            enforce_ssl=True,
            versioned=True,
            object_ownership=s3.ObjectOwnership.BUCKET_OWNER_ENFORCED,
            server_access_logs_bucket=self.access_logs,
            server_access_logs_prefix="textnlp/",
            lifecycle_rules=lifecycle_rules(config),
            removal_policy=RemovalPolicy.RETAIN,
        )


def lifecycle_rules(config: StackConfig) -> list[s3.LifecycleRule]:
    batch_days = Duration.days(config.batch_retention_days)
    return [
        s3.LifecycleRule(id="expire-batch-input", prefix=PREFIX_BATCH_INPUT, expiration=batch_days),
        s3.LifecycleRule(id="expire-batch-output", prefix=PREFIX_BATCH_OUTPUT, expiration=batch_days),
        s3.LifecycleRule(
            id="models-to-infrequent-access",
            prefix=PREFIX_MODELS,
            transitions=[
                s3.Transition(
                    storage_class=s3.StorageClass.INFREQUENT_ACCESS,
                    transition_after=Duration.days(config.models_ia_days),
                )
            ],
        ),
        s3.LifecycleRule(
            id="expire-noncurrent-versions",
            noncurrent_version_expiration=Duration.days(config.noncurrent_version_days),
            expired_object_delete_marker=True,
        ),
        s3.LifecycleRule(id="abort-incomplete-uploads", abort_incomplete_multipart_upload_after=Duration.days(7)),
    ]
