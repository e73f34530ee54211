"""``TextNlpStack``: wires storage, secrets, the two functions, the HTTP API, batch, SageMaker and observability."""

from __future__ import annotations

from typing import Any

from aws_cdk import CfnOutput, Duration, Stack, Tags
from constructs import Construct

from textnlp_cdk.access import Resources, grant_api, grant_batch
from textnlp_cdk.api import HttpApi
from textnlp_cdk.batch import BATCH_TIMEOUT, BatchQueue
from textnlp_cdk.compute import PythonFunction, code_asset, dependency_layer
from textnlp_cdk.config import StackConfig
from textnlp_cdk.credentials import Credentials
from textnlp_cdk.observability import NAMESPACE, SERVICE, Observability
from textnlp_cdk.sagemaker_endpoint import SageMakerEndpoint
from textnlp_cdk.storage import Storage
from textnlp_cdk.training import TrainingRole

API_TIMEOUT = Duration.seconds(30)


class TextNlpStack(Stack):
    def __init__(self, scope: Construct, construct_id: str, **kwargs: Any) -> None:
        super().__init__(scope, construct_id, **kwargs)
        config = StackConfig.from_node(self.node)
        Tags.of(self).add("project", "textnlp")
        Tags.of(self).add("stage", config.stage)

        storage = Storage(self, "Storage", config=config)
        credentials = Credentials(self, "Credentials", config=config)
        batch = BatchQueue(self, "Batch", config=config)
        batch.notify_from(storage.bucket, config.stage)
        training = TrainingRole(self, "Training", bucket=storage.bucket)
        endpoint = (
            SageMakerEndpoint(self, "SageMaker", settings=config.sagemaker, bucket=storage.bucket, stage=config.stage)
            if config.sagemaker
            else None
        )
        endpoint_names = tuple(config.endpoint_names)
        if endpoint is not None and endpoint_names:
            endpoint_names += (endpoint.endpoint_name,)

        shared = {
            "TEXTNLP_TABLE": storage.table.table_name,
            "TEXTNLP_BUCKET": storage.bucket.bucket_name,
            "TEXTNLP_BATCH_QUEUE_URL": batch.queue.queue_url,
            "POWERTOOLS_SERVICE_NAME": SERVICE,
            "POWERTOOLS_METRICS_NAMESPACE": NAMESPACE,
            "TEXTNLP_STAGE": config.stage,
        }
        if endpoint is not None:
            shared["TEXTNLP_SAGEMAKER_ENDPOINT"] = endpoint.endpoint_name
        api_env = {
            **shared,
            "TEXTNLP_SIGNING_KEYS_SECRET_ARN": credentials.signing_keys.secret_arn,
            "TEXTNLP_ADMIN_KEY_SECRET_ARN": credentials.admin_key.secret_arn,
            "TEXTNLP_SAGEMAKER_ROLE_ARN": training.role.role_arn,
        }
        batch_env = {**shared, "TEXTNLP_IDEMPOTENCY_TABLE": storage.idempotency_table.table_name}

        code = code_asset()
        layer = dependency_layer(self, "Dependencies", skip_build=config.skip_layer_build)
        api_fn = PythonFunction(
            self,
            "Api",
            config=config,
            handler="functions.aws.api.handler",
            memory_mb=1024,
            timeout=API_TIMEOUT,
            code=code,
            layer=layer,
            environment=api_env,
            description="TextNLP HTTP API (API Gateway payload 2.0, $default route)",
        )
        batch_fn = PythonFunction(
            self,
            "BatchWorker",
            config=config,
            handler="functions.aws.batch.handler",
            memory_mb=2048,
            timeout=BATCH_TIMEOUT,
            code=code,
            layer=layer,
            environment=batch_env,
            description="TextNLP batch worker (SQS: S3 uploads under batch-input/ and API batch jobs)",
        )
        resources = Resources(
            table=storage.table,
            idempotency_table=storage.idempotency_table,
            bucket=storage.bucket,
            queue=batch.queue,
            signing_keys=credentials.signing_keys,
            admin_key=credentials.admin_key,
            sagemaker_role=training.role,
            endpoint_names=endpoint_names,
        )
        grant_api(api_fn.role, resources)
        grant_batch(batch_fn.role, resources)
        batch.consume_with(batch_fn.function, config)

        http = HttpApi(self, "Http", config=config, handler=api_fn.function)
        Observability(self, "Observability", config=config, api=http.api, dead_letters=batch.dlq, endpoint=endpoint)

        CfnOutput(self, "ApiUrl", value=http.url, description="Base URL of the TextNLP API (append v1/...)")
        CfnOutput(self, "BucketName", value=storage.bucket.bucket_name)
        CfnOutput(self, "AdminKeySecretArn", value=credentials.admin_key.secret_arn)
        if endpoint is not None:
            CfnOutput(self, "SageMakerEndpointName", value=endpoint.endpoint_name)
