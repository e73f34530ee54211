"""What the tests of every Terraform stack (terraform/gcp, terraform/azure) check alike: ``terraform fmt``,
``terraform validate`` where the providers can be downloaded (skipped with the reason where they cannot), and
checkov clean with every inline skip reasoned and still needed. Plus the python-hcl2 helper both read blocks with.

checkov lives in its own venv (``make checkov`` makes .venv-checkov); in CI a missing tool fails, elsewhere it
skips.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import ROOT

CHECKOV = Path(os.environ.get("TEXTNLP_CHECKOV", ROOT / ".venv-checkov" / "bin" / "checkov"))
IN_CI = os.environ.get("CI", "").lower() in ("1", "true", "yes")
TF_ENV = {"CHECKPOINT_DISABLE": "1"}
SKIP = re.compile(r"#checkov:skip=(CKV2?_[A-Z]+_\d+):(.*)")


def block(value: Any) -> dict[str, Any]:
    """A nested block: python-hcl2 gives a list of one dict."""
    if isinstance(value, list):
        assert len(value) == 1, value
        value = value[0]
    assert isinstance(value, dict), value
    return value


def run(
    args: list[str], cwd: Path, timeout: float = 120, extra_env: dict[str, str] | None = None
) -> subprocess.CompletedProcess[str]:
    env = {**os.environ, **TF_ENV, **(extra_env or {})}
    return subprocess.run(args, cwd=cwd, env=env, capture_output=True, text=True, timeout=timeout, check=False)


def _missing(message: str) -> None:
    if IN_CI:
        pytest.fail(message)
    pytest.skip(message)


def terraform_binary() -> str:
    found = shutil.which("terraform")
    if found is None:
        _missing("terraform is not on PATH")
    assert found is not None
    return found


def check_fmt(terraform: str, tf_dir: Path) -> None:
    result = run([terraform, "fmt", "-check", "-recursive", "-diff", str(tf_dir)], cwd=ROOT)
    assert result.returncode == 0, result.stdout + result.stderr


def check_validate(terraform: str, tf_dir: Path, tmp_path: Path, providers: str) -> None:
    """``terraform validate`` on a copy that sees the repository through ../.. as the stack does (it packages
    the function source); skipped, saying so, where ``providers`` cannot be downloaded."""
    work = tmp_path / tf_dir.name
    shutil.copytree(tf_dir, work, ignore=shutil.ignore_patterns(".terraform", ".build", "*.tfstate*"))
    for name in ("core", "adapters", "functions"):
        (tmp_path / name).symlink_to(ROOT / name)
    cache = Path(os.environ.get("TF_PLUGIN_CACHE_DIR", Path.home() / ".cache" / "textnlp" / "terraform-plugins"))
    cache.mkdir(parents=True, exist_ok=True)
    plugins = {"TF_PLUGIN_CACHE_DIR": str(cache)}
    init = run(
        [terraform, "init", "-backend=false", "-input=false", "-no-color"], cwd=work, timeout=300, extra_env=plugins
    )
    if init.returncode != 0:
        output = init.stdout + init.stderr
        if "registry.terraform.io" in output or "Failed to query available provider packages" in output:
            pytest.skip(
                f"terraform validate needs {providers}, which cannot be downloaded here "
                "(registry.terraform.io unreachable)"
            )
        pytest.fail(output)
    result = run([terraform, "validate", "-no-color"], cwd=work, extra_env=plugins)
    assert result.returncode == 0, result.stdout + result.stderr


def inline_skips(tf_dir: Path) -> list[tuple[str, str, str]]:
    """(file, check, reason) of every ``#checkov:skip=`` comment."""
    return [
        (path.name, check, reason)
        for path in sorted(tf_dir.glob("*.tf"))
        for check, reason in SKIP.findall(path.read_text())
    ]


def check_checkov(tf_dir: Path) -> None:
    """No failed check; every skip written in the .tf with its reason, and each one still suppressing a finding
    (a skip checkov no longer needs is removed, not kept)."""
    if not CHECKOV.exists():
        _missing(f"checkov not found at {CHECKOV}: run `make checkov` (creates .venv-checkov)")
    result = run(
        [str(CHECKOV), "-d", str(tf_dir), "--framework", "terraform", "--skip-download", "-o", "json"],
        cwd=ROOT,
        timeout=300,
    )
    report = json.loads(result.stdout)
    report = report[0] if isinstance(report, list) else report
    failed = [(c["check_id"], c["resource"]) for c in report["results"]["failed_checks"]]
    assert not failed, failed
    assert result.returncode == 0, result.stderr
    skipped = {(c["check_id"], c["file_path"].lstrip("/")) for c in report["results"]["skipped_checks"]}
    for file_name, check, reason in inline_skips(tf_dir):
        assert len(reason.strip()) > 20, f"{file_name} {check}: a skip needs its reason"
        assert (check, file_name) in skipped, f"{file_name} {check}: checkov no longer needs this skip"
