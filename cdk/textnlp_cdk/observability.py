"""The dashboard (Powertools EMF metrics, API Gateway, SageMaker) and the alarms, all notifying one SNS topic."""

from __future__ import annotations

from aws_cdk import Aws, Duration
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_cloudwatch as cw
from aws_cdk import aws_cloudwatch_actions as cw_actions
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_sns as sns
from aws_cdk import aws_sns_subscriptions as subscriptions
from aws_cdk import aws_sqs as sqs
from constructs import Construct

from textnlp_cdk.config import StackConfig
from textnlp_cdk.sagemaker_endpoint import SageMakerEndpoint

NAMESPACE = "TextNLP"
SERVICE = "textnlp"
# Metric names as core emits them (core/app.py, metering.py, cache.py, limits.py); the EMF adapter keeps them.
TOKENS = "tokens_generated_total"
LATENCY = "request_latency_seconds"
REQUESTS = "requests_total"
CACHE_HITS = "cache_hits_total"
CACHE_MISSES = "cache_misses_total"
REFUSALS = "limit_refusals_total"
NOT_SUCCESS = "status != '200' AND status != '201' AND status != '204'"
MINUTE = Duration.minutes(1)


def search(metric: str, stat: str, namespace: str = NAMESPACE) -> str:
    """Every series of one metric, whatever its dimensions (service, model, tenant, status, route)."""
    return f"SEARCH('Namespace=\"{namespace}\" MetricName=\"{metric}\"', '{stat}', 60)"


def insights(metric: str, where: str = "", group_by: str = "") -> cw.MathExpression:
    """A CloudWatch Metrics Insights query (not SQL): the sum over all series, optionally grouped."""
    query = f"SELECT SUM({metric}) FROM {NAMESPACE}"  # noqa: S608
    query += f" WHERE {where}" if where else ""
    query += f" GROUP BY {group_by}" if group_by else ""
    return cw.MathExpression(expression=query, period=MINUTE, label=metric)


class Observability(Construct):
    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StackConfig,
        api: apigwv2.HttpApi,
        dead_letters: sqs.IQueue,
        endpoint: SageMakerEndpoint | None,
    ) -> None:
        super().__init__(scope, construct_id)
        self.topic = self._topic(config)
        action = cw_actions.SnsAction(self.topic)
        self.alarms = [*self._api_alarms(config, api), self._dlq_alarm(dead_letters)]
        if endpoint is not None:
            self.alarms += self._endpoint_alarms(config, endpoint)
        for alarm in self.alarms:
            alarm.add_alarm_action(action)
            alarm.add_ok_action(action)
        self.dashboard = cw.Dashboard(self, "Dashboard", dashboard_name=f"TextNLP-{config.stage}")
        self.dashboard.add_widgets(*gateway_widgets(api))
        self.dashboard.add_widgets(*sagemaker_widgets())
        self.dashboard.add_widgets(cw.AlarmStatusWidget(title="Alarms", alarms=self.alarms, width=24))

    def _topic(self, config: StackConfig) -> sns.Topic:
        # A customer-managed key: CloudWatch cannot publish to a topic under the AWS-managed SNS key.
        key = kms.Key(self, "AlarmKey", enable_key_rotation=True, description="TextNLP alarm topic encryption")
        cloudwatch = iam.ServicePrincipal("cloudwatch.amazonaws.com")
        same_account = {"StringEquals": {"aws:SourceAccount": Aws.ACCOUNT_ID}}
        # The key policy the SNS guide gives for CloudWatch alarms publishing to an encrypted topic.
        key.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[cloudwatch],
                actions=["kms:Decrypt", "kms:GenerateDataKey*"],
                resources=["*"],
                conditions=same_account,
            )
        )
        topic = sns.Topic(self, "Alarms", display_name="TextNLP alarms", master_key=key, enforce_ssl=True)
        topic.add_to_resource_policy(
            iam.PolicyStatement(
                principals=[cloudwatch],
                actions=["sns:Publish"],
                resources=[topic.topic_arn],
                conditions=same_account,
            )
        )
        if config.alarm_email:
            topic.add_subscription(subscriptions.EmailSubscription(config.alarm_email))
        return topic

    def _api_alarms(self, config: StackConfig, api: apigwv2.HttpApi) -> list[cw.Alarm]:
        # API Gateway's own metrics: they also count what never reached the code (timeouts, crashes, throttles).
        error_rate = cw.MathExpression(
            expression="IF(requests > 0, 100 * errors / requests, 0)",
            using_metrics={
                "errors": api.metric_server_error(period=MINUTE, statistic="Sum"),
                "requests": api.metric_count(period=MINUTE, statistic="Sum"),
            },
            period=MINUTE,
            label="5xx error rate (%)",
        )
        return [
            error_rate.create_alarm(
                self,
                "ErrorRate",
                alarm_description=f"More than {config.alarm_error_rate_percent}% of requests answered 5xx",
                threshold=config.alarm_error_rate_percent,
                evaluation_periods=5,
                datapoints_to_alarm=3,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
            api.metric_latency(period=MINUTE, statistic="p99").create_alarm(
                self,
                "LatencyP99",
                alarm_description=f"p99 request latency above {config.alarm_p99_latency_ms} ms",
                threshold=config.alarm_p99_latency_ms,
                evaluation_periods=5,
                datapoints_to_alarm=3,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        ]

    def _dlq_alarm(self, dead_letters: sqs.IQueue) -> cw.Alarm:
        return dead_letters.metric_approximate_number_of_messages_visible(
            period=MINUTE, statistic="Maximum"
        ).create_alarm(
            self,
            "DeadLetters",
            alarm_description="Batch messages failed three times and wait in the dead-letter queue",
            threshold=0,
            evaluation_periods=1,
            comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
            treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
        )

    def _endpoint_alarms(self, config: StackConfig, endpoint: SageMakerEndpoint) -> list[cw.Alarm]:
        dims = {"EndpointName": endpoint.endpoint_name, "VariantName": endpoint.variant_name}

        def metric(name: str, statistic: str) -> cw.Metric:
            return cw.Metric(
                namespace="AWS/SageMaker", metric_name=name, dimensions_map=dims, statistic=statistic, period=MINUTE
            )

        return [
            metric("Invocation5XXErrors", "Sum").create_alarm(
                self,
                "Endpoint5xx",
                alarm_description=f"{endpoint.endpoint_name} answered 5xx",
                threshold=0,
                evaluation_periods=3,
                datapoints_to_alarm=2,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
            metric("ModelLatency", "p99").create_alarm(
                self,
                "EndpointLatencyP99",
                alarm_description=f"{endpoint.endpoint_name} p99 model latency over {config.alarm_model_latency_ms} ms",
                threshold=config.alarm_model_latency_ms * 1000,  # ModelLatency is in microseconds
                evaluation_periods=5,
                datapoints_to_alarm=3,
                comparison_operator=cw.ComparisonOperator.GREATER_THAN_THRESHOLD,
                treat_missing_data=cw.TreatMissingData.NOT_BREACHING,
            ),
        ]


def gateway_widgets(api: apigwv2.HttpApi) -> list[cw.IWidget]:
    def expression(expr: str, label: str) -> cw.MathExpression:
        return cw.MathExpression(expression=expr, period=MINUTE, label=label)

    hit_ratio = (
        f"100 * SUM({search(CACHE_HITS, 'Sum')}) / "
        f"(SUM({search(CACHE_HITS, 'Sum')}) + SUM({search(CACHE_MISSES, 'Sum')}))"
    )
    return [
        cw.GraphWidget(
            title="Tokens generated per minute",
            left=[expression(f"SUM({search(TOKENS, 'Sum')})", "all models")],
            right=[insights(TOKENS, group_by="model")],
            width=8,
        ),
        cw.GraphWidget(
            title="Request latency (API Gateway, ms)",
            left=[api.metric_latency(period=MINUTE, statistic=s, label=s) for s in ("p50", "p95", "p99")],
            width=8,
        ),
        cw.GraphWidget(
            title="Gateway latency by route (EMF, s)",
            left=[expression(search(LATENCY, s), f"{s} ") for s in ("p50", "p95", "p99")],
            width=8,
        ),
        cw.GraphWidget(
            title="Errors by status",
            left=[insights(REQUESTS, where=NOT_SUCCESS, group_by="status")],
            right=[api.metric_server_error(period=MINUTE, statistic="Sum", label="API Gateway 5xx")],
            width=8,
        ),
        cw.GraphWidget(
            title="Cache hit ratio (%)",
            left=[expression(hit_ratio, "cache_hits / (hits + misses)")],
            left_y_axis=cw.YAxisProps(min=0, max=100),
            width=8,
        ),
        cw.GraphWidget(
            title="Quota and rate-limit rejections",
            left=[insights(REFUSALS, group_by="limit")],
            width=8,
        ),
    ]


def sagemaker_widgets() -> list[cw.IWidget]:
    def endpoints(namespace: str, metric: str, stat: str) -> cw.MathExpression:
        expr = f"SEARCH('{{{namespace},EndpointName,VariantName}} MetricName=\"{metric}\"', '{stat}', 60)"
        return cw.MathExpression(expression=expr, period=MINUTE, label="")

    return [
        cw.GraphWidget(
            title="SageMaker invocations",
            left=[endpoints("AWS/SageMaker", "Invocations", "Sum")],
            right=[endpoints("AWS/SageMaker", "Invocation5XXErrors", "Sum")],
            width=8,
        ),
        cw.GraphWidget(
            title="GPU utilization (%)",
            left=[endpoints("/aws/sagemaker/Endpoints", "GPUUtilization", "Average")],
            width=8,
        ),
        cw.GraphWidget(
            title="GPU memory utilization (%)",
            left=[endpoints("/aws/sagemaker/Endpoints", "GPUMemoryUtilization", "Average")],
            width=8,
        ),
    ]
