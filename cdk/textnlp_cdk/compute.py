"""Lambda packaging: the repository as the code asset, a pip-built dependency layer, and the function defaults."""

from __future__ import annotations

import hashlib
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, Duration, ILocalBundling, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from textnlp_cdk.config import StackConfig
from textnlp_cdk.nag import acknowledge, allow

REPO_ROOT = Path(__file__).resolve().parents[2]
REQUIREMENTS = REPO_ROOT / "functions" / "aws" / "requirements.txt"
RUNTIME = lambda_.Runtime.PYTHON_3_12
ARCHITECTURE = lambda_.Architecture.ARM_64
# Lambda python3.12 runs on Amazon Linux 2023 (glibc 2.34): manylinux2014 and manylinux_2_28 wheels both load.
PIP_PLATFORM_ARGS = (
    "--platform=manylinux2014_aarch64",
    "--platform=manylinux_2_28_aarch64",
    "--implementation=cp",
    "--python-version=3.12",
    "--only-binary=:all:",
)
# The code asset is the repository root filtered down to the three packages the handlers import.
CODE_EXCLUDES = [
    "*",
    ".*",
    "!core",
    "!core/**",
    "!adapters",
    "!adapters/**",
    "!functions",
    "!functions/**",
    "**/__pycache__",
    "**/*.pyc",
    "functions/aws/requirements.txt",
]


def code_asset() -> lambda_.Code:
    return lambda_.Code.from_asset(str(REPO_ROOT), exclude=CODE_EXCLUDES)


@jsii.implements(ILocalBundling)
class PipLayerBundling:
    """Builds the layer with this machine's pip (no Docker): wheels for cp312 arm64 into ``python/``."""

    def __init__(self, requirements: Path, skip: bool) -> None:
        self._requirements = requirements
        self._skip = skip

    def try_bundle(self, output_dir: str, options: Any) -> bool:
        """Called by CDK before Docker bundling; ``options`` are the Docker settings, unused here."""
        target = Path(output_dir) / "python"
        target.mkdir(parents=True, exist_ok=True)
        if self._skip:
            (target / "LAYER_NOT_BUILT.txt").write_text("TEXTNLP_SKIP_LAYER_BUILD was set: do not deploy this layer\n")
            return True
        command = [sys.executable, "-m", "pip", "install", "--quiet", "--disable-pip-version-check", "--no-compile"]
        command += [*PIP_PLATFORM_ARGS, "--target", str(target), "-r", str(self._requirements)]
        subprocess.run(command, check=True)  # noqa: S603 - fixed argv, no shell
        for cache in target.rglob("__pycache__"):
            shutil.rmtree(cache, ignore_errors=True)
        return True


def dependency_layer(scope: Construct, construct_id: str, *, skip_build: bool) -> lambda_.LayerVersion:
    """The third-party packages of functions/aws/requirements.txt (Powertools included: bundled, not a public layer)."""
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    digest.update(" ".join(PIP_PLATFORM_ARGS).encode())
    digest.update(b"skipped" if skip_build else b"built")
    docker_command = f"pip install {' '.join(PIP_PLATFORM_ARGS)} -r requirements.txt -t /asset-output/python"
    code = lambda_.Code.from_asset(
        str(REQUIREMENTS.parent),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=digest.hexdigest(),
        bundling=BundlingOptions(
            image=DockerImage.from_registry("public.ecr.aws/sam/build-python3.12"),
            command=["bash", "-c", docker_command],
            local=PipLayerBundling(REQUIREMENTS, skip_build),
        ),
    )
    return lambda_.LayerVersion(
        scope,
        construct_id,
        code=code,
        compatible_runtimes=[RUNTIME],
        compatible_architectures=[ARCHITECTURE],
        description="TextNLP third-party Python packages (pydantic, pyjwt, pynamodb, Powertools, httpx)",
        removal_policy=RemovalPolicy.RETAIN,
    )


class PythonFunction(Construct):
    """One handler with the shared defaults: python3.12 on arm64, X-Ray, its own role and log group."""

    def __init__(
        self,
        scope: Construct,
        construct_id: str,
        *,
        config: StackConfig,
        handler: str,
        memory_mb: int,
        timeout: Duration,
        code: lambda_.Code,
        layer: lambda_.ILayerVersion,
        environment: dict[str, str],
        description: str,
    ) -> None:
        super().__init__(scope, construct_id)
        self.role = iam.Role(
            self,
            "Role",
            assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
            description=f"TextNLP {construct_id} function",
        )
        self.log_group = logs.LogGroup(
            self,
            "Logs",
            retention=retention(config.log_retention_days),
            removal_policy=RemovalPolicy.RETAIN if config.is_prod else RemovalPolicy.DESTROY,
        )
        self.function = lambda_.Function(
            self,
            "Function",
            runtime=RUNTIME,
            architecture=ARCHITECTURE,
            handler=handler,
            code=code,
            layers=[layer],
            memory_size=memory_mb,
            timeout=timeout,
            environment=environment,
            role=self.role,
            log_group=self.log_group,
            tracing=lambda_.Tracing.ACTIVE,
            description=description,
        )
        allow(self.role, ["logs:CreateLogStream", "logs:PutLogEvents"], [self.log_group.log_group_arn])
        acknowledge(
            self.role,
            "AwsSolutions-IAM5[Resource::*]",
            "X-Ray PutTraceSegments/PutTelemetryRecords (added by tracing=ACTIVE) support no resource ARN.",
        )
        acknowledge(
            self.function,
            "AwsSolutions-L1",
            "python3.12 is the runtime the code and the arm64 dependency layer are built and tested for; "
            "moving to a newer runtime is a deliberate upgrade of both.",
        )


_RETENTION = {
    1: "ONE_DAY",
    3: "THREE_DAYS",
    5: "FIVE_DAYS",
    7: "ONE_WEEK",
    14: "TWO_WEEKS",
    30: "ONE_MONTH",
    60: "TWO_MONTHS",
    90: "THREE_MONTHS",
    120: "FOUR_MONTHS",
    150: "FIVE_MONTHS",
    180: "SIX_MONTHS",
    365: "ONE_YEAR",
    400: "THIRTEEN_MONTHS",
    545: "EIGHTEEN_MONTHS",
    731: "TWO_YEARS",
    1096: "THREE_YEARS",
    1827: "FIVE_YEARS",
    2192: "SIX_YEARS",
    2557: "SEVEN_YEARS",
    2922: "EIGHT_YEARS",
    3288: "NINE_YEARS",
    3653: "TEN_YEARS",
}


def retention(days: int) -> logs.RetentionDays:
    """CloudWatch Logs accepts only these retention periods."""
    if days not in _RETENTION:
        raise ValueError(f"log retention of {days} days: use one of {sorted(_RETENTION)}")
    return logs.RetentionDays[_RETENTION[days]]
