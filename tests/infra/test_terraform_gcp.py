"""terraform/gcp: the wiring read from the HCL (python-hcl2), `terraform fmt`, `terraform validate` where the
google provider can be installed, and checkov from its own venv (.venv-checkov, `make checkov`).

Not marked ``infra``: parsing takes well under a second, so ``make unit`` and ``make test`` both run it.
"""

from __future__ import annotations

import ast
import re
from collections import defaultdict
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import ROOT
from tests.infra.terraform_checks import block, check_checkov, check_fmt, check_validate, terraform_binary

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is a dev dependency: pip install -e '.[dev]'")

TF_DIR = ROOT / "terraform" / "gcp"

# What each account may hold, as (role, where). `where` names the resource the role is granted on:
# "project" (with the Firestore condition where it says so), a bucket, a secret, an account or a service.
# A custom role is named by its resource address.
CUSTOM = "google_project_iam_custom_role"
EXPECTED_ROLES: dict[str, set[tuple[str, str]]] = {
    "api": {
        ("roles/datastore.user", "project:firestore-database"),
        ("roles/storage.objectUser", "google_storage_bucket.data"),
        ("roles/storage.objectUser", "google_storage_bucket.input"),
        ("roles/secretmanager.secretAccessor", "google_secret_manager_secret.admin_key"),
        (f"{CUSTOM}.signing_keys_writer", "google_secret_manager_secret.signing_keys"),
        (f"{CUSTOM}.vertex_invoker", "project"),
        (f"{CUSTOM}.vertex_tuner", "project"),
        ("roles/iam.serviceAccountUser", "google_service_account.training"),
    },
    "batch": {
        ("roles/datastore.user", "project:firestore-database"),
        ("roles/storage.objectViewer", "google_storage_bucket.input"),
        ("roles/storage.objectUser", "google_storage_bucket.data"),
        (f"{CUSTOM}.vertex_invoker", "project"),
    },
    "trigger": {
        ("roles/eventarc.eventReceiver", "project"),
        ("roles/run.invoker", "google_cloudfunctions2_function.batch"),
    },
    "build": {
        ("roles/logging.logWriter", "project"),
        ("roles/artifactregistry.writer", "project"),
        ("roles/storage.objectViewer", "google_storage_bucket.source"),
    },
    "training": {
        ("roles/storage.objectUser", "google_storage_bucket.data"),
    },
}
# What the code needs from each account, checked against the grants above: the buckets and secrets each
# function's environment names must be granted to it (functions/gcp reads them at start).
FUNCTION_ACCOUNTS = {"api": "api", "batch": "batch"}
# Collections whose documents carry an expiry (counters and cache entries, as DynamoDB's TTL does on AWS).
EXPIRING_COLLECTIONS = {"counters", "cache"}
# Built-in metric types the dashboard and alerts may use besides the log-based ones.
BUILTIN_METRICS = {
    "run.googleapis.com/request_count",
    "run.googleapis.com/request_latencies",
    "aiplatform.googleapis.com/prediction/online/prediction_count",
    "aiplatform.googleapis.com/prediction/online/error_count",
    "aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle",
    "aiplatform.googleapis.com/prediction/online/accelerator/memory/bytes_used",
}
IAM_TYPES = (
    "google_project_iam_member",
    "google_storage_bucket_iam_member",
    "google_secret_manager_secret_iam_member",
    "google_service_account_iam_member",
    "google_cloud_run_v2_service_iam_member",
)
BASIC_ROLES = {"roles/owner", "roles/editor", "roles/viewer"}


# -- parsing -----------------------------------------------------------------------------------------------


class Config:
    """Every block of every .tf file in terraform/gcp, as plain dicts (quotes stripped)."""

    def __init__(self, directory: Path) -> None:
        options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
        self.resources: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.data: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.locals: dict[str, Any] = {}
        self.variables: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.terraform: list[dict[str, Any]] = []
        self.text = ""
        for path in sorted(directory.glob("*.tf")):
            text = path.read_text()
            self.text += text
            with path.open() as handle:
                parsed = hcl2.load(handle, serialization_options=options)
            for part in parsed.get("resource", []):
                for type_name, named in part.items():
                    self.resources[type_name].update(named)
            for part in parsed.get("data", []):
                for type_name, named in part.items():
                    self.data[type_name].update(named)
            for part in parsed.get("locals", []):
                self.locals.update(part)
            for part in parsed.get("variable", []):
                self.variables.update(part)
            for part in parsed.get("output", []):
                self.outputs.update(part)
            self.terraform.extend(parsed.get("terraform", []))

    def resource(self, address: str) -> dict[str, Any]:
        type_name, name = address.split(".", 1)
        assert name in self.resources.get(type_name, {}), f"{address} is not defined"
        return self.resources[type_name][name]

    def iam_members(self) -> Iterator[tuple[str, str, dict[str, Any]]]:
        for type_name in IAM_TYPES:
            for name, body in self.resources.get(type_name, {}).items():
                yield type_name, name, body


@pytest.fixture(scope="module")
def tf() -> Config:
    return Config(TF_DIR)


def refs(value: Any) -> set[str]:
    """The resource addresses (type.name) an expression mentions: ``${google_x.y.attr}``, ``google_x.y[0]``."""
    text = str(value)
    return {f"{m[0]}.{m[1]}" for m in re.findall(r"\b((?:google|random|data)_[a-z0-9_]+)\.([a-z0-9_]+)", text)}


def account_of(member: Any) -> str | None:
    found = re.search(r"google_service_account\.([a-z0-9_]+)", str(member))
    return found.group(1) if found else None


def grant_target(tf: Config, type_name: str, body: dict[str, Any]) -> str:
    if type_name == "google_project_iam_member":
        condition = body.get("condition")
        if condition:
            assert "local.firestore_condition" in str(block(condition)["expression"]), body
            return "project:firestore-database"
        return "project"
    field = {
        "google_storage_bucket_iam_member": "bucket",
        "google_secret_manager_secret_iam_member": "secret_id",
        "google_service_account_iam_member": "service_account_id",
        "google_cloud_run_v2_service_iam_member": "name",
    }[type_name]
    (target,) = {r.split("[")[0] for r in refs(body[field])}
    return target


def role_name(body: dict[str, Any]) -> str:
    role = str(body["role"])
    custom = re.search(rf"{CUSTOM}\.([a-z0-9_]+)", role)
    return f"{CUSTOM}.{custom.group(1)}" if custom else role


def grants(tf: Config) -> dict[str, set[tuple[str, str]]]:
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for type_name, _name, body in tf.iam_members():
        account = account_of(body["member"])
        if account is not None:
            found[account].add((role_name(body), grant_target(tf, type_name, body)))
    return found


# -- IAM ---------------------------------------------------------------------------------------------------


def test_every_account_has_exactly_the_roles_it_needs(tf: Config) -> None:
    assert set(tf.resources["google_service_account"]) == set(EXPECTED_ROLES)
    assert dict(grants(tf)) == EXPECTED_ROLES


def test_functions_run_as_their_own_accounts(tf: Config) -> None:
    for function, account in FUNCTION_ACCOUNTS.items():
        service = block(tf.resource(f"google_cloudfunctions2_function.{function}")["service_config"])
        assert refs(service["service_account_email"]) == {f"google_service_account.{account}"}
        build = block(tf.resource(f"google_cloudfunctions2_function.{function}")["build_config"])
        assert refs(build["service_account"]) == {"google_service_account.build"}


def test_no_basic_roles_and_no_project_wide_storage_or_secret_roles(tf: Config) -> None:
    for type_name, name, body in tf.iam_members():
        role = str(body["role"])
        assert role not in BASIC_ROLES, f"{type_name}.{name}"
        if type_name == "google_project_iam_member":
            assert not role.startswith(("roles/storage.", "roles/secretmanager.", "roles/aiplatform.")), name
            assert not role.startswith("roles/iam."), name
    assert "roles/editor" not in tf.text
    assert "roles/owner" not in tf.text


def test_firestore_roles_are_confined_to_the_database(tf: Config) -> None:
    condition = str(tf.locals["firestore_condition"])
    assert "projects/${var.project_id}/databases/${google_firestore_database.main.name}" in condition
    for _type, name, body in tf.iam_members():
        if body["role"] == "roles/datastore.user":
            assert "local.firestore_condition" in str(block(body["condition"])["expression"]), name


def test_custom_roles_hold_only_what_the_adapters_use(tf: Config) -> None:
    roles = tf.resources[CUSTOM]
    assert roles["vertex_invoker"]["permissions"] == ["aiplatform.endpoints.predict"]
    # adapters/gcp/secret_manager.py names these in its docstring; nothing may be added silently.
    assert set(roles["signing_keys_writer"]["permissions"]) == {
        "secretmanager.secrets.get",
        "secretmanager.secrets.update",
        "secretmanager.versions.access",
        "secretmanager.versions.add",
        "secretmanager.versions.destroy",
    }
    for permission in roles["vertex_tuner"]["permissions"]:
        assert permission.startswith(("aiplatform.customJobs.", "aiplatform.models.", "aiplatform.endpoints."))
        assert not permission.endswith((".delete", ".setIamPolicy"))


def env_of(tf: Config, function: str) -> dict[str, str]:
    name = {"api": "api_env", "batch": "batch_env"}[function]
    env: dict[str, str] = {}
    merged = str(tf.locals[name])
    env.update({k: str(v) for k, v in tf.locals["shared_env"].items()})
    for key, value in re.findall(r"(TEXTNLP_[A-Z_]+)\s*[:=]\s*\"?([^,}\"]+)", merged):
        env[key] = value
    service = block(tf.resource(f"google_cloudfunctions2_function.{function}")["service_config"])
    assert f"local.{name}" in str(service["environment_variables"])
    return env


def test_every_bucket_and_secret_a_function_is_given_is_granted_to_it(tf: Config) -> None:
    granted = grants(tf)
    for function, account in FUNCTION_ACCOUNTS.items():
        targets = {target for _role, target in granted[account]}
        for key, value in env_of(tf, function).items():
            for address in refs(value):
                if address.startswith(("google_storage_bucket.", "google_secret_manager_secret.")):
                    assert address in targets, f"{function}: {key} names {address}, which is not granted to it"
    api_env = env_of(tf, "api")
    assert "google_secret_manager_secret.admin_key" in api_env["TEXTNLP_ADMIN_KEY_SECRET"]
    assert "google_secret_manager_secret.signing_keys" in api_env["TEXTNLP_SIGNING_KEYS_SECRET"]
    batch_env = env_of(tf, "batch")
    assert "TEXTNLP_ADMIN_KEY_SECRET" not in batch_env
    assert "TEXTNLP_SIGNING_KEYS_SECRET" not in batch_env


def test_secrets_are_read_by_the_api_only(tf: Config) -> None:
    for _type, name, body in tf.iam_members():
        if _type == "google_secret_manager_secret_iam_member":
            assert account_of(body["member"]) == "api", name


# -- functions and trigger ---------------------------------------------------------------------------------


def test_api_is_http_with_concurrency_and_batch_is_an_event_function(tf: Config) -> None:
    api = tf.resource("google_cloudfunctions2_function.api")
    batch = tf.resource("google_cloudfunctions2_function.batch")
    assert block(api["build_config"])["entry_point"] == "api"
    assert block(batch["build_config"])["entry_point"] == "batch"
    assert "event_trigger" not in api
    assert "var.api_concurrency" in str(block(api["service_config"])["max_instance_request_concurrency"])
    validation = block(tf.variables["api_concurrency"]["validation"])
    assert ">= 2" in str(validation["condition"])
    assert int(tf.variables["api_concurrency"]["default"]) > 1
    assert block(batch["service_config"])["ingress_settings"] == "ALLOW_INTERNAL_ONLY"
    for function in (api, batch):
        assert block(function["build_config"])["runtime"].startswith("python3")


def test_trigger_points_at_the_batch_function_and_the_input_bucket(tf: Config) -> None:
    trigger = block(tf.resource("google_cloudfunctions2_function.batch")["event_trigger"])
    assert trigger["event_type"] == "google.cloud.storage.object.v1.finalized"
    assert trigger["retry_policy"] == "RETRY_POLICY_RETRY"
    assert refs(trigger["service_account_email"]) == {"google_service_account.trigger"}
    filters = trigger["event_filters"]
    filters = filters if isinstance(filters, list) else [filters]
    assert [(f["attribute"], refs(f["value"])) for f in filters] == [("bucket", {"google_storage_bucket.input"})]
    invoker = tf.resource("google_cloud_run_v2_service_iam_member.trigger_invokes_batch")
    assert refs(invoker["name"]) == {"google_cloudfunctions2_function.batch"}


def test_source_zip_holds_the_packages_and_the_entry_points(tf: Config) -> None:
    archive = tf.data["archive_file"]["source"]
    text = str(archive)
    assert "from functions.gcp.main import api, batch" in text
    assert "functions/gcp/requirements.txt" in text
    assert "{core,adapters}/**/*.py" in text
    assert "functions/gcp/**/*.py" in text
    obj = tf.resource("google_storage_bucket_object.source")
    assert "output_md5" in str(obj["name"])  # a code change is a new object, hence a new build


# -- storage -----------------------------------------------------------------------------------------------


def test_buckets_are_private_versioned_and_expire_what_they_should(tf: Config) -> None:
    buckets = tf.resources["google_storage_bucket"]
    assert set(buckets) == {"input", "data", "source", "logs"}
    for name, bucket in buckets.items():
        assert bucket["uniform_bucket_level_access"] is True, name
        assert bucket["public_access_prevention"] == "enforced", name
        assert block(bucket["versioning"])["enabled"] is True, name
        assert bucket["lifecycle_rule"], name

    def rules(name: str) -> list[tuple[str, str]]:
        found = []
        for rule in buckets[name]["lifecycle_rule"]:
            action, condition = block(rule["action"]), block(rule["condition"])
            found.append((action["type"], str(condition.get("matches_prefix", ""))))
        return found

    assert ("Delete", "['${local.prefix_batch_input}']") in rules("input")
    assert ("Delete", "['${local.prefix_batch_output}']") in rules("data")
    assert ("SetStorageClass", "['${local.prefix_models}']") in rules("data")
    for name in ("input", "data"):
        assert any(
            t == "Delete" and "days_since_noncurrent_time" in str(r)
            for (t, _), r in zip(rules(name), buckets[name]["lifecycle_rule"], strict=True)
        ), name


# -- Firestore ---------------------------------------------------------------------------------------------


def store_layout() -> dict[str, str]:
    """The collection names of the Firestore store (adapters/gcp/firestore_layout.py), read without importing it."""
    path = ROOT / "adapters" / "gcp" / "firestore_layout.py"
    names: dict[str, str] = {}
    if path.exists():
        for node in ast.parse(path.read_text()).body:
            if isinstance(node, ast.Assign) and isinstance(node.value, ast.Constant):
                for target in node.targets:
                    if isinstance(target, ast.Name) and isinstance(node.value.value, str):
                        names[target.id] = node.value.value
    return names


def test_ttl_policies_cover_the_collections_that_expire(tf: Config) -> None:
    database = tf.resource("google_firestore_database.main")
    assert database["type"] == "FIRESTORE_NATIVE"
    field = tf.resource("google_firestore_field.ttl")
    assert field["for_each"] == "${local.firestore_ttl_collections}"
    assert field["field"] == "${local.firestore_ttl_field}"
    assert tf.locals["firestore_ttl_field"] == "expires_at"
    assert "ttl_config" in field
    assert field["index_config"] in ({}, [], [{}])  # no single-field index on the TTL timestamp
    declared = set(tf.locals["firestore_ttl_collections"])
    assert declared == EXPIRING_COLLECTIONS
    layout = store_layout()
    if layout:  # the store's own names for the collections it expires
        assert {layout["COUNTERS"], layout["CACHE"]} == declared


def test_usage_queries_have_their_indexes(tf: Config) -> None:
    overrides = tf.locals["firestore_group_indexes"]
    daily = store_layout().get("DAILY", "daily")
    assert overrides == {daily: "day"}  # daily_usage of every tenant
    field = tf.resource("google_firestore_field.group_index")
    assert field["for_each"] == "${local.firestore_group_indexes}"
    indexes = block(field["index_config"])["indexes"]
    scopes = {(i["query_scope"], i["order"]) for i in indexes}
    assert ("COLLECTION_GROUP", "ASCENDING") in scopes
    assert {("COLLECTION", "ASCENDING"), ("COLLECTION", "DESCENDING")} <= scopes  # the defaults, kept


def test_usage_records_are_listed_by_index_shard_with_no_hotspot_on_created_at(tf: Config) -> None:
    """list_usage filters ``shard`` and ranges ``created_at`` (one query per shard, a tenant's or every
    tenant's): a composite index in both scopes, and no single-field index on the ever-increasing timestamp."""
    usage = store_layout().get("USAGE", "usage")
    assert tf.locals["firestore_usage_collection"] == usage
    assert tf.locals["firestore_usage_index_fields"] == ["shard", "created_at"]
    exempt = tf.resource("google_firestore_field.usage_created_at")
    assert (exempt["collection"], exempt["field"]) == ("${local.firestore_usage_collection}", "created_at")
    assert exempt["index_config"] in ({}, [], [{}])
    index = tf.resource("google_firestore_index.usage_by_shard")
    assert index["for_each"] == "${toset(local.firestore_usage_index_scopes)}"
    assert tf.locals["firestore_usage_index_scopes"] == ["COLLECTION", "COLLECTION_GROUP"]
    assert index["collection"] == "${local.firestore_usage_collection}"


# -- metrics, dashboard, alerts ----------------------------------------------------------------------------


def metric_references(text: str) -> tuple[set[str], set[str]]:
    """(log-based metric keys, built-in metric types) that an expression mentions."""
    keys = set(re.findall(r'local\.promql\[\\?"([a-z0-9_]+)\\?"\]', text))
    keys |= set(re.findall(r'google_logging_metric\.core\[\\?"([a-z0-9_]+)\\?"\]', text))
    builtin = set(re.findall(r"\b((?:run|aiplatform)\.googleapis\.com/[a-z0-9_/.]+)", text))
    return keys, builtin


def test_log_metrics_read_the_lines_the_metrics_adapter_writes(tf: Config) -> None:
    from adapters.gcp.metrics import DEFAULT_DIMENSIONS

    metric = tf.resource("google_logging_metric.core")
    assert metric["value_extractor"] == "EXTRACT(jsonPayload.value)"
    assert "jsonPayload.metric=" in str(metric["filter"])
    assert block(metric["metric_descriptor"])["value_type"] == "DISTRIBUTION"
    for name, spec in tf.locals["log_metrics"].items():
        assert len(spec["labels"]) <= 10, name
        assert set(spec["labels"]) <= DEFAULT_DIMENSIONS, (
            f"{name}: the adapter drops {set(spec['labels']) - DEFAULT_DIMENSIONS}"
        )


def test_dashboard_and_alerts_use_defined_metrics(tf: Config) -> None:
    defined = set(tf.locals["log_metrics"])
    monitoring = (TF_DIR / "monitoring.tf").read_text()
    keys, builtin = metric_references(monitoring)
    assert keys, "the dashboard reads no log-based metric"
    assert keys <= defined, f"not defined in local.log_metrics: {keys - defined}"
    assert builtin <= BUILTIN_METRICS, f"unknown built-in metrics: {builtin - BUILTIN_METRICS}"
    for wanted in (
        "tokens_generated_total",
        "request_latency_seconds",
        "requests_total",
        "cache_hits_total",
        "cache_misses_total",
        "limit_refusals_total",
    ):
        assert wanted in keys, wanted
    for wanted in ("prediction_count", "error_count", "duty_cycle", "memory/bytes_used"):
        assert any(m.endswith(wanted) for m in builtin), wanted
    policies = tf.resources["google_monitoring_alert_policy"]
    assert set(policies) == {"api_error_rate", "api_latency", "batch_failures", "endpoint_errors", "gpu_memory"}
    for name, policy in policies.items():
        _keys, used = metric_references(str(policy).replace("'", '"'))
        assert used, name
        assert used <= BUILTIN_METRICS, name
        assert "local.notification_channels" in str(policy["notification_channels"]), name


def test_vertex_sizes(tf: Config) -> None:
    sizes = tf.locals["vertex_sizes"]
    assert set(sizes) == {"small", "medium", "large", "xlarge"}
    assert (
        sizes["small"]["machine_type"],
        sizes["small"]["accelerator_type"],
        sizes["small"]["accelerator_count"],
    ) == ("g2-standard-4", "NVIDIA_L4", 1)
    assert (sizes["xlarge"]["machine_type"], sizes["xlarge"]["accelerator_count"]) == ("a2-highgpu-8g", 8)
    assert "A100" in sizes["xlarge"]["accelerator_type"]
    endpoint = tf.resource("google_vertex_ai_endpoint_with_model_garden_deployment.model")
    assert "local.vertex_enable" in str(endpoint["count"])


def test_variables_are_described_and_providers_pinned(tf: Config) -> None:
    for name, variable in tf.variables.items():
        assert variable.get("description"), name
    for name, output in tf.outputs.items():
        assert output.get("description"), name
    providers = block(block(tf.terraform[0])["required_providers"])
    for name in ("google", "random", "archive"):
        assert providers[name]["version"].startswith("~>"), name


# -- tools (tests/infra/terraform_checks.py) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def terraform() -> str:
    return terraform_binary()


def test_terraform_fmt(terraform: str) -> None:
    check_fmt(terraform, TF_DIR)


def test_terraform_validate(terraform: str, tmp_path: Path) -> None:
    """Needs the google provider: skipped (with the reason) where it cannot be downloaded."""
    check_validate(terraform, TF_DIR, tmp_path, "the google provider")


def test_checkov_clean_and_every_skip_needed() -> None:
    check_checkov(TF_DIR)
