"""terraform/azure: the wiring read from the HCL (python-hcl2), `terraform fmt`, `terraform validate` where the
azurerm and azapi providers can be installed, and checkov from its own venv (.venv-checkov, `make checkov`).

Not marked ``infra``: parsing takes well under a second, so ``make unit`` and ``make test`` both run it.
"""

from __future__ import annotations

import ast
import io
import json
import re
from collections import defaultdict
from pathlib import Path
from typing import Any

import pytest

from tests.infra.conftest import ROOT
from tests.infra.terraform_checks import block, check_checkov, check_fmt, check_validate, terraform_binary

hcl2 = pytest.importorskip("hcl2", reason="python-hcl2 is a dev dependency: pip install -e '.[dev]'")

TF_DIR = ROOT / "terraform" / "azure"

APP = "azurerm_function_app_flex_consumption.main"
# Who holds which role where, as (role, scope address). The principals: the function app's identity
# (local.app_principal), the Event Grid system topic's, the Azure ML workspace's and the training cluster's.
# README's Permissions table and iam.tf's header say the same.
EXPECTED_ROLES: dict[str, set[tuple[str, str]]] = {
    "app": {
        ("Storage Blob Data Owner", "azurerm_storage_account.host"),
        ("Storage Blob Data Contributor", "azurerm_storage_container.data"),
        ("Key Vault Secrets User", "azapi_resource.admin_key_secret"),
        ("Key Vault Secrets Officer", "azapi_resource.signing_keys_secret"),
        ("Monitoring Metrics Publisher", "azurerm_application_insights.main"),
        ("AzureML Data Scientist", "azurerm_machine_learning_workspace.main"),
    },
    "eventgrid": {
        ("Storage Blob Data Contributor", "azurerm_storage_container.deadletter"),
    },
    "azureml_workspace": {
        ("Storage Blob Data Reader", "azurerm_storage_container.data"),
        ("Storage Blob Data Contributor", "azurerm_storage_account.azureml"),
        ("Storage File Data Privileged Contributor", "azurerm_storage_account.azureml"),
        ("Key Vault Administrator", "azurerm_key_vault.azureml"),
    },
    "training": {
        ("Storage Blob Data Contributor", "azurerm_storage_container.data"),
    },
}
PRINCIPALS = {
    "local.app_principal": "app",
    "azurerm_eventgrid_system_topic.data": "eventgrid",
    "azurerm_machine_learning_workspace.main": "azureml_workspace",
    "azurerm_machine_learning_compute_cluster.training": "training",
}
# Control-plane roles that would hand out keys or everything: none may be granted.
BROAD_ROLES = {
    "Owner",
    "Contributor",
    "Reader",
    "User Access Administrator",
    "Storage Account Contributor",
    "Storage Account Key Operator Service Role",
    "DocumentDB Account Contributor",
    "Cosmos DB Operator",
    "Key Vault Contributor",
    "Website Contributor",
}
# Cosmos DB's built-in data-plane role "Cosmos DB Built-in Data Contributor".
COSMOS_DATA_CONTRIBUTOR = "00000000-0000-0000-0000-000000000002"
# The store's containers: hierarchical partition key [/tenant, /part]; default TTL -1 where items expire.
COSMOS_CONTAINERS = {"counters": -1, "usage": None, "documents": None, "cache": -1}
# The app settings the application code reads (the contract with adapters/azure and functions/azure).
REQUIRED_SETTINGS = {
    "TEXTNLP_COSMOS_ENDPOINT": "azurerm_cosmosdb_account.main",
    "TEXTNLP_COSMOS_DATABASE": "azurerm_cosmosdb_sql_database.main",
    "TEXTNLP_STORAGE_ACCOUNT_URL": "azurerm_storage_account.data",
    "TEXTNLP_BLOB_CONTAINER": "azurerm_storage_container.data",
    "TEXTNLP_KEYVAULT_URL": "azurerm_key_vault.main",
    "TEXTNLP_SIGNING_KEYS_SECRET": "azapi_resource.signing_keys_secret",
    "TEXTNLP_ADMIN_KEY_SECRET": "azapi_resource.admin_key_secret",
    "TEXTNLP_COUNTER_SLICES": None,
    "TEXTNLP_TIMEOUT_S": None,
    "TEXTNLP_LOG_LEVEL": None,
}
AZUREML_SETTINGS = {
    "TEXTNLP_AZUREML_SUBSCRIPTION": "var.subscription_id",
    "TEXTNLP_AZUREML_RESOURCE_GROUP": "local.resource_group_name",
    "TEXTNLP_AZUREML_WORKSPACE": "azurerm_machine_learning_workspace.main",
    "TEXTNLP_AZUREML_COMPUTE": "azurerm_machine_learning_compute_cluster.training",
    "TEXTNLP_AZUREML_DATASTORE": "azurerm_machine_learning_datastore_blobstorage.data",
    "TEXTNLP_TRAINING_IMAGE": "var.training_image",
}
# Attributes that hold account keys, SAS or connection strings: none may be read anywhere in the stack.
KEY_ATTRIBUTES = re.compile(
    r"\.(primary_access_key|secondary_access_key|primary_connection_string|secondary_connection_string|"
    r"primary_blob_connection_string|primary_key|secondary_key|primary_readonly_key|"
    r"primary_sql_connection_string|connection_strings|primary_master_key)\b"
)
ENDPOINT_SIZES = {
    "small": "Standard_NC4as_T4_v3",
    "medium": "Standard_NC24ads_A100_v4",
    "large": "Standard_NC48ads_A100_v4",
    "xlarge": "Standard_ND96asr_v4",
}
# terraform/gcp's dashboard panels and the workbook item that shows the same thing on Azure.
GCP_PANELS = {
    "Tokens generated per minute": "tokens",
    "Request latency p50 / p95 / p99 (gateway, s)": "gateway_latency",
    "Request latency p50 / p95 / p99 (Cloud Run, api, ms)": "host_latency",
    "Errors by status": "errors",
    "Cache hit ratio (%)": "cache",
    "Quota and rate-limit refusals": "refusals",
    "Batch lines": "batch_lines",
    "Vertex AI predictions and errors": "endpoint_requests",
    "GPU utilisation (duty cycle, %)": "gpu_utilisation",
    "GPU memory in use (bytes)": "gpu_memory",
    "Batch deliveries by response class (Cloud Run)": "batch_runs",
}
# Resources that take tags: each must carry local.tags and a name built from the prefix variables.
TAGGED = (
    "azurerm_resource_group",
    "azurerm_storage_account",
    "azurerm_cosmosdb_account",
    "azurerm_key_vault",
    "azurerm_service_plan",
    "azurerm_function_app_flex_consumption",
    "azurerm_eventgrid_system_topic",
    "azurerm_log_analytics_workspace",
    "azurerm_application_insights",
    "azurerm_application_insights_workbook",
    "azurerm_monitor_action_group",
    "azurerm_monitor_scheduled_query_rules_alert_v2",
    "azurerm_monitor_metric_alert",
    "azurerm_machine_learning_workspace",
    "azurerm_machine_learning_compute_cluster",
    "azapi_resource",
)


# -- parsing -----------------------------------------------------------------------------------------------


class Config:
    """Every block of every .tf file in terraform/azure, as plain dicts (quotes stripped)."""

    def __init__(self, directory: Path) -> None:
        options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
        self.resources: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.data: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.ephemeral: dict[str, dict[str, dict[str, Any]]] = defaultdict(dict)
        self.locals: dict[str, Any] = {}
        self.variables: dict[str, dict[str, Any]] = {}
        self.outputs: dict[str, dict[str, Any]] = {}
        self.terraform: list[dict[str, Any]] = []
        self.text = ""
        for path in sorted(directory.glob("*.tf")):
            self.text += path.read_text()
            with path.open() as handle:
                parsed = hcl2.load(handle, serialization_options=options)
            for kind, target in (("resource", self.resources), ("data", self.data), ("ephemeral", self.ephemeral)):
                for found in parsed.get(kind, []):
                    for type_name, named in found.items():
                        target[type_name].update(named)
            for found in parsed.get("locals", []):
                self.locals.update(found)
            for found in parsed.get("variable", []):
                self.variables.update(found)
            for found in parsed.get("output", []):
                self.outputs.update(found)
            self.terraform.extend(parsed.get("terraform", []))

    def resource(self, address: str) -> dict[str, Any]:
        type_name, name = address.split(".", 1)
        assert name in self.resources.get(type_name, {}), f"{address} is not defined"
        return self.resources[type_name][name]


@pytest.fixture(scope="module")
def tf() -> Config:
    return Config(TF_DIR)


def refs(value: Any) -> set[str]:
    """The resource addresses (type.name) an expression mentions: ``${azurerm_x.y.attr}``, ``azapi_x.y[0].id``."""
    return {
        f"{m[0]}.{m[1]}"
        for m in re.findall(r"\b((?:azurerm|azapi|random|terraform)_[a-z0-9_]+)\.([a-z0-9_]+)", str(value))
    }


def blocks(value: Any) -> list[dict[str, Any]]:
    return value if isinstance(value, list) else [value]


def principal_of(value: Any) -> str:
    text = str(value)
    found = [name for marker, name in PRINCIPALS.items() if marker in text]
    assert len(found) == 1, f"unknown principal: {text}"
    return found[0]


def role_assignments(tf: Config) -> dict[str, set[tuple[str, str]]]:
    found: dict[str, set[tuple[str, str]]] = defaultdict(set)
    for name, body in tf.resources["azurerm_role_assignment"].items():
        (scope,) = refs(body["scope"]) or {f"unscoped:{name}"}
        found[principal_of(body["principal_id"])].add((body["role_definition_name"], scope))
    return found


def settings(tf: Config) -> dict[str, Any]:
    merged: dict[str, Any] = {}
    for name in ("host_storage_settings", "textnlp_settings", "azureml_settings"):
        value = tf.locals[name]
        if isinstance(value, str):  # a conditional: `cond ? {...} : {}`, kept as text by python-hcl2
            merged.update(dict(re.findall(r"(TEXTNLP_[A-Z0-9_]+)\s*[=:]\s*([^,\n}]+)", value)))
        else:
            merged.update(value)
    return merged


def code_reads() -> set[str]:
    """The TEXTNLP_* settings functions/azure and adapters/azure read (empty when not written yet)."""
    names: set[str] = set()
    for directory in (ROOT / "functions" / "azure", ROOT / "adapters" / "azure"):
        for path in directory.glob("*.py") if directory.exists() else []:
            names |= set(re.findall(r"\b(TEXTNLP_[A-Z0-9_]+)\b", path.read_text()))
    return names


def module_constants(path: Path) -> dict[str, Any]:
    """The module-level constants (strings, numbers, lists, dicts of them) of a file, read without importing it."""
    found: dict[str, Any] = {}
    if path.exists():
        for node in ast.parse(path.read_text()).body:
            targets = (
                node.targets
                if isinstance(node, ast.Assign)
                else [node.target]
                if isinstance(node, ast.AnnAssign)
                else []
            )
            for target in targets:
                if isinstance(target, ast.Name) and node.value is not None:
                    try:
                        found[target.id] = ast.literal_eval(node.value)
                    except ValueError:
                        continue
    return found


# -- identity and roles ------------------------------------------------------------------------------------


def test_every_identity_has_exactly_the_roles_it_needs(tf: Config) -> None:
    assert dict(role_assignments(tf)) == EXPECTED_ROLES


def test_role_assignments_are_data_plane_and_narrowly_scoped(tf: Config) -> None:
    for name, body in tf.resources["azurerm_role_assignment"].items():
        role, scope = body["role_definition_name"], str(body["scope"])
        assert role not in BROAD_ROLES, name
        assert "role_definition_id" not in body, name  # built-in roles by name: readable, checked above
        assert "resource_group" not in scope, f"{name}: {scope}"
        assert "subscription" not in scope, f"{name}: {scope}"
        assert body["principal_type"] == "ServicePrincipal", name  # managed identities only
        if role == "Storage Blob Data Owner":
            assert refs(scope) == {"azurerm_storage_account.host"}, name  # the host's account, no tenant data
    # the tenant data container and the secrets are granted per container and per secret, not per account
    app = role_assignments(tf)["app"]
    assert ("Storage Blob Data Contributor", "azurerm_storage_container.data") in app
    assert not any(scope == "azurerm_storage_account.data" for _role, scope in app)
    assert not any(scope == "azurerm_key_vault.main" for _role, scope in app)


def test_cosmos_access_is_the_data_plane_role_on_the_database(tf: Config) -> None:
    (assignment,) = tf.resources["azurerm_cosmosdb_sql_role_assignment"].values()
    assert "local.app_principal" in str(assignment["principal_id"])
    assert "local.cosmos_data_contributor" in str(assignment["role_definition_id"])
    assert tf.locals["cosmos_data_contributor"] == COSMOS_DATA_CONTRIBUTOR
    assert str(assignment["scope"]) == (
        "${azurerm_cosmosdb_account.main.id}/dbs/${azurerm_cosmosdb_sql_database.main.name}"
    )
    assert "${local.prefix}" in str(assignment["name"])  # a stable GUID per stack (uuidv5)


def test_app_runs_as_its_system_assigned_identity(tf: Config) -> None:
    app = tf.resource(APP)
    assert block(app["identity"])["type"] == "SystemAssigned"
    assert str(tf.locals["app_principal"]) == f"${{{APP}.identity[0].principal_id}}"
    assert app["storage_authentication_type"] == "SystemAssignedIdentity"
    assert app["webdeploy_publish_basic_authentication_enabled"] is False
    assert app["https_only"] is True


def test_no_key_sas_or_connection_string_is_read_anywhere(tf: Config) -> None:
    assert not KEY_ATTRIBUTES.search(tf.text), KEY_ATTRIBUTES.search(tf.text)
    for path in TF_DIR.glob("*.tf"):
        text = path.read_text()
        for word in ("storage_access_key", "account_key", "shared_access_signature", "AccountKey="):
            assert not re.search(rf"^\s*{re.escape(word)}", text, re.MULTILINE), f"{path.name}: {word}"
    for name, account in tf.resources["azurerm_storage_account"].items():
        assert account["shared_access_key_enabled"] is False, name
        assert account["default_to_oauth_authentication"] is True, name
    assert tf.resource("azurerm_cosmosdb_account.main")["local_authentication_enabled"] is False
    assert tf.resource("azurerm_application_insights.main")["local_authentication_enabled"] is False
    provider = block(next(p for p in tf_providers(tf) if "azurerm" in p)["azurerm"])
    assert provider["storage_use_azuread"] is True


def tf_providers(tf: Config) -> list[dict[str, Any]]:
    options = hcl2.SerializationOptions(strip_string_quotes=True, explicit_blocks=False)
    with (TF_DIR / "versions.tf").open() as handle:
        return hcl2.load(handle, serialization_options=options)["provider"]


# -- app settings ------------------------------------------------------------------------------------------


def test_app_settings_hold_what_the_code_reads(tf: Config) -> None:
    app = tf.resource(APP)
    assert app["app_settings"] == "${local.app_settings}"
    assert "local.textnlp_settings" in str(tf.locals["app_settings"])
    assert "local.azureml_settings" in str(tf.locals["app_settings"])
    found = settings(tf)
    for key, address in REQUIRED_SETTINGS.items():
        assert key in found, key
        if address:
            assert address in refs(found[key]), f"{key} = {found[key]}"
    assert found["TEXTNLP_COUNTER_SLICES"] == "${tostring(local.counter_slices)}"
    assert tf.locals["counter_slices"] == 64
    assert found["TEXTNLP_COSMOS_DATABASE"] == "${azurerm_cosmosdb_sql_database.main.name}"
    assert tf.resource("azurerm_cosmosdb_sql_database.main")["name"] == "${local.cosmos_database}"
    assert tf.locals["cosmos_database"] == "textnlp"
    assert "primary_blob_endpoint" in str(found["TEXTNLP_STORAGE_ACCOUNT_URL"])  # https://<acct>.blob...
    assert "AZURE_CLIENT_ID" not in found  # system-assigned: DefaultAzureCredential needs no client id
    for emulator_only in ("TEXTNLP_COSMOS_KEY", "TEXTNLP_STORAGE_CONNECTION_STRING", "TEXTNLP_ADMIN_KEY"):
        assert emulator_only not in found, emulator_only  # the emulators' credentials, never on Azure
        assert emulator_only not in str(tf.locals["app_settings"]), emulator_only
        assert emulator_only in str(tf.variables["extra_app_settings"]["validation"]), emulator_only
    for key, expression in AZUREML_SETTINGS.items():
        assert expression in str(found[key]), key
    assert "local.azureml" in str(tf.locals["azureml_settings"])  # only with enable_azureml


def test_app_settings_are_names_the_code_reads(tf: Config) -> None:
    read = code_reads()
    if not read:
        pytest.skip("functions/azure and adapters/azure read no TEXTNLP_* setting yet")
    ours = {key for key in settings(tf) if key.startswith("TEXTNLP_")}
    assert ours <= read, f"set but never read: {ours - read}"


def test_host_storage_and_app_insights_use_the_identity(tf: Config) -> None:
    host = tf.locals["host_storage_settings"]
    assert host["AzureWebJobsStorage"] == ""  # replaces the provider's keyless connection string
    assert refs(host["AzureWebJobsStorage__accountName"]) == {"azurerm_storage_account.host"}
    assert host["AzureWebJobsStorage__credential"] == "managedidentity"
    assert host["APPLICATIONINSIGHTS_AUTHENTICATION_STRING"] == "Authorization=AAD"
    site = block(tf.resource(APP)["site_config"])
    assert refs(site["application_insights_connection_string"]) == {"azurerm_application_insights.main"}
    assert "connection_string" in str(site["application_insights_connection_string"])
    endpoint = str(tf.resource(APP)["storage_container_endpoint"])
    assert refs(endpoint) == {"azurerm_storage_account.host", "azurerm_storage_container.deploy"}


def test_function_app_is_linux_python_flex_with_concurrency(tf: Config) -> None:
    plan = tf.resource("azurerm_service_plan.main")
    assert (plan["os_type"], plan["sku_name"]) == ("Linux", "FC1")
    app = tf.resource(APP)
    assert (app["runtime_name"], app["runtime_version"]) == ("python", "3.11")
    assert app["http_concurrency"] == "${var.function_http_concurrency}"
    assert int(tf.variables["function_http_concurrency"]["default"]) > 1
    assert ">= 2" in str(block(tf.variables["function_http_concurrency"]["validation"])["condition"])


def test_package_is_built_from_the_repository_or_given(tf: Config) -> None:
    archive = str(tf.data["archive_file"]["package"])
    assert "from functions.azure.function_app import app" in archive
    assert "routePrefix" in archive  # the fallback host.json keeps the paths /v1/...
    assert "{core,adapters}/**/*.py" in archive
    assert "functions/azure/**/*.py" in archive
    deploy = tf.resource("terraform_data.deploy_package")
    assert "local.package_hash" in str(deploy["triggers_replace"])
    command = block(deploy["provisioner"])["local-exec"]["command"]
    assert "az functionapp deployment source config-zip" in command
    assert "var.app_package_zip" in str(tf.locals["package_path"])


def test_the_functions_the_stack_wires_exist_in_the_app() -> None:
    source = ROOT / "functions" / "azure" / "function_app.py"
    if not source.exists():
        pytest.skip("functions/azure/function_app.py is not written yet")
    text = source.read_text()
    assert re.search(r'function_name\("batch"\)\s*\n\s*@app\.event_grid_trigger', text), "no Event Grid function batch"
    host = ROOT / "functions" / "azure" / "host.json"
    if host.exists():
        assert json.loads(host.read_text())["extensions"]["http"]["routePrefix"] == ""


# -- storage -----------------------------------------------------------------------------------------------


def test_storage_accounts_are_locked_down_and_versioned(tf: Config) -> None:
    accounts = tf.resources["azurerm_storage_account"]
    assert set(accounts) == {"host", "data", "azureml"}
    for name, account in accounts.items():
        assert account["https_traffic_only_enabled"] is True, name
        assert account["min_tls_version"] == "TLS1_2", name
        assert account["allow_nested_items_to_be_public"] is False, name
        assert account["local_user_enabled"] is False, name
        properties = block(account["blob_properties"])
        assert properties["versioning_enabled"] is True, name
        assert "var.blob_soft_delete_days" in str(properties["delete_retention_policy"]), name
        assert "var.blob_soft_delete_days" in str(properties["container_delete_retention_policy"]), name
    for name, container in tf.resources["azurerm_storage_container"].items():
        assert container["container_access_type"] == "private", name
    assert tf.locals["data_container"] == "data"


def test_lifecycle_rules_expire_batches_jobs_and_old_versions(tf: Config) -> None:
    policy = tf.resource("azurerm_storage_management_policy.data")
    assert refs(policy["storage_account_id"]) == {"azurerm_storage_account.data"}
    rules = {rule["name"]: rule for rule in policy["rule"]}
    expected = {
        "batch-output-expiry": ("prefix_batch_output", "var.batch_output_retention_days"),
        "batch-input-expiry": ("prefix_batch_input", "var.batch_input_retention_days"),
        "batch-jobs-cleanup": ("prefix_batch_jobs", "var.batch_jobs_retention_days"),
    }
    for name, (prefix, days) in expected.items():
        rule = rules[name]
        assert block(rule["filters"])["prefix_match"] == [f"${{local.data_container}}/${{local.{prefix}}}"], name
        base = block(block(rule["actions"])["base_blob"])
        assert base["delete_after_days_since_modification_greater_than"] == f"${{{days}}}", name
    versions = block(block(rules["old-versions"]["actions"])["version"])
    assert versions["delete_after_days_since_creation"] == "${var.noncurrent_version_days}"
    assert "prefix_match" not in block(rules["old-versions"]["filters"])  # every blob's old versions
    prefixes = (tf.locals["prefix_batch_input"], tf.locals["prefix_batch_output"], tf.locals["prefix_batch_jobs"])
    assert prefixes == ("batch-input/", "batch-output/", "batch-input/.jobs/")
    events = module_constants(ROOT / "functions" / "azure" / "blob_events.py")
    if events:  # the batch function's own names for them
        assert (events["INPUT_PREFIX"], events["OUTPUT_PREFIX"], events["JOBS_PREFIX"]) == prefixes


# -- Cosmos DB ---------------------------------------------------------------------------------------------


def test_cosmos_containers_partition_keys_and_ttl(tf: Config) -> None:
    declared = tf.locals["cosmos_containers"]
    assert {name: spec["default_ttl"] for name, spec in declared.items()} == COSMOS_CONTAINERS
    assert tf.locals["cosmos_partition_key_paths"] == ["/tenant", "/part"]
    container = tf.resource("azurerm_cosmosdb_sql_container.main")
    assert container["for_each"] == "${local.cosmos_containers}"
    assert container["partition_key_paths"] == "${local.cosmos_partition_key_paths}"
    assert (container["partition_key_kind"], container["partition_key_version"]) == ("MultiHash", 2)
    assert container["default_ttl"] == "${each.value.default_ttl}"  # null: no TTL at all
    assert refs(container["database_name"]) == {"azurerm_cosmosdb_sql_database.main"}


def test_cosmos_layout_is_the_stores(tf: Config) -> None:
    from adapters.azure import cosmos_layout as layout  # names and numbers only: no Azure SDK

    assert tf.locals["cosmos_database"] == layout.DATABASE
    assert tf.locals["cosmos_partition_key_paths"] == layout.PARTITION_PATHS
    declared = {name: spec["default_ttl"] for name, spec in tf.locals["cosmos_containers"].items()}
    assert declared == layout.CONTAINERS


def test_cosmos_account_capacity_auth_and_network(tf: Config) -> None:
    account = tf.resource("azurerm_cosmosdb_account.main")
    assert account["local_authentication_enabled"] is False
    assert account["public_network_access_enabled"] == "${var.public_network_access}"
    assert account["minimal_tls_version"] == "Tls12"
    capabilities = block(account["dynamic"])["capabilities"]
    assert "EnableServerless" in str(capabilities["for_each"])
    assert "var.cosmos_capacity_mode" in str(capabilities["for_each"])
    database = tf.resource("azurerm_cosmosdb_sql_database.main")
    autoscale = block(database["dynamic"])["autoscale_settings"]
    assert "var.cosmos_autoscale_max_throughput" in str(autoscale["for_each"])
    assert set(tf.variables["cosmos_capacity_mode"]["validation"][0]["condition"].split('"')[1::2]) == {
        "serverless",
        "autoscale",
    }


# -- Key Vault ---------------------------------------------------------------------------------------------


def test_key_vault_is_rbac_with_purge_protection(tf: Config) -> None:
    for name, vault in tf.resources["azurerm_key_vault"].items():
        assert vault["rbac_authorization_enabled"] is True, name
        assert vault["purge_protection_enabled"] is True, name
        assert vault["soft_delete_retention_days"] == "${var.key_vault_soft_delete_days}", name
        assert "access_policy" not in vault, name


def test_secrets_are_created_with_placeholders_and_kept_out_of_the_state(tf: Config) -> None:
    secrets = {name: tf.resource(f"azapi_resource.{name}") for name in ("admin_key_secret", "signing_keys_secret")}
    for name, secret in secrets.items():
        assert secret["type"].startswith("Microsoft.KeyVault/vaults/secrets@"), name
        assert refs(secret["parent_id"]) == {"azurerm_key_vault.main"}, name
        assert "value" not in str(secret.get("body")), name  # only in the write-only sensitive_body
        assert "properties.value" in secret["sensitive_body_version"], name
    admin = str(secrets["admin_key_secret"]["sensitive_body"])
    assert "ephemeral.random_password.admin_key.result" in admin
    assert "admin_key" in tf.ephemeral["random_password"]
    assert "random_password" not in tf.resources  # a resource would keep the key in the state
    assert re.search(r"jsonencode\(\{\s*keys\s*=\s*\[\]\s*\}\)", str(secrets["signing_keys_secret"]["sensitive_body"]))


def test_an_empty_signing_key_set_reads_as_no_keys() -> None:
    keyvault = pytest.importorskip("adapters.azure.keyvault")
    assert keyvault.decode_keys(json.dumps({"keys": []})) == []


# -- Event Grid --------------------------------------------------------------------------------------------


def test_event_grid_delivers_batch_input_blobs_to_the_batch_function(tf: Config) -> None:
    topic = tf.resource("azurerm_eventgrid_system_topic.data")
    assert refs(topic["source_resource_id"]) == {"azurerm_storage_account.data"}
    assert topic["topic_type"] == "Microsoft.Storage.StorageAccounts"
    assert block(topic["identity"])["type"] == "SystemAssigned"
    subscription = tf.resource("azurerm_eventgrid_system_topic_event_subscription.batch_input")
    assert subscription["included_event_types"] == ["Microsoft.Storage.BlobCreated"]
    subject = block(subscription["subject_filter"])
    assert subject["subject_begins_with"] == "${local.batch_input_subject}"
    assert tf.locals["batch_input_subject"] == (
        "/blobServices/default/containers/${local.data_container}/blobs/${local.prefix_batch_input}"
    )
    assert tf.locals["prefix_batch_input"] == "batch-input/"
    endpoint = block(subscription["azure_function_endpoint"])
    assert endpoint["function_id"] == f"${{{APP}.id}}/functions/batch"
    assert endpoint["max_events_per_batch"] == 1


def test_event_grid_retries_and_dead_letters_with_its_identity(tf: Config) -> None:
    subscription = tf.resource("azurerm_eventgrid_system_topic_event_subscription.batch_input")
    retry = block(subscription["retry_policy"])
    assert retry["max_delivery_attempts"] > 1
    assert 1 <= retry["event_time_to_live"] <= 1440
    assert block(subscription["dead_letter_identity"])["type"] == "SystemAssigned"
    destination = block(subscription["storage_blob_dead_letter_destination"])
    assert refs(destination["storage_blob_container_name"]) == {"azurerm_storage_container.deadletter"}
    assert refs(destination["storage_account_id"]) == {"azurerm_storage_account.data"}
    depends = str(subscription["depends_on"])
    assert "azurerm_role_assignment.eventgrid_deadletter" in depends
    assert "terraform_data.deploy_package" in depends  # Event Grid validates the function at creation


# -- Azure ML ----------------------------------------------------------------------------------------------


def test_endpoint_sizes_and_deployment(tf: Config) -> None:
    sizes = tf.locals["endpoint_sizes"]
    assert {size: spec["instance_type"] for size, spec in sizes.items()} == ENDPOINT_SIZES
    deployment = tf.resource("azapi_resource.online_deployment")
    body = deployment["body"]
    assert body["properties"]["instanceType"] == "${local.endpoint.instance_type}"
    assert body["properties"]["model"] == "${var.endpoint_model}"
    assert body["sku"]["capacity"] == "${var.endpoint_instance_count}"
    assert "local.endpoint_enable" in str(deployment["count"])
    auth = str(tf.locals["endpoint_auth"])
    assert all(word in auth for word in ("AADToken", "Key", "var.endpoint_auth_mode")), auth
    endpoint = tf.resource("azapi_resource.online_endpoint")
    assert endpoint["body"]["properties"]["authMode"] == "${local.endpoint_auth}"
    assert "var.enable_azureml" in str(tf.locals["endpoint_enable"])
    assert "var.endpoint_size" in str(tf.locals["endpoint_enable"])
    traffic = tf.resource("azapi_update_resource.endpoint_traffic")
    assert "azapi_resource.online_deployment" in str(traffic["depends_on"])


def test_azureml_workspace_cluster_and_datastore_are_optional_and_keyless(tf: Config) -> None:
    for address in (
        "azurerm_machine_learning_workspace.main",
        "azurerm_machine_learning_compute_cluster.training",
        "azurerm_machine_learning_datastore_blobstorage.data",
        "azurerm_storage_account.azureml",
        "azurerm_key_vault.azureml",
    ):
        assert "local.azureml" in str(tf.resource(address)["count"]), address
    workspace = tf.resource("azurerm_machine_learning_workspace.main")
    assert workspace["storage_account_access_type"] == "Identity"
    assert refs(workspace["application_insights_id"]) == {"azurerm_application_insights.main"}
    cluster = tf.resource("azurerm_machine_learning_compute_cluster.training")
    assert cluster["local_auth_enabled"] is False
    assert block(cluster["scale_settings"])["min_node_count"] == 0
    datastore = tf.resource("azurerm_machine_learning_datastore_blobstorage.data")
    assert refs(datastore["storage_container_id"]) == {"azurerm_storage_container.data"}
    assert datastore["service_data_auth_identity"] == "WorkspaceSystemAssignedIdentity"


# -- monitoring --------------------------------------------------------------------------------------------


def emitted_metrics() -> set[str]:
    names: set[str] = set()
    for path in (ROOT / "core").rglob("*.py"):
        names |= set(re.findall(r"\.(?:incr|observe)\(\s*\"([a-z0-9_]+)\"", path.read_text()))
    return names


def kql_metrics(text: str) -> set[str]:
    found = set(re.findall(r'metric == \\?"([a-z0-9_]+)\\?"', text))
    for group in re.findall(r"metric in \(([^)]*)\)", text):
        found |= set(re.findall(r'\\?"([a-z0-9_]+)\\?"', group))
    return found


def test_metric_queries_read_the_lines_the_adapter_writes(tf: Config) -> None:
    from adapters.azure.metrics import AppInsightsLogMetrics

    stream = io.StringIO()
    metrics = AppInsightsLogMetrics(service="textnlp", stream=stream)
    metrics.incr("requests_total", route="/v1/models", status="500")
    metrics.flush()
    line = stream.getvalue().strip()
    assert line.startswith('{"metric"'), line  # what local.kql_metric_lines filters on
    entry = json.loads(line)
    assert entry["dimensions"] == {"route": "/v1/models", "status": "500"}
    base = tf.locals["kql_metric_lines"]
    assert 'message startswith "{\\"metric\\""' in base
    assert "parse_json(message)" in base
    assert "dims = m.dimensions" in base
    assert "value = todouble(m.value)" in base


def test_alerts_cover_errors_latency_batches_and_the_endpoint(tf: Config) -> None:
    logs = tf.resources["azurerm_monitor_scheduled_query_rules_alert_v2"]
    assert set(logs) == {"api_error_rate", "api_latency", "batch_failures"}
    metric_alerts = tf.resources["azurerm_monitor_metric_alert"]
    assert set(metric_alerts) == {"batch_deadletters", "endpoint_errors", "gpu_memory"}
    emitted = emitted_metrics()
    for name, rule in logs.items():
        assert refs(rule["scopes"]) == {"azurerm_application_insights.main"}, name
        assert "azurerm_monitor_action_group.main" in str(rule["action"]), name
        query = block(rule["criteria"])["query"]
        used = kql_metrics(query)
        assert used <= emitted, f"{name}: core emits no {used - emitted}"
    assert kql_metrics(block(logs["api_error_rate"]["criteria"])["query"]) == {"requests_total"}
    assert "percentile(value, 95)" in block(logs["api_latency"]["criteria"])["query"]
    assert kql_metrics(block(logs["api_latency"]["criteria"])["query"]) == {"request_latency_seconds"}
    assert 'operation_Name == "batch"' in block(logs["batch_failures"]["criteria"])["query"]
    for name, rule in metric_alerts.items():
        assert "azurerm_monitor_action_group.main" in str(rule["action"]), name
    assert block(metric_alerts["gpu_memory"]["criteria"])["metric_name"] == "GpuMemoryUtilizationPercentage"
    assert refs(metric_alerts["gpu_memory"]["scopes"]) == {"azapi_resource.online_deployment"}
    errors = block(metric_alerts["endpoint_errors"]["criteria"])
    assert (errors["metric_name"], block(errors["dimension"])["values"]) == ("RequestsPerMinute", ["5xx"])
    assert refs(metric_alerts["endpoint_errors"]["scopes"]) == {"azapi_resource.online_endpoint"}
    assert block(metric_alerts["batch_deadletters"]["criteria"])["metric_name"] == "DeadLetteredCount"
    group = tf.resource("azurerm_monitor_action_group.main")
    assert "var.alert_email" in str(group["dynamic"])


def test_workbook_has_the_gcp_dashboard_panels(tf: Config) -> None:
    gcp = (ROOT / "terraform" / "gcp" / "monitoring.tf").read_text()
    titles = set(re.findall(r'^\s+title = "([^"]+)"', gcp, re.MULTILINE))
    assert titles == set(GCP_PANELS), f"terraform/gcp's dashboard changed: {titles ^ set(GCP_PANELS)}"
    names = {panel["name"] for panel in tf.locals["kql_panels"]}
    names |= {panel["name"] for panel in tf.locals["endpoint_metric_panels"]}
    assert set(GCP_PANELS.values()) <= names, set(GCP_PANELS.values()) - names
    emitted = emitted_metrics()
    for panel in tf.locals["kql_panels"]:
        assert kql_metrics(panel["query"]) <= emitted, panel["name"]
    workbook = tf.resource("azurerm_application_insights_workbook.main")
    assert "local.workbook_items" in str(workbook["data_json"])
    assert "uuidv5" in str(workbook["name"])  # a workbook's name must be a GUID
    assert refs(workbook["source_id"]) == {"azurerm_application_insights.main"}
    metrics = {panel["metric"] for panel in tf.locals["endpoint_metric_panels"]}
    assert metrics == {"RequestsPerMinute", "GpuUtilizationPercentage", "GpuMemoryUtilizationPercentage"}


def test_application_insights_is_workspace_based(tf: Config) -> None:
    insights = tf.resource("azurerm_application_insights.main")
    assert refs(insights["workspace_id"]) == {"azurerm_log_analytics_workspace.main"}
    workspace = tf.resource("azurerm_log_analytics_workspace.main")
    assert workspace["retention_in_days"] == "${var.log_retention_days}"


# -- conventions -------------------------------------------------------------------------------------------


def test_everything_is_tagged_and_named_with_the_prefix(tf: Config) -> None:
    # Names inside an already prefixed parent: the workspace's compute (at most 16 characters), the endpoint's
    # deployment; the workbook's name is a GUID.
    children = {
        "azurerm_machine_learning_compute_cluster.training",
        "azapi_resource.online_deployment",
        "azurerm_application_insights_workbook.main",
    }
    for type_name in TAGGED:
        for name, body in tf.resources[type_name].items():
            address = f"{type_name}.{name}"
            assert body.get("tags") == "${local.tags}", address
            if address not in children:
                assert re.search(r"local\.prefix|var\.name", str(body["name"])), f"{address}: {body['name']}"


def longest(template: str) -> int:
    """The longest a name template can be: var.name 10 characters, var.stage 4 (prod), the suffix 6."""
    widths = {"${var.name}": 10, "${var.stage}": 4, "${local.suffix}": 6, "${local.prefix}": 15}
    for placeholder, width in widths.items():
        template = template.replace(placeholder, "x" * width)
    assert "${" not in template, template
    return len(template)


def test_globally_unique_names_fit_their_limits(tf: Config) -> None:
    assert "{1,9}" in str(block(tf.variables["name"]["validation"])["condition"])  # at most 10 characters
    assert tf.resource("random_string.suffix")["length"] == 6
    for name, account in tf.resources["azurerm_storage_account"].items():
        assert longest(account["name"]) <= 24, name  # 3-24 lowercase letters and digits
        assert "-" not in account["name"], name
    for name, vault in tf.resources["azurerm_key_vault"].items():
        assert longest(vault["name"]) <= 24, name
    assert longest(tf.resource(APP)["name"]) <= 32  # the host ID is the name's first 32 characters
    assert longest(tf.resource("azurerm_cosmosdb_account.main")["name"]) <= 44


def test_variables_are_described_and_providers_pinned(tf: Config) -> None:
    for name, variable in tf.variables.items():
        assert variable.get("description"), name
    for name, output in tf.outputs.items():
        assert output.get("description"), name
    providers = block(block(tf.terraform[0])["required_providers"])
    for name in ("azurerm", "azapi", "random", "archive"):
        assert providers[name]["version"].startswith("~>"), name
    assert [n for n, v in tf.variables.items() if "default" not in v] == ["subscription_id"]
    for name in ("api_url", "storage_account", "blob_container", "cosmos_endpoint", "key_vault_url", "workbook"):
        assert name in tf.outputs, name


def test_readme_permissions_table_matches_the_roles() -> None:
    readme = (TF_DIR / "README.md").read_text()
    for roles in EXPECTED_ROLES.values():
        for role, _scope in roles:
            assert role in readme, role
    for size, instance_type in ENDPOINT_SIZES.items():
        assert re.search(rf"`{size}` \| `{instance_type}`", readme), size


# -- tools (tests/infra/terraform_checks.py) ----------------------------------------------------------------


@pytest.fixture(scope="module")
def terraform() -> str:
    return terraform_binary()


def test_terraform_fmt(terraform: str) -> None:
    check_fmt(terraform, TF_DIR)


def test_terraform_validate(terraform: str, tmp_path: Path) -> None:
    """Needs the azurerm and azapi providers: skipped (with the reason) where they cannot be downloaded."""
    check_validate(terraform, TF_DIR, tmp_path, "the azurerm and azapi providers")


def test_checkov_clean_and_every_skip_needed() -> None:
    check_checkov(TF_DIR)
