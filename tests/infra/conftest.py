"""One CDK synth per session, shared by every infra test (a synth costs ~15 s on two cores)."""

from __future__ import annotations

import json
import os
import sys
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

ROOT = Path(__file__).resolve().parents[2]
CDK_DIR = ROOT / "cdk"
# The context the shared synth uses: production settings with the optional GPU endpoint, so every construct
# is in the template. cdk.json supplies everything else (feature flags, defaults).
SYNTH_CONTEXT = {"stage": "prod", "sagemaker_size": "small"}

os.environ.setdefault("JSII_SILENCE_WARNING_END_OF_LIFE_NODE_VERSION", "20")
# The dependency layer is an empty marker asset in tests: no pip download, no network, fast.
os.environ.setdefault("TEXTNLP_SKIP_LAYER_BUILD", "1")
if str(CDK_DIR) not in sys.path:
    sys.path.insert(0, str(CDK_DIR))


@dataclass(frozen=True)
class Synth:
    app: Any
    stack: Any
    template: Any  # aws_cdk.assertions.Template
    raw: dict[str, Any]
    template_path: Path
    outdir: Path

    def resources(self, type_name: str) -> dict[str, dict[str, Any]]:
        return {k: v for k, v in self.raw["Resources"].items() if v["Type"] == type_name}

    def one(self, type_name: str, logical_prefix: str) -> tuple[str, dict[str, Any]]:
        found = [(k, v) for k, v in self.resources(type_name).items() if k.startswith(logical_prefix)]
        assert len(found) == 1, f"{type_name} {logical_prefix}*: {[k for k, _ in found]}"
        return found[0]


@pytest.fixture(scope="session")
def cdk() -> None:
    """Skip (with the fix) where aws-cdk-lib is not installed."""
    pytest.importorskip("aws_cdk", reason="the CDK app needs the infra extra: pip install -e '.[infra]'")


@pytest.fixture(scope="session")
def synth(cdk: None, tmp_path_factory: pytest.TempPathFactory) -> Synth:
    from aws_cdk.assertions import Template
    from textnlp_cdk import build_app

    outdir = tmp_path_factory.mktemp("cdk.out")
    app, stack = build_app(SYNTH_CONTEXT, outdir=str(outdir), nag=False)
    assembly = app.synth()
    artifact = assembly.get_stack_by_name(stack.stack_name)
    template_path = outdir / artifact.template_file
    raw = json.loads(template_path.read_text())
    return Synth(
        app=app,
        stack=stack,
        template=Template.from_json(raw),
        raw=raw,
        template_path=template_path,
        outdir=outdir,
    )
