"""The HTTP API: one ``$default`` route proxied to the api function, throttled, with JSON access logs."""

from __future__ import annotations

import json

import jsii
from aws_cdk import RemovalPolicy
from aws_cdk import aws_apigateway as apigw
from aws_cdk import aws_apigatewayv2 as apigwv2
from aws_cdk import aws_apigatewayv2_integrations as integrations
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from textnlp_cdk.compute import retention
from textnlp_cdk.config import StackConfig
from textnlp_cdk.nag import acknowledge

# HTTP API $context variables: one JSON object per request, with the ids that join it to the function's logs.
ACCESS_LOG_FORMAT = {
    "requestId": "$context.requestId",
    "ip": "$context.identity.sourceIp",
    "requestTime": "$context.requestTime",
    "httpMethod": "$context.httpMethod",
    "path": "$context.path",
    "routeKey": "$context.routeKey",
    "status": "$context.status",
    "protocol": "$context.protocol",
    "responseLength": "$context.responseLength",
    "responseLatency": "$context.responseLatency",
    "integrationLatency": "$context.integrationLatency",
    "integrationStatus": "$context.integrationStatus",
    "integrationError": "$context.integrationErrorMessage",
    "error": "$context.error.message",
    "userAgent": "$context.identity.userAgent",
}


class HttpApi(Construct):
    def __init__(self, scope: Construct, construct_id: str, *, config: StackConfig, handler: lambda_.IFunction) -> None:
        super().__init__(scope, construct_id)
        self.api = apigwv2.HttpApi(
            self,
            "Api",
            description="TextNLP gateway (OpenAI-compatible HTTP API)",
            create_default_stage=False,
            default_integration=integrations.HttpLambdaIntegration(
                "Lambda", handler, payload_format_version=apigwv2.PayloadFormatVersion.VERSION_2_0
            ),
        )
        self.access_logs = logs.LogGroup(
            self,
            "AccessLogs",
            retention=retention(config.log_retention_days),
            removal_policy=RemovalPolicy.RETAIN if config.is_prod else RemovalPolicy.DESTROY,
        )
        self.stage = apigwv2.HttpStage(
            self,
            "DefaultStage",
            http_api=self.api,
            stage_name="$default",
            auto_deploy=True,
            throttle=apigwv2.ThrottleSettings(rate_limit=config.api_rate_limit, burst_limit=config.api_burst_limit),
            access_log_settings=_AccessLogs(self.access_logs),
        )
        self.url = f"{self.api.api_endpoint}/"
        acknowledge(
            self.api,
            "AwsSolutions-APIG4",
            "Authentication is the gateway's own (API keys and RS256 JWTs checked by the api function, the tenant "
            "taken from the credential); an API Gateway authorizer would duplicate it per request.",
        )


@jsii.implements(apigwv2.IAccessLogSettings)
class _AccessLogs:
    """``IAccessLogSettings``: CloudWatch Logs destination, one JSON line per request."""

    def __init__(self, group: logs.ILogGroup) -> None:
        self._destination = apigwv2.LogGroupLogDestination(group)

    @property
    def destination(self) -> apigwv2.IAccessLogDestination:
        return self._destination

    @property
    def format(self) -> apigw.AccessLogFormat:
        return apigw.AccessLogFormat.custom(json.dumps(ACCESS_LOG_FORMAT, separators=(",", ":")))
