"""Bucket-upload batches: S3 ObjectCreated (batch-input/*.jsonl) -> SQS (with a DLQ) -> the batch function."""

from __future__ import annotations

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_lambda_event_sources as sources
from aws_cdk import aws_s3 as s3
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from textnlp_cdk.config import StackConfig
from textnlp_cdk.storage import PREFIX_BATCH_INPUT, bucket_name

BATCH_TIMEOUT = Duration.minutes(15)
# AWS advises a visibility timeout of at least six times the function timeout for SQS event sources.
VISIBILITY_TIMEOUT = Duration.seconds(6 * 900)
MAX_RECEIVE_COUNT = 3
INPUT_SUFFIX = ".jsonl"


class BatchQueue(Construct):
    """The queue and its dead-letter queue; the api enqueues job messages here too."""

    def __init__(self, scope: Construct, construct_id: str, *, config: StackConfig) -> None:
        super().__init__(scope, construct_id)
        removal = RemovalPolicy.RETAIN if config.is_prod else RemovalPolicy.DESTROY
        self.dlq = sqs.Queue(
            self,
            "DeadLetters",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            retention_period=Duration.days(14),
            removal_policy=removal,
        )
        self.queue = sqs.Queue(
            self,
            "Queue",
            encryption=sqs.QueueEncryption.SQS_MANAGED,
            enforce_ssl=True,
            visibility_timeout=VISIBILITY_TIMEOUT,
            retention_period=Duration.days(4),
            dead_letter_queue=sqs.DeadLetterQueue(queue=self.dlq, max_receive_count=MAX_RECEIVE_COUNT),
            removal_policy=removal,
        )

    def notify_from(self, bucket: s3.Bucket, stage: str) -> None:
        """S3 sends ObjectCreated for batch-input/*.jsonl straight to the queue (no custom resource).

        The queue policy names the bucket by its deterministic name rather than referencing it, and the
        bucket waits for the policy: S3 checks that it may send when the notification is configured.
        """
        source_arn = f"arn:{Aws.PARTITION}:s3:::{bucket_name(stage)}"
        self.queue.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[iam.ServicePrincipal("s3.amazonaws.com")],
                actions=["sqs:SendMessage"],
                resources=[self.queue.queue_arn],
                conditions={
                    "ArnEquals": {"aws:SourceArn": source_arn},
                    "StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID},
                },
            )
        )
        cfn_bucket = bucket.node.default_child
        assert isinstance(cfn_bucket, s3.CfnBucket)
        cfn_bucket.notification_configuration = s3.CfnBucket.NotificationConfigurationProperty(
            queue_configurations=[
                s3.CfnBucket.QueueConfigurationProperty(
                    event="s3:ObjectCreated:*",
                    queue=self.queue.queue_arn,
                    filter=s3.CfnBucket.NotificationFilterProperty(
                        s3_key=s3.CfnBucket.S3KeyFilterProperty(
                            rules=[
                                s3.CfnBucket.FilterRuleProperty(name="prefix", value=PREFIX_BATCH_INPUT),
                                s3.CfnBucket.FilterRuleProperty(name="suffix", value=INPUT_SUFFIX),
                            ]
                        )
                    ),
                )
            ]
        )
        policy = self.queue.node.try_find_child("Policy")
        assert policy is not None
        cfn_bucket.node.add_dependency(policy)

    def consume_with(self, function: lambda_.Function, config: StackConfig) -> None:
        function.add_event_source(
            sources.SqsEventSource(
                self.queue,
                batch_size=config.batch_size,
                max_concurrency=config.batch_max_concurrency,
                report_batch_item_failures=True,
            )
        )
