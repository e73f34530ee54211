# The function app: Linux, Python 3.11, on a Flex Consumption plan (FC1), with a system-assigned identity.
# Two functions, both from functions/azure/function_app.py (the Python v2 programming model):
# - `api`: an HTTP trigger with a catch-all route; host.json sets extensions.http.routePrefix to "" so the
#   paths are /v1/..., /auth/token, /admin/... as on the other clouds;
# - `batch`: an Event Grid trigger, which eventgrid.tf subscribes to the data container's batch-input/ blobs.
# Why Flex Consumption (README): scale to zero, per-instance HTTP concurrency (the api is async), identity-based
# deployment and host storage (no shared keys anywhere), always-ready instances when cold starts matter.

resource "azurerm_service_plan" "main" {
  #checkov:skip=CKV_AZURE_212:Flex Consumption (FC1) scales out per function group itself (maximum_instance_count); worker_count and zone redundancy of dedicated plans do not apply.
  #checkov:skip=CKV_AZURE_225:Zone redundancy is a property of dedicated and Premium plans; a Flex Consumption plan is managed by the platform.
  name                = "${local.prefix}-plan"
  resource_group_name = local.resource_group_name
  location            = var.location
  os_type             = "Linux"
  sku_name            = "FC1"
  tags                = local.tags
}

resource "azurerm_function_app_flex_consumption" "main" {
  name                = "${local.prefix}-func-${local.suffix}"
  resource_group_name = local.resource_group_name
  location            = var.location
  service_plan_id     = azurerm_service_plan.main.id
  tags                = local.tags

  runtime_name    = "python"
  runtime_version = "3.11"

  # The package lives in the host account's deployment container, read with the app's own identity.
  storage_container_type      = "blobContainer"
  storage_container_endpoint  = "${azurerm_storage_account.host.primary_blob_endpoint}${azurerm_storage_container.deploy.name}"
  storage_authentication_type = "SystemAssignedIdentity"

  maximum_instance_count = var.function_max_instances
  instance_memory_in_mb  = var.function_instance_memory_mb
  http_concurrency       = var.function_http_concurrency

  dynamic "always_ready" {
    for_each = var.function_always_ready > 0 ? [var.function_always_ready] : []
    content {
      name           = "http"
      instance_count = always_ready.value
    }
  }

  https_only                                     = true
  public_network_access_enabled                  = true # the public API: the gateway authenticates every request itself
  webdeploy_publish_basic_authentication_enabled = false

  identity {
    type = "SystemAssigned"
  }

  app_settings = local.app_settings

  site_config {
    application_insights_connection_string = azurerm_application_insights.main.connection_string
    minimum_tls_version                    = "1.2"
    scm_minimum_tls_version                = "1.2"
    http2_enabled                          = true
    remote_debugging_enabled               = false

    cors {
      allowed_origins = [] # server-to-server API (the openai SDK); add origins for browser clients
    }
  }
}

# -- the app package ---------------------------------------------------------------------------------------

# Built from this repository unless app_package_zip names one: function_app.py (re-exporting the app of
# functions/azure/function_app.py), host.json and requirements.txt at the root, core/, adapters/ and
# functions/azure/. The Python packages are installed by the remote build (--build-remote).
data "archive_file" "package" {
  count = var.app_package_zip == null ? 1 : 0

  type        = "zip"
  output_path = "${path.module}/.build/function-app.zip"

  source {
    filename = "function_app.py"
    content  = "\"\"\"Azure Functions entry point (Python v2 model): the app of functions/azure/function_app.py.\"\"\"\n\nfrom functions.azure.function_app import app\n\n__all__ = [\"app\"]\n"
  }

  source {
    filename = "host.json"
    content  = fileexists("${local.repo_root}/functions/azure/host.json") ? file("${local.repo_root}/functions/azure/host.json") : jsonencode({ version = "2.0", extensions = { http = { routePrefix = "" } } })
  }

  source {
    filename = "requirements.txt"
    content  = fileexists("${local.repo_root}/functions/azure/requirements.txt") ? file("${local.repo_root}/functions/azure/requirements.txt") : "azure-functions\n"
  }

  dynamic "source" {
    for_each = fileset(local.repo_root, "{core,adapters}/**/*.py")
    content {
      filename = source.value
      content  = file("${local.repo_root}/${source.value}")
    }
  }

  dynamic "source" {
    for_each = setunion(["functions/__init__.py"], fileset(local.repo_root, "functions/azure/**/*.py"))
    content {
      filename = source.value
      content  = file("${local.repo_root}/${source.value}")
    }
  }
}

locals {
  package_path = var.app_package_zip == null ? data.archive_file.package[0].output_path : var.app_package_zip
  package_hash = var.app_package_zip == null ? data.archive_file.package[0].output_sha256 : filesha256(var.app_package_zip)
}

# One deploy through ARM with the caller's Entra ID login (no publishing credentials: basic auth is off),
# again whenever the package's content changes. The role assignments the host needs come first.
resource "terraform_data" "deploy_package" {
  count = var.deploy_app_package ? 1 : 0

  triggers_replace = [local.package_hash, azurerm_function_app_flex_consumption.main.id]

  provisioner "local-exec" {
    command = "az functionapp deployment source config-zip --subscription \"$SUBSCRIPTION\" --resource-group \"$GROUP\" --name \"$APP\" --src \"$ZIP\" --build-remote true"
    environment = {
      SUBSCRIPTION = var.subscription_id
      GROUP        = local.resource_group_name
      APP          = azurerm_function_app_flex_consumption.main.name
      ZIP          = local.package_path
    }
  }

  depends_on = [
    azurerm_role_assignment.app_host_storage,
    azurerm_role_assignment.app_data_container,
    azurerm_cosmosdb_sql_role_assignment.app,
    azurerm_role_assignment.app_admin_key,
    azurerm_role_assignment.app_signing_keys,
  ]
}
