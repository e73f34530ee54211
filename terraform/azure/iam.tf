# Least-privilege role assignments. Every identity is a managed identity, every role a data-plane role
# scoped to the narrowest resource Azure accepts for it, and no account key, SAS or connection string is
# handed out anywhere. README's Permissions table is this file; tests/infra/test_terraform_azure.py checks
# them against each other.
#
# | Identity                 | Role                                       | Scope                                    |
# |--------------------------|--------------------------------------------|------------------------------------------|
# | function app             | Storage Blob Data Owner                    | host storage account (Functions host)    |
# | function app             | Storage Blob Data Contributor              | data container                           |
# | function app             | Cosmos DB Built-in Data Contributor        | the textnlp database                     |
# | function app             | Key Vault Secrets User                     | the admin key secret                     |
# | function app             | Key Vault Secrets Officer                  | the signing keys secret                  |
# | function app             | Monitoring Metrics Publisher               | Application Insights (AAD ingestion)     |
# | function app             | AzureML Data Scientist                     | the Azure ML workspace (enable_azureml)  |
# | Event Grid system topic  | Storage Blob Data Contributor              | the dead-letter container                |
# | Azure ML workspace       | Storage Blob Data Reader                   | data container (its datastore)           |
# | Azure ML workspace       | Storage Blob Data Contributor              | its own storage account                  |
# | Azure ML workspace       | Storage File Data Privileged Contributor   | its own storage account (code snapshots) |
# | Azure ML workspace       | Key Vault Administrator                    | its own key vault                        |
# | training compute cluster | Storage Blob Data Contributor              | data container (files/ in, models/ out)  |

locals {
  app_principal = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  # Cosmos DB's built-in data-plane role "Cosmos DB Built-in Data Contributor" (read, write, query items).
  cosmos_data_contributor = "00000000-0000-0000-0000-000000000002"
}

# -- function app ------------------------------------------------------------------------------------------

# The Functions host keeps its keys and leases in blobs of AzureWebJobsStorage and creates its containers
# (azure-webjobs-hosts, azure-webjobs-secrets): Owner of blob data on that account is what it needs. It also
# reads the deployment container. This account holds no tenant data.
resource "azurerm_role_assignment" "app_host_storage" {
  scope                = azurerm_storage_account.host.id
  role_definition_name = "Storage Blob Data Owner"
  principal_id         = local.app_principal
  principal_type       = "ServicePrincipal"
  description          = "Functions host storage (AzureWebJobsStorage__accountName) and the deployment container"
}

# files/, batch-input/ (and its .jobs/), batch-output/, models/: the data container only.
resource "azurerm_role_assignment" "app_data_container" {
  scope                = azurerm_storage_container.data.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = local.app_principal
  principal_type       = "ServicePrincipal"
  description          = "TextNLP BlobStore: the data container"
}

# Data plane of Cosmos DB: the textnlp database only (local auth is off, so there is no key to use instead).
resource "azurerm_cosmosdb_sql_role_assignment" "app" {
  name                = uuidv5("url", "textnlp:${local.prefix}:cosmos:app")
  resource_group_name = local.resource_group_name
  account_name        = azurerm_cosmosdb_account.main.name
  role_definition_id  = "${azurerm_cosmosdb_account.main.id}/sqlRoleDefinitions/${local.cosmos_data_contributor}"
  principal_id        = local.app_principal
  scope               = "${azurerm_cosmosdb_account.main.id}/dbs/${azurerm_cosmosdb_sql_database.main.name}"
}

# Read the admin key (get) at a cold start.
resource "azurerm_role_assignment" "app_admin_key" {
  scope                = azapi_resource.admin_key_secret.id
  role_definition_name = "Key Vault Secrets User"
  principal_id         = local.app_principal
  principal_type       = "ServicePrincipal"
  description          = "KeyVaultAdminKey: read the admin key secret"
}

# Rotate the signing keys: get, list versions, set (a new version), update (disable a covered version).
resource "azurerm_role_assignment" "app_signing_keys" {
  scope                = azapi_resource.signing_keys_secret.id
  role_definition_name = "Key Vault Secrets Officer"
  principal_id         = local.app_principal
  principal_type       = "ServicePrincipal"
  description          = "KeyVaultSigningKeys: versions of the signing keys secret"
}

# Telemetry ingestion with Entra ID (APPLICATIONINSIGHTS_AUTHENTICATION_STRING): local auth is off.
resource "azurerm_role_assignment" "app_insights" {
  scope                = azurerm_application_insights.main.id
  role_definition_name = "Monitoring Metrics Publisher"
  principal_id         = local.app_principal
  principal_type       = "ServicePrincipal"
  description          = "Application Insights ingestion with the app's identity"
}

# Score the online endpoint with Entra tokens, start, read and cancel command jobs, register models and
# deploy them: everything in the workspace except compute and the workspace itself.
resource "azurerm_role_assignment" "app_azureml" {
  count = local.azureml ? 1 : 0

  scope                = azurerm_machine_learning_workspace.main[0].id
  role_definition_name = "AzureML Data Scientist"
  principal_id         = local.app_principal
  principal_type       = "ServicePrincipal"
  description          = "Endpoint scoring (AAD token), fine-tune jobs, model registration and deployment"
}

# -- Event Grid --------------------------------------------------------------------------------------------

resource "azurerm_role_assignment" "eventgrid_deadletter" {
  scope                = azurerm_storage_container.deadletter.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_eventgrid_system_topic.data.identity[0].principal_id
  principal_type       = "ServicePrincipal"
  description          = "Event Grid dead letters of the batch-input subscription"
}

# -- Azure ML ----------------------------------------------------------------------------------------------

resource "azurerm_role_assignment" "azureml_workspace_data" {
  count = local.azureml ? 1 : 0

  scope                = azurerm_storage_container.data.id
  role_definition_name = "Storage Blob Data Reader"
  principal_id         = azurerm_machine_learning_workspace.main[0].identity[0].principal_id
  principal_type       = "ServicePrincipal"
  description          = "The textnlpdata datastore (service-side reads)"
}

resource "azurerm_role_assignment" "azureml_workspace_blobs" {
  count = local.azureml ? 1 : 0

  scope                = azurerm_storage_account.azureml[0].id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_machine_learning_workspace.main[0].identity[0].principal_id
  principal_type       = "ServicePrincipal"
  description          = "Workspace storage with identity-based access (shared keys are off)"
}

resource "azurerm_role_assignment" "azureml_workspace_files" {
  count = local.azureml ? 1 : 0

  scope                = azurerm_storage_account.azureml[0].id
  role_definition_name = "Storage File Data Privileged Contributor"
  principal_id         = azurerm_machine_learning_workspace.main[0].identity[0].principal_id
  principal_type       = "ServicePrincipal"
  description          = "Workspace code snapshots (file share) with identity-based access"
}

# Azure ML keeps its own connection secrets in its vault; with RBAC authorization it needs this role there.
resource "azurerm_role_assignment" "azureml_workspace_vault" {
  count = local.azureml ? 1 : 0

  scope                = azurerm_key_vault.azureml[0].id
  role_definition_name = "Key Vault Administrator"
  principal_id         = azurerm_machine_learning_workspace.main[0].identity[0].principal_id
  principal_type       = "ServicePrincipal"
  description          = "The workspace's own key vault (not the gateway's)"
}

resource "azurerm_role_assignment" "training_data" {
  count = local.azureml ? 1 : 0

  scope                = azurerm_storage_container.data.id
  role_definition_name = "Storage Blob Data Contributor"
  principal_id         = azurerm_machine_learning_compute_cluster.training[0].identity[0].principal_id
  principal_type       = "ServicePrincipal"
  description          = "Fine-tune jobs: training files (files/) in, model artefacts (models/) out"
}
