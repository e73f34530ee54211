output "api_url" {
  description = "Base URL of the TextNLP API (the openai SDK's base_url is <api_url>/v1; host.json's routePrefix is empty)."
  value       = "https://${azurerm_function_app_flex_consumption.main.default_hostname}"
}

output "function_app" {
  description = "The function app's name and its identity's principal ID (the roles in iam.tf are granted to it)."
  value = {
    name         = azurerm_function_app_flex_consumption.main.name
    principal_id = azurerm_function_app_flex_consumption.main.identity[0].principal_id
  }
}

output "resource_group" {
  description = "The resource group holding the stack."
  value       = local.resource_group_name
}

output "storage_account" {
  description = "The data storage account: drop batch files into <blob_container>/batch-input/<tenant>/; each new blob starts a batch."
  value       = azurerm_storage_account.data.name
}

output "blob_container" {
  description = "The data container (TEXTNLP_BLOB_CONTAINER): files/, batch-input/ (with .jobs/), batch-output/, models/."
  value       = azurerm_storage_container.data.name
}

output "cosmos_endpoint" {
  description = "The Cosmos DB account endpoint (TEXTNLP_COSMOS_ENDPOINT); database textnlp."
  value       = azurerm_cosmosdb_account.main.endpoint
}

output "key_vault_url" {
  description = "The Key Vault URI (TEXTNLP_KEYVAULT_URL)."
  value       = azurerm_key_vault.main.vault_uri
}

output "admin_key_secret" {
  description = "Secret holding the first admin key: az keyvault secret show --vault-name <vault> --name <this> --query value -o tsv (needs Key Vault Secrets User on it)."
  value       = azapi_resource.admin_key_secret.name
}

output "signing_keys_secret" {
  description = "Secret holding the JWT signing keys (written by the api)."
  value       = azapi_resource.signing_keys_secret.name
}

output "application_insights" {
  description = "The Application Insights resource the functions log to (traces hold the metric lines)."
  value       = azurerm_application_insights.main.name
}

output "workbook" {
  description = "The TextNLP workbook (Azure portal: Application Insights > Workbooks)."
  value       = azurerm_application_insights_workbook.main.id
}

output "azureml_workspace" {
  description = "The Azure ML workspace (TEXTNLP_AZUREML_WORKSPACE); null without enable_azureml."
  value       = local.azureml ? azurerm_machine_learning_workspace.main[0].name : null
}

output "azureml_endpoint" {
  description = "The managed online endpoint to register as a model of type azureml: its scoring URI, deployment and auth mode; null without endpoint_size."
  value = local.endpoint_enable ? {
    scoring_uri   = azapi_resource.online_endpoint[0].output.properties.scoringUri
    deployment    = local.deployment_name
    instance_type = local.endpoint.instance_type
    auth          = var.endpoint_auth_mode == "aad_token" ? "entra" : "key"
  } : null
}
