"""cfn-lint on the synthesized CDK template and on template.yaml (W3005 ignored: CDK's redundant DependsOn)."""

from __future__ import annotations

import shutil
import subprocess
import sys
from pathlib import Path

import pytest

from tests.infra.conftest import ROOT, Synth

pytestmark = pytest.mark.infra


def cfn_lint(template: Path) -> subprocess.CompletedProcess[str]:
    binary = Path(sys.executable).with_name("cfn-lint")
    command = str(binary) if binary.exists() else shutil.which("cfn-lint")
    if command is None:
        pytest.skip("cfn-lint is not installed: pip install -e '.[infra]'")
    return subprocess.run(
        [command, "--ignore-checks", "W3005", "--", str(template)],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )


def test_cdk_template_passes_cfn_lint(synth: Synth) -> None:
    result = cfn_lint(synth.template_path)
    assert result.returncode == 0, result.stdout + result.stderr


def test_sam_template_passes_cfn_lint() -> None:
    result = cfn_lint(ROOT / "template.yaml")
    assert result.returncode == 0, result.stdout + result.stderr
