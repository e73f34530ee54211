# Terraform and provider versions. azurerm is pinned to its 5.x major (every resource and argument used here
# exists in 5.x: azurerm_function_app_flex_consumption with http_concurrency, Cosmos DB
# local_authentication_enabled, Key Vault rbac_authorization_enabled). azapi covers what azurerm has no
# resource for: Azure ML managed online endpoints and their deployments, and the two Key Vault secrets
# (written through ARM, so the deployer needs no data-plane role and the values never enter the state).
# `terraform init` writes .terraform.lock.hcl; commit it with the first apply.
terraform {
  required_version = ">= 1.11, < 2.0" # write-only arguments (azapi sensitive_body) and ephemeral resources

  required_providers {
    azurerm = {
      source  = "hashicorp/azurerm"
      version = "~> 5.0"
    }
    azapi = {
      source  = "Azure/azapi"
      version = "~> 2.5"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.7"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.4"
    }
  }
}

provider "azurerm" {
  subscription_id = var.subscription_id

  # Shared keys are off on every storage account: the provider's own data-plane calls use Entra ID too.
  storage_use_azuread = true

  # 5.x registers no resource provider by default; these are the ones this stack creates resources in.
  resource_providers_to_register = [
    "Microsoft.DocumentDB",
    "Microsoft.EventGrid",
    "Microsoft.Insights",
    "Microsoft.KeyVault",
    "Microsoft.MachineLearningServices",
    "Microsoft.OperationalInsights",
    "Microsoft.Storage",
    "Microsoft.Web",
  ]

  features {
    key_vault {
      purge_soft_delete_on_destroy = false # purge protection is on: a destroyed vault stays recoverable
    }
    resource_group {
      prevent_deletion_if_contains_resources = true
    }
  }
}

provider "azapi" {
  subscription_id = var.subscription_id
}
