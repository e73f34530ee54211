"""Lambda packaging: the code asset (core/, adapters/, functions/), a pip-built dependency layer, both with
CPython 3.12 bytecode (textnlp_cdk.bytecode), and the function defaults."""

from __future__ import annotations

import hashlib
import os
import re
import shlex
import shutil
import subprocess
import sys
import tempfile
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import jsii
from aws_cdk import AssetHashType, BundlingOptions, DockerImage, Duration, ILocalBundling, RemovalPolicy
from aws_cdk import aws_iam as iam
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from constructs import Construct

from textnlp_cdk.bytecode import compile_tree, compileall_command, recipe
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
#: Requirements that PyPI has as an sdist only (no wheel), all pure Python. ``--platform`` needs
#: ``--only-binary=:all:``, which cannot install an sdist, so the layer build first makes their wheels on
#: this machine (``pip wheel --no-deps``, sdist -> ``py3-none-any``) and the install finds them there
#: (``--find-links``). The install still takes only wheels whose tags fit PIP_PLATFORM_ARGS, and
#: ``build_layer`` stops at a wheel that is not ``*-none-any``: no code compiled for this machine gets in.
SDIST_ONLY = ("rouge-score",)
#: Lambda's limit is 250 MB unzipped for a function and all its layers; the code asset takes a few MB.
LAYER_BUDGET_MB = 200
#: Where Lambda puts the function's code and a layer's ``python/``: the paths the bytecode records.
TASK_ROOT = "/var/task"
LAYER_PYTHON = "/opt/python"
#: The build image of the Docker fallbacks (local bundling always runs today); its ``python`` is 3.12.
BUILD_IMAGE = "public.ecr.aws/sam/build-python3.12"
#: The code asset: the three packages the handlers import, without caches, dotfiles or compiled files of this
#: machine, and without the layer's input.
CODE_PACKAGES = ("core", "adapters", "functions")
CODE_LEAVE_OUT = ("functions/aws/requirements.txt",)
#: Folders of the layer's packages that nothing imports at run time (numpy's, nltk's... test suites): not
#: byte-compiled, ~9 MB of .pyc saved.
LAYER_SKIP_DIRS = ("test", "tests")


def _kept(name: str) -> bool:
    return not name.startswith(".") and name != "__pycache__" and not name.endswith((".pyc", ".pyo"))


def code_files(root: Path = REPO_ROOT) -> list[str]:
    """The files of the code asset, as sorted POSIX paths relative to ``root``."""
    files = []
    for package in CODE_PACKAGES:
        for folder, dirs, names in os.walk(root / package):
            dirs[:] = sorted(d for d in dirs if _kept(d))
            for name in sorted(filter(_kept, names)):
                relative = (Path(folder) / name).relative_to(root).as_posix()
                if relative not in CODE_LEAVE_OUT:
                    files.append(relative)
    return files


def code_hash(root: Path = REPO_ROOT) -> str:
    """The code asset's hash: every file's path and content, and how it is built (the Docker fallback's
    command, with or without bytecode), so code changes make a new asset and nothing else does."""
    digest = hashlib.sha256()
    for relative in code_files(root):
        digest.update(relative.encode() + b"\0" + hashlib.sha256((root / relative).read_bytes()).digest())
    digest.update(docker_code_command().encode())
    digest.update(recipe().encode())
    return digest.hexdigest()


def copy_code(output: Path, root: Path = REPO_ROOT) -> None:
    for relative in code_files(root):
        (output / relative).parent.mkdir(parents=True, exist_ok=True)
        shutil.copy2(root / relative, output / relative)


@jsii.implements(ILocalBundling)
class CodeBundling:
    """Copies the packages (``code_files``) into the asset and byte-compiles them with CPython 3.12 (under a
    second: it runs on every synth, TEXTNLP_SKIP_LAYER_BUILD or not)."""

    def __init__(self, root: Path = REPO_ROOT) -> None:
        self._root = root

    def try_bundle(self, output_dir: str, options: Any) -> bool:
        """Called by CDK before Docker bundling; ``options`` are the Docker settings, unused here."""
        output = Path(output_dir)
        copy_code(output, self._root)
        compile_tree(output, TASK_ROOT, what="the code asset", jobs=1)
        return True


def docker_code_command(source: str = "/asset-input", output: str = "/asset-output", python: str = "python") -> str:
    """What CodeBundling does, in the build image, should local bundling ever decline (it does not today)."""
    pruned = r"find {out} -mindepth 1 \( -name '.*' -o -name __pycache__ \) -prune -exec rm -rf {{}} +"
    commands = [
        f"cd {shlex.quote(source)}",
        f"cp -R {' '.join(CODE_PACKAGES)} {shlex.quote(output)}/",
        pruned.format(out=shlex.quote(output)),
        f"find {shlex.quote(output)} \\( -name '*.pyc' -o -name '*.pyo' \\) -delete",
        shlex.join(["rm", "-f", *(f"{output}/{p}" for p in CODE_LEAVE_OUT)]),
        shlex.join(["env", "PYTHONHASHSEED=0", *compileall_command(python, output, TASK_ROOT, jobs=1)]),
    ]
    return " && ".join(commands)


def code_asset() -> lambda_.Code:
    """The code of both functions, with its bytecode; the hash is ``code_hash`` (no walk of the repository)."""
    return lambda_.Code.from_asset(
        str(REPO_ROOT),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=code_hash(),
        bundling=BundlingOptions(
            image=DockerImage.from_registry(BUILD_IMAGE),
            command=["bash", "-c", docker_code_command()],
            local=CodeBundling(),
        ),
    )


def canonical_name(name: str) -> str:
    """PEP 503 normalisation: ``Rouge_Score`` -> ``rouge-score``."""
    return re.sub(r"[-_.]+", "-", name).lower()


_REQUIREMENT_NAME = re.compile(r"^([A-Za-z0-9][A-Za-z0-9._-]*)")


def sdist_only_requirements(requirements: Path) -> list[str]:
    """The lines of ``requirements`` (version specifiers included) that name a package of SDIST_ONLY."""
    lines = []
    for raw in requirements.read_text().splitlines():
        line = re.sub(r"(^|\s)#.*", "", raw).strip()
        match = _REQUIREMENT_NAME.match(line)
        if match and canonical_name(match.group(1)) in SDIST_ONLY:
            lines.append(line)
    return lines


def layer_commands(
    pip: Sequence[str],
    requirements: str,
    target: str,
    wheelhouse: str,
    sdists: Sequence[str],
    platform_args: Sequence[str] = PIP_PLATFORM_ARGS,
) -> tuple[list[str] | None, list[str]]:
    """The pip runs that build the layer: the wheels of ``sdists`` (``None`` when there are none) into
    ``wheelhouse``, then the install of ``requirements`` into ``target`` for ``platform_args``."""
    quiet = ["--quiet", "--disable-pip-version-check"]
    wheel = None
    if sdists:
        no_binary = ",".join(canonical_name(n) for n in SDIST_ONLY)
        wheel = [*pip, "wheel", *quiet, "--no-deps", f"--no-binary={no_binary}", "--wheel-dir", wheelhouse, *sdists]
    install = [*pip, "install", *quiet, "--no-compile", *platform_args, "--find-links", wheelhouse]
    return wheel, [*install, "--target", target, "-r", requirements]


def impure_wheels(wheelhouse: Path) -> list[str]:
    """Wheels that carry compiled code (``<name>-<version>-<python>-<abi>-<platform>.whl`` not ``*-none-any``)."""
    return sorted(w.name for w in wheelhouse.glob("*.whl") if not w.name.endswith("-none-any.whl"))


def tree_mb(path: Path) -> float:
    return sum(f.stat().st_size for f in path.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


def build_layer(
    target: Path,
    requirements: Path = REQUIREMENTS,
    platform_args: Sequence[str] = PIP_PLATFORM_ARGS,
    *,
    bytecode: bool = True,
) -> None:
    """pip-install ``requirements`` into ``target`` (the layer's ``python/``) for ``platform_args``, with this
    machine's pip (no Docker), then byte-compile it with CPython 3.12 (without one: no .pyc, NO_BYTECODE.txt).
    ``platform_args`` other than PIP_PLATFORM_ARGS and ``bytecode=False`` are for tests (a layer this machine
    can import, sooner)."""
    target.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="textnlp-wheels-") as wheelhouse:
        pip = [sys.executable, "-m", "pip"]
        wheel, install = layer_commands(
            pip, str(requirements), str(target), wheelhouse, sdist_only_requirements(requirements), platform_args
        )
        if wheel is not None:
            subprocess.run(wheel, check=True)  # noqa: S603 - fixed argv, no shell
            impure = impure_wheels(Path(wheelhouse))
            if impure:
                raise RuntimeError(
                    f"{', '.join(impure)}: built with compiled code for this machine, not for Lambda arm64; "
                    "it cannot be in SDIST_ONLY (cdk/textnlp_cdk/compute.py): find an arm64 wheel"
                )
        subprocess.run(install, check=True)  # noqa: S603 - fixed argv, no shell
    for cache in list(target.rglob("__pycache__")):
        shutil.rmtree(cache, ignore_errors=True)
    if bytecode:
        compile_tree(target, LAYER_PYTHON, what="the dependency layer", skip_dirs=LAYER_SKIP_DIRS)
    size = tree_mb(target)
    if size > LAYER_BUDGET_MB:
        raise RuntimeError(f"the dependency layer takes {size:.0f} MB unzipped, above {LAYER_BUDGET_MB} MB")


@jsii.implements(ILocalBundling)
class PipLayerBundling:
    """Builds the layer with this machine's pip (no Docker): wheels for cp312 arm64 into ``python/``, then
    their bytecode."""

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
        build_layer(target, self._requirements)
        return True


def docker_layer_command(requirements: Path = REQUIREMENTS) -> str:
    """The same build in the SAM build image, should local bundling ever decline (it does not today)."""
    target = "/asset-output/python"
    commands = [
        *layer_commands(
            ["python", "-m", "pip"],
            requirements.name,
            target,
            "/tmp/wheelhouse",  # noqa: S108 - inside the throw-away build container
            sdist_only_requirements(requirements),
        ),
        ["env", "PYTHONHASHSEED=0", *compileall_command("python", target, LAYER_PYTHON, skip_dirs=LAYER_SKIP_DIRS)],
    ]
    return " && ".join(shlex.join(c) for c in commands if c is not None)


def dependency_layer(scope: Construct, construct_id: str, *, skip_build: bool) -> lambda_.LayerVersion:
    """The third-party packages of functions/aws/requirements.txt (Powertools included: bundled, not a public layer)."""
    docker_command = docker_layer_command()
    digest = hashlib.sha256(REQUIREMENTS.read_bytes())
    digest.update(docker_command.encode())  # the platform, the sdist-only packages: what the build does
    digest.update(b"skipped" if skip_build else b"built")
    digest.update(recipe().encode())  # with or without bytecode
    code = lambda_.Code.from_asset(
        str(REQUIREMENTS.parent),
        asset_hash_type=AssetHashType.CUSTOM,
        asset_hash=digest.hexdigest(),
        bundling=BundlingOptions(
            image=DockerImage.from_registry(BUILD_IMAGE),
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
        description="TextNLP third-party Python packages (pydantic, pyjwt, pynamodb, Powertools, httpx, "
        "sacrebleu, rouge-score)",
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
