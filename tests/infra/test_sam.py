"""template.yaml through the SAM CLI of .venv-sam: validate --lint, build (no Docker), sample events."""

from __future__ import annotations

import importlib
import json
import os
import shutil
import subprocess
import sys
import warnings
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import ROOT

pytestmark = pytest.mark.infra

EVENTS = ROOT / "events" / "aws"
SAM_ENV = {"SAM_CLI_TELEMETRY": "0", "SAM_CLI_CONTACT_TRACKING": "0"}
# What the Lambda package is made of; the same three packages as the CDK code asset.
PACKAGES = ("core", "adapters", "functions")


@pytest.fixture(scope="module")
def sam() -> Path:
    """The SAM CLI lives in its own venv (it pins many packages); ``make sam-check`` creates it."""
    cli = Path(os.environ.get("TEXTNLP_SAM_CLI", ROOT / ".venv-sam" / "bin" / "sam"))
    if not cli.exists():
        pytest.skip(f"SAM CLI not found at {cli}: run `make sam-check` (creates .venv-sam with aws-sam-cli)")
    return cli


def run_sam(sam: Path, *args: str, cwd: Path, path: str | None = None) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **SAM_ENV}
    if path is not None:
        env["PATH"] = path
    return subprocess.run([str(sam), *args], cwd=cwd, env=env, capture_output=True, text=True, timeout=600, check=False)


def python312() -> Path | None:
    """A CPython 3.12 for `sam build` (it runs pip for the function's runtime): the CDK app's own finder."""
    bytecode = importlib.import_module("textnlp_cdk.bytecode")  # cdk/ is on sys.path (conftest)
    found: Path | None = bytecode.python312()
    return found


def test_sam_validate_lint(sam: Path) -> None:
    result = run_sam(sam, "validate", "--lint", "--region", "us-east-1", cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr
    assert "is a valid SAM Template" in result.stdout + result.stderr


def stage_sources(stage: Path, runtime: str) -> None:
    """The template and the three packages only: SAM's copy step would otherwise take .venv-sam and all."""
    for name in PACKAGES:
        shutil.rmtree(stage / name, ignore_errors=True)
        shutil.copytree(ROOT / name, stage / name, ignore=shutil.ignore_patterns("__pycache__", "*.pyc"))
    template = (ROOT / "template.yaml").read_text()
    (stage / "template.yaml").write_text(template.replace("Runtime: python3.12", f"Runtime: {runtime}"))
    shutil.copy2(ROOT / "samconfig.toml", stage / "samconfig.toml")


def test_sam_build(sam: Path, tmp_path: Path, request: pytest.FixtureRequest) -> None:
    # The staging folder lives in pytest's cache, outside the source tree. It keeps SAM's build.toml and
    # dependency cache (.aws-sam/) between sessions: a rebuild with unchanged requirements takes seconds.
    cache = request.config.cache
    stage = Path(cache.mkdir("sam-build-stage")) if cache is not None else tmp_path / "stage"
    stage.mkdir(exist_ok=True)
    interpreter = python312()
    path = os.environ.get("PATH", "")
    if interpreter is not None:
        runtime = "python3.12"
        path = f"{interpreter.parent}{os.pathsep}{path}"
    else:
        runtime = f"python3.{sys.version_info.minor}"
        warnings.warn(f"no python3.12 here: `sam build` checked with {runtime}", stacklevel=1)
    stage_sources(stage, runtime)
    build = stage / ".aws-sam" / "build"
    result = run_sam(sam, "build", "--build-dir", str(build), cwd=stage, path=path)
    assert result.returncode == 0, result.stdout + result.stderr
    for function in ("ApiFunction", "BatchFunction"):
        artifact = build / function
        for package in PACKAGES:
            assert (artifact / package).is_dir(), f"{function}: {package}/ missing"
        assert not (artifact / "tests").exists()
        assert (artifact / "pydantic").is_dir(), "dependencies from functions/aws/requirements.txt"
        assert list((artifact / "pydantic_core").glob("*aarch64*.so")), "wheels for arm64"
    assert "CodeUri: ApiFunction" in (build / "template.yaml").read_text()


# --- events/aws fixtures against `sam local generate-event` -------------------------------------------------

# Keys SAM's sample carries that a real event of ours does not (no mTLS, no authorizer, no cookies...).
OPTIONAL = {
    "cookies",
    "pathParameters",
    "stageVariables",
    "queryStringParameters",
    "authentication",
    "authorizer",
    "body",
    "Header1",
    "Header2",
}


def missing_keys(sample: Any, ours: Any, where: str = "") -> list[str]:
    if isinstance(sample, dict):
        if not isinstance(ours, dict):
            return [where or "."]
        missing = []
        for key, value in sample.items():
            if key in OPTIONAL:
                continue
            if key not in ours:
                missing.append(f"{where}.{key}")
            else:
                missing += missing_keys(value, ours[key], f"{where}.{key}")
        return missing
    if isinstance(sample, list) and sample and isinstance(sample[0], dict):
        return missing_keys(sample[0], ours[0], f"{where}[0]") if isinstance(ours, list) and ours else [where]
    return []


@pytest.mark.parametrize(
    ("generate", "fixture"),
    [
        (("apigateway", "http-api-proxy"), "apigw_http_chat_completions_ok.json"),
        (("s3", "put"), "s3_put_batch_input.json"),
        (("sqs", "receive-message"), "sqs_s3_batch_input.json"),
    ],
)
def test_events_have_the_shape_sam_generates(sam: Path, generate: tuple[str, ...], fixture: str) -> None:
    result = run_sam(sam, "local", "generate-event", *generate, cwd=ROOT)
    assert result.returncode == 0, result.stderr
    sample = json.loads(result.stdout)
    ours = json.loads((EVENTS / fixture).read_text())
    assert not missing_keys(sample, ours), missing_keys(sample, ours)
