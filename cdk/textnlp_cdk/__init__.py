"""TextNLP on AWS: the CDK app (``build_app``) and its stack."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

from aws_cdk import App, Validations
from cdk_nag import AwsSolutionsChecks

from textnlp_cdk.stack import TextNlpStack

__all__ = ["CDK_JSON", "TextNlpStack", "build_app", "file_context"]

CDK_JSON = Path(__file__).resolve().parents[1] / "cdk.json"
STACK_NAME = "TextNlp"


def file_context() -> dict[str, Any]:
    """The context block of cdk.json (feature flags and defaults), for apps not started by the CDK CLI."""
    context: dict[str, Any] = json.loads(CDK_JSON.read_text())["context"]
    return context


def build_app(
    context: dict[str, Any] | None = None, outdir: str | None = None, *, nag: bool = True
) -> tuple[App, TextNlpStack]:
    """The app with its one stack; ``nag`` registers the cdk-nag AwsSolutions pack as a synth-time validation.

    Context from the CDK CLI (cdk.json, ``-c``) still overrides ``context``: App reads it from the environment.
    """
    app = App(context={**file_context(), **(context or {})}, outdir=outdir)
    stack_name = f"{STACK_NAME}-{app.node.try_get_context('stage') or 'dev'}"
    stack = TextNlpStack(app, STACK_NAME, stack_name=stack_name, description="TextNLP serverless gateway")
    if nag:
        Validations.of(app).add_plugins(AwsSolutionsChecks(app))
    return app, stack
