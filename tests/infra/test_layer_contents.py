"""The dependency layer holds what the handlers import (POST /v1/validate's sacrebleu and rouge-score included).

Derived from the code, not from a list kept by hand: the third-party imports reachable from the handlers of
template.yaml (following first-party imports, function-level ones too, and the route areas the router loads
by name), and the modules that loading and running every CPU metric of core/validation actually loads, are
mapped to their distributions (``importlib.metadata.packages_distributions``) and looked up in
functions/aws/requirements.txt. The slow tests at the end run the real layer build (pip, PyPI, no Docker) into
a temporary folder, and check its CPython 3.12 bytecode.
"""

from __future__ import annotations

import ast
import importlib
import importlib.metadata as metadata
import json
import os
import platform
import re
import struct
import subprocess
import sys
from collections.abc import Iterable, Iterator
from functools import cache
from pathlib import Path
from types import ModuleType
from typing import Any

import pytest
from packaging.requirements import Requirement
from packaging.utils import canonicalize_name
from packaging.version import Version

from tests.infra.conftest import ROOT
from tests.infra.isolated_python import run_probe

pytestmark = pytest.mark.infra

REQUIREMENTS = ROOT / "functions" / "aws" / "requirements.txt"
FIRST_PARTY = ("core", "adapters", "functions")
#: The Lambda python3.12 runtime ships boto3 (and what it depends on): the layer need not.
RUNTIME_PROVIDED = ("boto3",)
#: POST /v1/validate and its CPU metrics: the walk from the handlers must reach them (embedding similarity and
#: fluency call model backends through the gateway: no library of their own).
ROUTE_MODULES = ("core.api.validate", "core.validation.reference", "core.validation.diversity")
EM_AARCH64 = 183


# --- what the code imports --------------------------------------------------------------------------


def handler_modules() -> list[str]:
    """``functions.aws.api`` for ``Handler: functions.aws.api.handler`` in template.yaml."""
    handlers = re.findall(r"^\s*Handler:\s*([\w.]+)\s*$", (ROOT / "template.yaml").read_text(), re.MULTILINE)
    assert handlers, "no Handler in template.yaml"
    return sorted({h.rsplit(".", 1)[0] for h in handlers})


def source_of(module: str) -> Path | None:
    path = ROOT.joinpath(*module.split("."))
    if (path / "__init__.py").is_file():
        return path / "__init__.py"
    return path.with_suffix(".py") if path.with_suffix(".py").is_file() else None


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING"
    )


def imported_names(module: str, source: Path) -> Iterator[str]:
    """Every module an ``import`` of ``module`` names, at any depth (lazy imports in functions too), except
    under ``if TYPE_CHECKING:``; ``from a import b`` yields ``a`` and ``a.b`` (b may be a submodule)."""
    package = module.split(".") if source.name == "__init__.py" else module.split(".")[:-1]

    def visit(node: ast.AST) -> Iterator[str]:
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            for statement in node.orelse:
                yield from visit(statement)
            return
        if isinstance(node, ast.Import):
            yield from (alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                base = ".".join([*package[: len(package) - node.level + 1], *([node.module] if node.module else [])])
            yield base
            yield from (f"{base}.{alias.name}" for alias in node.names)
        for child in ast.iter_child_nodes(node):
            yield from visit(child)

    yield from visit(ast.parse(source.read_text(), str(source)))


def loaded_by_name(module: str) -> list[str]:
    """Modules that ``module`` has imported at run time by name, with no import statement to follow: core.api's
    route areas (``build_router`` -> ``Router.include``, each loaded on first need)."""
    if module == "core.api":
        return [f"core.api.{area}" for area, _ in importlib.import_module("core.api").AREAS]
    return []


@cache
def reachable(starts: tuple[str, ...]) -> tuple[frozenset[str], dict[str, frozenset[str]]]:
    """First-party modules reachable from ``starts``, and third-party top-level modules -> who imports them."""
    seen: set[str] = set()
    third_party: dict[str, set[str]] = {}
    todo = list(starts)
    while todo:
        module = todo.pop()
        if module in seen:
            continue
        seen.add(module)
        source = source_of(module)
        if source is None:  # a name imported from a module, not a module
            continue
        parts = module.split(".")
        todo += [".".join(parts[:i]) for i in range(1, len(parts))]  # importing a.b.c runs a and a.b
        todo += loaded_by_name(module)
        for name in imported_names(module, source):
            top = name.split(".")[0]
            if top in FIRST_PARTY:
                todo.append(name)
            elif top and top != "__future__" and top not in sys.stdlib_module_names:
                third_party.setdefault(top, set()).add(module)
    found = frozenset(m for m in seen if source_of(m) is not None)
    return found, {k: frozenset(v) for k, v in third_party.items()}


# --- what requirements.txt provides --------------------------------------------------------------------


def requirements() -> list[Requirement]:
    lines = (re.sub(r"(^|\s)#.*", "", line).strip() for line in REQUIREMENTS.read_text().splitlines())
    return [Requirement(line) for line in lines if line]


def dependencies(name: str, extras: Iterable[str] = ()) -> list[Requirement]:
    """What the installed distribution ``name`` requires, with ``extras``, on this machine."""
    found = []
    try:
        texts = metadata.requires(name) or []
    except metadata.PackageNotFoundError:  # not installed here: its own dependencies are unknown
        return []
    for text in texts:
        requirement = Requirement(text)
        # evaluate() starts from this interpreter's environment (python_version, sys_platform...).
        if requirement.marker is None or any(requirement.marker.evaluate({"extra": e}) for e in ("", *extras)):
            found.append(requirement)
    return found


def closure(roots: Iterable[Requirement]) -> set[str]:
    """The canonical names of ``roots`` and everything they pull in (from this venv's metadata)."""
    names: set[str] = set()
    todo = list(roots)
    while todo:
        requirement = todo.pop()
        name = canonicalize_name(requirement.name)
        key = f"{name}[{','.join(sorted(requirement.extras))}]"
        if key in names:
            continue
        names.add(key)
        names.add(name)
        todo += dependencies(name, requirement.extras)
    return {n for n in names if "[" not in n}


def runtime_provided() -> set[str]:
    return closure(Requirement(name) for name in RUNTIME_PROVIDED)


def declared() -> set[str]:
    """What requirements.txt names, with what its extras add (pyjwt[crypto] -> cryptography)."""
    names: set[str] = set()
    for requirement in requirements():
        names.add(canonicalize_name(requirement.name))
        base = {canonicalize_name(r.name) for r in dependencies(requirement.name)}
        with_extras = {canonicalize_name(r.name) for r in dependencies(requirement.name, requirement.extras)}
        names |= with_extras - base
    return names


def distributions_of(modules: Iterable[str]) -> dict[str, set[str]]:
    """Top-level module -> canonical names of the installed distributions providing it (empty: not installed)."""
    index = metadata.packages_distributions()
    return {m: {canonicalize_name(d) for d in index.get(m, [])} for m in modules}


# --- the code against requirements.txt (fast) ---------------------------------------------------------


def test_handlers_reach_the_validate_route() -> None:
    """The walk below covers POST /v1/validate (else a broken walk would pass everything)."""
    modules, third_party = reachable(tuple(handler_modules()))
    assert set(ROUTE_MODULES) <= modules, set(ROUTE_MODULES) - modules
    assert {"sacrebleu", "rouge_score"} <= set(third_party)


def test_every_third_party_import_of_the_handlers_is_a_requirement() -> None:
    """Each third-party module the handlers' code imports comes from a distribution that requirements.txt
    names itself (a transitive dependency can vanish in the next release) or that the runtime ships."""
    _, third_party = reachable(tuple(handler_modules()))
    allowed = declared() | runtime_provided()
    missing = {}
    for module, dists in distributions_of(third_party).items():
        if not dists & allowed:
            missing[module] = f"{sorted(dists) or 'not installed'}, imported by {sorted(third_party[module])}"
    assert not missing, f"add to functions/aws/requirements.txt: {missing}"


def test_every_requirement_is_imported_by_the_handlers() -> None:
    """No dead weight in the layer, and nothing the Lambda runtime already has."""
    _, third_party = reachable(tuple(handler_modules()))
    used = set().union(*distributions_of(third_party).values())
    for requirement in requirements():
        name = canonicalize_name(requirement.name)
        assert name not in runtime_provided(), f"{name} comes with the Lambda runtime"
        assert name in used, f"{name} is in functions/aws/requirements.txt but no handler imports it"


PROBE = """
import json, sys, sysconfig
from pathlib import Path
before = set(sys.modules)
import core.api.validate
from core.validation.report import METRICS, Inputs, evaluate
names = [name for name, info in METRICS.items() if info.source == "cpu"]
inputs = Inputs(
    candidates=["The cat sat on the mat.", "A dog ran in the park, call +44 20 7946 0958", ""],
    references=[["The cat is on the mat."], ["A dog runs in a park."], ["Nothing."]],
    training=["the cat sat on the mat and then the dog ran in the park"],
    ngram=3,
)
report = evaluate(names, inputs)
# Third-party code lives in site-packages here, in the layer given as the argument there.
roots = [Path(p) for p in sys.argv[1:]] or [Path(sysconfig.get_paths()[k]) for k in ("purelib", "platlib")]
roots = [r.resolve() for r in roots]
loaded = set()
for name in set(sys.modules) - before:
    path = getattr(sys.modules[name], "__file__", None)
    if path and any(root in Path(path).resolve().parents for root in roots):
        loaded.add(name.split(".")[0])
print(json.dumps({"loaded": sorted(loaded), "metrics": sorted(report.metrics)}))
"""


def test_what_the_metrics_load_at_run_time_is_installed_from_requirements() -> None:
    """Run every CPU metric in a fresh interpreter: whatever it loads from site-packages (sacrebleu's and
    rouge-score's own imports: numpy, nltk, regex, lxml...) is in requirements.txt's dependency closure."""
    done = subprocess.run(
        [sys.executable, "-c", PROBE], cwd=ROOT, capture_output=True, text=True, timeout=120, check=False
    )
    assert done.returncode == 0, done.stderr
    probe = json.loads(done.stdout)
    assert {"bleu", "chrf", "rougeL", "self_bleu"} <= set(probe["metrics"])
    assert {"sacrebleu", "rouge_score"} <= set(probe["loaded"])
    allowed = closure(requirements()) | runtime_provided()
    outside = {m: sorted(d) for m, d in distributions_of(probe["loaded"]).items() if not d & allowed}
    assert not outside, f"loaded at run time but not installed by functions/aws/requirements.txt: {outside}"


# --- the build command (fast) ----------------------------------------------------------------------------


@pytest.fixture(scope="module")
def compute(cdk: None) -> ModuleType:
    return importlib.import_module("textnlp_cdk.compute")  # cdk/ is on sys.path (conftest)


@pytest.fixture(scope="module")
def bytecode(cdk: None) -> ModuleType:
    """``python312()``, the one finder of CPython 3.12 (PATH, pyenv, TEXTNLP_PYTHON312), and the compile step."""
    return importlib.import_module("textnlp_cdk.bytecode")


def test_sdist_only_packages_are_built_to_wheels_first(compute: ModuleType) -> None:
    sdists = compute.sdist_only_requirements(REQUIREMENTS)
    assert sdists == ["rouge-score>=0.1.2"], "keep the floor: rouge-score 0.0.4 has a wheel pip would fall back to"
    wheel, install = compute.layer_commands(["pip"], "requirements.txt", "/out/python", "/wheels", sdists)
    assert wheel == [
        "pip",
        "wheel",
        "--quiet",
        "--disable-pip-version-check",
        "--no-deps",
        "--no-binary=rouge-score",
        "--wheel-dir",
        "/wheels",
        "rouge-score>=0.1.2",
    ]
    assert install[:2] == ["pip", "install"]
    assert set(compute.PIP_PLATFORM_ARGS) <= set(install)
    assert "--only-binary=:all:" in install
    assert not [a for a in install if a.startswith("--no-binary")]
    assert install[install.index("--find-links") + 1] == "/wheels"
    assert install[-4:] == ["--target", "/out/python", "-r", "requirements.txt"]


def test_no_wheel_step_without_sdist_only_requirements(compute: ModuleType, tmp_path: Path) -> None:
    plain = tmp_path / "requirements.txt"
    plain.write_text("# rouge-score>=0.1.2 is commented out\npydantic>=2.7  # rouge-score\n")
    assert compute.sdist_only_requirements(plain) == []
    wheel, install = compute.layer_commands(["pip"], str(plain), "/out", "/wheels", [])
    assert wheel is None
    assert install[1] == "install"


def test_docker_command_does_the_same(compute: ModuleType) -> None:
    command = compute.docker_layer_command()
    wheel, install, compile_ = command.split(" && ")
    assert "pip wheel" in wheel
    assert "'rouge-score>=0.1.2'" in wheel
    assert "--find-links /tmp/wheelhouse" in install
    assert "-r requirements.txt" in install
    assert compile_.startswith("env PYTHONHASHSEED=0 python -m compileall ")  # the build image's python is 3.12
    assert "--invalidation-mode unchecked-hash" in compile_
    assert compile_.endswith("-s /asset-output/python -p /opt/python /asset-output/python")


def test_compileall_leaves_out_test_folders_below_the_root_only(bytecode: ModuleType) -> None:
    pattern = re.compile(bytecode.skip_dirs_regex("/work/tests/out/python", ["test", "tests"]))
    assert pattern.search("/work/tests/out/python/numpy/_core/tests/test_api.py")
    assert pattern.search("/work/tests/out/python/nltk/test/unit/test_x.py")
    assert not pattern.search("/work/tests/out/python/numpy/testing/__init__.py")
    assert not pattern.search("/work/tests/out/python/botocore/session.py"), "the root's own /tests/ is no test folder"


def test_without_python312_the_layer_says_so(
    bytecode: ModuleType, tmp_path: Path, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
) -> None:
    """No CPython 3.12 on the build machine: the synth goes on, with a warning, a marker, another hash."""
    monkeypatch.setattr(bytecode, "python312", lambda: None)
    (tmp_path / "m.py").write_text("x = 1\n")
    assert bytecode.compile_tree(tmp_path, "/opt/python", what="the dependency layer") is False
    assert "WARNING: no CPython 3.12 found" in capsys.readouterr().err
    assert "Install Python 3.12" in (tmp_path / bytecode.NO_BYTECODE).read_text()
    assert not list(tmp_path.rglob("*.pyc"))
    assert bytecode.recipe() == "no-bytecode"


def test_impure_wheels(compute: ModuleType, tmp_path: Path) -> None:
    for name in (
        "rouge_score-0.1.2-py3-none-any.whl",
        "six-1.17.0-py2.py3-none-any.whl",
        "x-1.0-cp311-cp311-linux_x86_64.whl",
    ):
        (tmp_path / name).touch()
    assert compute.impure_wheels(tmp_path) == ["x-1.0-cp311-cp311-linux_x86_64.whl"]


# --- the real build (slow: pip and PyPI; ~15 s each with a warm pip cache) ----------------------------


def dist_infos(layer: Path) -> dict[str, Path]:
    return {canonicalize_name(p.name.split("-")[0]): p for p in layer.glob("*.dist-info")}


def wheel_tags(dist_info: Path) -> list[str]:
    return [
        line.split(":", 1)[1].strip()
        for line in (dist_info / "WHEEL").read_text().splitlines()
        if line.startswith("Tag:")
    ]


def elf_machine(path: Path) -> int | None:
    with path.open("rb") as f:
        head = f.read(20)
    if head[:4] != b"\x7fELF":
        return None
    return int(struct.unpack("<H" if head[5] == 1 else ">H", head[18:20])[0])


def layer_mb(layer: Path) -> float:
    return sum(f.stat().st_size for f in layer.rglob("*") if f.is_file() and not f.is_symlink()) / 1e6


@pytest.fixture(scope="module")
def arm64_layer(compute: ModuleType, tmp_path_factory: pytest.TempPathFactory) -> Path:
    layer = tmp_path_factory.mktemp("layer-arm64") / "python"
    compute.build_layer(layer)
    return layer


def test_layer_build_installs_the_handlers_dependencies_for_arm64(arm64_layer: Path, compute: ModuleType) -> None:
    installed = dist_infos(arm64_layer)
    _, third_party = reachable(tuple(handler_modules()))
    needed = set().union(*distributions_of(third_party).values()) - runtime_provided()
    assert needed <= set(installed), needed - set(installed)
    rouge = installed["rouge-score"]
    assert Version(rouge.name.removesuffix(".dist-info").split("-")[1]) >= Version("0.1.2"), rouge.name
    assert wheel_tags(rouge) == ["py3-none-any"]
    size = layer_mb(arm64_layer)
    print(f"\ndependency layer: {size:.1f} MB unzipped, {len(installed)} distributions: {sorted(installed)}")
    assert size < compute.LAYER_BUDGET_MB
    assert not {"torch", "tensorflow", "transformers", "scipy", "pandas"} & set(installed)


def test_layer_holds_no_code_for_another_machine(arm64_layer: Path) -> None:
    for dist_info in arm64_layer.glob("*.dist-info"):
        for tag in wheel_tags(dist_info):
            python, abi, plat = tag.split("-")
            assert plat == "any" or ("aarch64" in plat and plat.startswith("manylinux")), f"{dist_info.name}: {tag}"
            assert abi in ("none", "abi3", "cp312"), f"{dist_info.name}: {tag}"
            assert python.startswith("py") or python == "cp312" or abi == "abi3", f"{dist_info.name}: {tag}"
    shared = [p for p in arm64_layer.rglob("*") if p.is_file() and (p.suffix == ".so" or ".so." in p.name)]
    assert shared, "no compiled module at all: was the layer built?"
    wrong = [str(p.relative_to(arm64_layer)) for p in shared if elf_machine(p) not in (EM_AARCH64, None)]
    assert not wrong, f"not arm64: {wrong}"
    extensions = [p.name for p in shared if ".cpython-" in p.name]
    assert all(".cpython-312-aarch64-linux-gnu.so" in n for n in extensions), extensions
    cached = [p for p in arm64_layer.rglob("__pycache__/*") if p.is_file()]
    assert all(p.name.endswith(".cpython-312.pyc") for p in cached), "bytecode of python3.12 only (no -O, no other)"


LAYER_PROBE = """
import importlib, json, sys
from pathlib import Path
layer = Path(sys.argv[1]).resolve()
compiled = []
sys.addaudithook(lambda event, args: compiled.append(args[1]) if event == "compile" else None)
for name in sys.argv[2:]:
    importlib.import_module(name)
files = {n: Path(getattr(m, "__file__", None) or "/").resolve() for n, m in list(sys.modules.items())}
loaded = sorted(n for n, f in files.items() if f.is_relative_to(layer))
print(json.dumps({"loaded": loaded, "compiled": [f for f in compiled if str(layer) in f]}))
"""
#: Pure-Python packages of the layer, importable here whatever the CPU (pydantic needs its arm64 pydantic_core).
PURE = ("botocore.session", "botocore.client", "pynamodb.models", "httpx", "dateutil.parser")


def test_layer_bytecode_is_python312_unchecked_hash(arm64_layer: Path, bytecode: ModuleType, tmp_path: Path) -> None:
    """botocore, pydantic... have python3.12 .pyc (magic number of 3.12, unchecked-hash), and python3.12 uses
    them: importing the layer's pure-Python packages compiles nothing from source."""
    interpreter = bytecode.python312()
    if interpreter is None:
        assert (arm64_layer / bytecode.NO_BYTECODE).is_file(), "built without bytecode but not marked"
        pytest.skip("no CPython 3.12 (PATH, pyenv or TEXTNLP_PYTHON312): the layer has no .pyc, as its marker says")
    assert not (arm64_layer / bytecode.NO_BYTECODE).exists()
    magic = subprocess.run(
        [str(interpreter), "-c", "import importlib.util; print(importlib.util.MAGIC_NUMBER.hex())"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout.strip()
    for module in ("botocore/__init__", "botocore/session", "pydantic/__init__", "pydantic/main", "jwt/api_jwt"):
        pyc = bytecode.cached(arm64_layer / f"{module}.py")
        assert pyc.is_file(), f"no bytecode for {module}.py"
        assert pyc.read_bytes()[:4].hex() == magic, f"{pyc.name}: not python3.12's magic number"
        assert bytecode.pyc_flags(pyc) == 0b01, f"{pyc.name}: not unchecked-hash"
    skip = re.compile(bytecode.skip_dirs_regex(str(arm64_layer), ["test", "tests"]))
    sources = [p for p in arm64_layer.rglob("*.py") if not skip.search(str(p))]
    missing = [str(p.relative_to(arm64_layer)) for p in sources if not bytecode.cached(p).is_file()]
    assert not missing, f"{len(missing)} of {len(sources)} modules without .pyc: {missing[:10]}"
    tests = [p for p in arm64_layer.rglob("__pycache__/*.pyc") if skip.search(str(p))]
    assert not tests, "test suites are left uncompiled"
    pyc_mb = sum(p.stat().st_size for p in arm64_layer.rglob("*.pyc")) / 1e6
    print(f"\nlayer bytecode: {len(sources)} modules, {pyc_mb:.1f} MB of .pyc")
    probe = run_probe(interpreter, LAYER_PROBE, arm64_layer, *PURE, cwd=tmp_path)
    assert {"botocore", "pynamodb", "httpx", "urllib3"} <= {n.split(".")[0] for n in probe["loaded"]}
    assert not probe["compiled"], f"compiled from source despite the .pyc: {probe['compiled'][:10]}"


def host_platform_args(compute: ModuleType) -> list[str]:
    """PIP_PLATFORM_ARGS with this machine's architecture: a layer this machine can import and run."""
    machine = platform.machine()
    return [a.replace("aarch64", machine) for a in compute.PIP_PLATFORM_ARGS]


def test_same_build_for_this_machine_serves_the_metrics(
    compute: ModuleType, bytecode: ModuleType, tmp_path: Path, arm64_layer: Path
) -> None:
    """The arm64 layer cannot be imported here; the same build for this machine's CPU must run every metric
    in a bare python3.12 (no site-packages: the layer and the repository only), as Lambda would."""
    interpreter = bytecode.python312()
    if interpreter is None or platform.machine() not in ("x86_64", "aarch64"):
        pytest.skip("needs CPython 3.12 on x86_64 or aarch64 (PATH, pyenv or TEXTNLP_PYTHON312)")
    layer = tmp_path / "python"
    # No bytecode (~5 s saved): the arm64 layer's .pyc, the same for every CPU, are checked above.
    compute.build_layer(layer, platform_args=host_platform_args(compute), bytecode=False)
    assert set(dist_infos(layer)) == set(dist_infos(arm64_layer)), "same distributions whatever the machine"
    env = {"PYTHONPATH": f"{layer}{os.pathsep}{ROOT}", "HOME": str(tmp_path), "PATH": os.defpath}
    done = subprocess.run(
        [str(interpreter), "-S", "-B", "-c", PROBE, str(layer)],
        cwd=tmp_path,
        env=env,
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, Any] = json.loads(done.stdout)
    assert {"bleu", "chrf", "rouge1", "rouge2", "rougeL", "self_bleu", "pii"} <= set(result["metrics"])
    assert {"sacrebleu", "rouge_score", "nltk", "numpy", "pydantic"} <= set(result["loaded"]), "from the layer"
