# Key Vault (RBAC authorization, purge protection, soft delete) and the two secrets the api reads:
# - the admin key: generated here as an ephemeral value, written once through ARM (write-only, so it is
#   never in the Terraform state); read by adapters/azure/keyvault.py KeyVaultAdminKey at a cold start;
# - the JWT signing keys: created with an empty key set ({"keys":[]}); the api adds versions itself
#   (KeyVaultSigningKeys: a lossless merge of versions) and disables the ones another covers.
# Both are ARM resources (Microsoft.KeyVault/vaults/secrets): the deployer needs no data-plane role, and
# Terraform never reads a secret value back, so the api's own versions are no drift.

resource "azurerm_key_vault" "main" {
  #checkov:skip=CKV_AZURE_109:Network ACLs default to Allow while public_network_access is true: the Flex Consumption app has no VNet integration in this stack; every call needs an Entra ID token and an RBAC role on the secret.
  #checkov:skip=CKV_AZURE_189:Public network access is a variable (public_network_access, default true), for the same reason.
  #checkov:skip=CKV2_AZURE_32:No private endpoint: the Flex Consumption app has no VNet integration in this stack.
  name                          = "${var.name}-${var.stage}-${local.suffix}" # at most 22 of the 24 characters
  resource_group_name           = local.resource_group_name
  location                      = var.location
  tenant_id                     = data.azurerm_client_config.current.tenant_id
  sku_name                      = "standard"
  rbac_authorization_enabled    = true
  purge_protection_enabled      = true
  soft_delete_retention_days    = var.key_vault_soft_delete_days
  public_network_access_enabled = var.public_network_access
  tags                          = local.tags

  network_acls {
    default_action = var.public_network_access ? "Allow" : "Deny"
    bypass         = "AzureServices"
  }
}

# The deployment's first admin key. Replace it by creating a new admin key through the API and revoking this
# one; bump admin_key_version in sensitive_body_version to write a fresh value.
ephemeral "random_password" "admin_key" {
  length  = 48
  special = false
}

resource "azapi_resource" "admin_key_secret" {
  type      = "Microsoft.KeyVault/vaults/secrets@2023-07-01"
  name      = "${local.prefix}-admin-key"
  parent_id = azurerm_key_vault.main.id
  tags      = local.tags

  body = {
    properties = {
      contentType = "text/plain"
    }
  }

  sensitive_body = {
    properties = {
      value = ephemeral.random_password.admin_key.result
    }
  }
  sensitive_body_version = {
    "properties.value" = "1"
  }
}

# An empty key set: the document adapters/azure/keyvault.py decode_keys reads (no keys until the api writes
# the first one). Terraform writes it once and never again (the api owns every later version).
resource "azapi_resource" "signing_keys_secret" {
  type      = "Microsoft.KeyVault/vaults/secrets@2023-07-01"
  name      = "${local.prefix}-signing-keys"
  parent_id = azurerm_key_vault.main.id
  tags      = local.tags

  body = {
    properties = {
      contentType = "application/json"
    }
  }

  sensitive_body = {
    properties = {
      value = jsonencode({ keys = [] })
    }
  }
  sensitive_body_version = {
    "properties.value" = "1"
  }

  lifecycle {
    ignore_changes = [tags] # the api tags the versions it writes ({"textnlp": "signing-keys"})
  }
}
