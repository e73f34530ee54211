# Two storage accounts, both HTTPS only, TLS 1.2, no anonymous blob access, shared keys off (Entra ID only),
# versioning, soft delete and lifecycle rules:
# - host: the Functions host's own storage (AzureWebJobsStorage: keys, leases) and the Flex Consumption
#   deployment container. The app holds Storage Blob Data Owner here, which the host needs account-wide;
#   keeping it apart from the data means that role reaches no tenant data.
# - data: the `data` container (files/, batch-input/ with its .jobs/, batch-output/, models/), watched by the
#   Event Grid system topic, and the container Event Grid dead-letters undeliverable events into.
#
# Shared keys can be off: Flex Consumption reads its deployment container and AzureWebJobsStorage with the
# app's managed identity; Event Grid reads no blob (it gets events from the storage resource provider) and
# writes dead letters with the system topic's identity; the azurerm provider uses Entra ID for data-plane
# calls (storage_use_azuread); Azure ML uses identity-based datastores (storage_account_access_type Identity).

resource "azurerm_storage_account" "host" {
  #checkov:skip=CKV_AZURE_35:The Flex Consumption app reaches its host storage over the public endpoint (no VNet integration in this stack); access needs Entra ID (shared keys are off). Set public_network_access = false only with VNet integration and private endpoints.
  #checkov:skip=CKV_AZURE_33:Queue service logging: this stack creates no queue, and azurerm 5.x removed queue_properties (diagnostic settings send the blob logs to Log Analytics instead).
  #checkov:skip=CKV2_AZURE_1:Encrypted at rest with Microsoft-managed keys plus infrastructure encryption; customer-managed keys need a key vault key and rotation process this stack does not own.
  #checkov:skip=CKV2_AZURE_33:No private endpoint: the Flex Consumption app has no VNet integration in this stack (see public_network_access).
  #checkov:skip=CKV_AZURE_59:Public network access is a variable (public_network_access, default true) because the serverless app has no VNet integration; every request still needs an Entra ID token.
  name                              = "${var.name}${var.stage}fn${local.suffix}"
  resource_group_name               = local.resource_group_name
  location                          = var.location
  account_kind                      = "StorageV2"
  account_tier                      = "Standard"
  account_replication_type          = local.is_prod ? "ZRS" : "LRS"
  https_traffic_only_enabled        = true
  min_tls_version                   = "TLS1_2"
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  local_user_enabled                = false
  infrastructure_encryption_enabled = true
  public_network_access_enabled     = var.public_network_access
  tags                              = local.tags

  blob_properties {
    versioning_enabled = true

    delete_retention_policy {
      days = var.blob_soft_delete_days
    }

    container_delete_retention_policy {
      days = var.blob_soft_delete_days
    }
  }

  sas_policy {
    expiration_period = "00.01:00:00" # user delegation SAS only (no keys): at most one hour
    expiration_action = "Log"
  }

  network_rules {
    default_action = var.public_network_access ? "Allow" : "Deny"
    bypass         = ["AzureServices", "Logging", "Metrics"]
  }
}

# The Flex Consumption deployment container: `az functionapp deployment source config-zip` uploads the
# package here and the platform reads it with the app's identity.
resource "azurerm_storage_container" "deploy" {
  #checkov:skip=CKV2_AZURE_21:No blob read logging on the host account: this container holds only the function package, which the platform reads at every cold start (tenant data is in the data account, whose reads are logged: monitoring.tf).
  name                  = local.deploy_container
  storage_account_id    = azurerm_storage_account.host.id
  container_access_type = "private"
}

resource "azurerm_storage_account" "data" {
  #checkov:skip=CKV_AZURE_35:The Flex Consumption app reaches the data account over the public endpoint (no VNet integration in this stack); access needs Entra ID (shared keys are off). Set public_network_access = false only with VNet integration and private endpoints.
  #checkov:skip=CKV_AZURE_33:Queue service logging: this stack creates no queue, and azurerm 5.x removed queue_properties (diagnostic settings send the blob logs to Log Analytics instead).
  #checkov:skip=CKV2_AZURE_1:Encrypted at rest with Microsoft-managed keys plus infrastructure encryption; customer-managed keys need a key vault key and rotation process this stack does not own.
  #checkov:skip=CKV2_AZURE_33:No private endpoint: the Flex Consumption app has no VNet integration in this stack (see public_network_access).
  #checkov:skip=CKV_AZURE_59:Public network access is a variable (public_network_access, default true) because the serverless app has no VNet integration; every request still needs an Entra ID token.
  name                              = "${var.name}${var.stage}data${local.suffix}"
  resource_group_name               = local.resource_group_name
  location                          = var.location
  account_kind                      = "StorageV2"
  account_tier                      = "Standard"
  account_replication_type          = local.is_prod ? "ZRS" : "LRS"
  https_traffic_only_enabled        = true
  min_tls_version                   = "TLS1_2"
  allow_nested_items_to_be_public   = false
  shared_access_key_enabled         = false
  default_to_oauth_authentication   = true
  local_user_enabled                = false
  infrastructure_encryption_enabled = true
  public_network_access_enabled     = var.public_network_access
  tags                              = local.tags

  blob_properties {
    versioning_enabled = true # a re-uploaded batch file is a new version; the old one stays readable to resume

    delete_retention_policy {
      days = var.blob_soft_delete_days
    }

    container_delete_retention_policy {
      days = var.blob_soft_delete_days
    }
  }

  sas_policy {
    expiration_period = "00.01:00:00" # user delegation SAS only (no keys): at most one hour
    expiration_action = "Log"
  }

  network_rules {
    default_action = var.public_network_access ? "Allow" : "Deny"
    bypass         = ["AzureServices", "Logging", "Metrics"]
  }
}

resource "azurerm_storage_container" "data" {
  #checkov:skip=CKV2_AZURE_21:No blob read logging on the host account: this container holds only the function package, which the platform reads at every cold start (tenant data is in the data account, whose reads are logged: monitoring.tf).
  name                  = local.data_container
  storage_account_id    = azurerm_storage_account.data.id
  container_access_type = "private"
}

resource "azurerm_storage_container" "deadletter" {
  #checkov:skip=CKV2_AZURE_21:No blob read logging on the host account: this container holds only the function package, which the platform reads at every cold start (tenant data is in the data account, whose reads are logged: monitoring.tf).
  name                  = local.deadletter_container
  storage_account_id    = azurerm_storage_account.data.id
  container_access_type = "private"
}

# -- lifecycle rules ---------------------------------------------------------------------------------------

resource "azurerm_storage_management_policy" "data" {
  storage_account_id = azurerm_storage_account.data.id

  rule {
    name    = "batch-output-expiry"
    enabled = true
    filters {
      blob_types   = ["blockBlob", "appendBlob"]
      prefix_match = ["${local.data_container}/${local.prefix_batch_output}"]
    }
    actions {
      base_blob {
        delete_after_days_since_modification_greater_than = var.batch_output_retention_days
      }
    }
  }

  rule {
    name    = "batch-input-expiry"
    enabled = true
    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["${local.data_container}/${local.prefix_batch_input}"]
    }
    actions {
      base_blob {
        delete_after_days_since_modification_greater_than = var.batch_input_retention_days
      }
    }
  }

  # Job messages (batch-input/.jobs/): each run or continuation writes a new one, so old ones are spent.
  rule {
    name    = "batch-jobs-cleanup"
    enabled = true
    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["${local.data_container}/${local.prefix_batch_jobs}"]
    }
    actions {
      base_blob {
        delete_after_days_since_modification_greater_than = var.batch_jobs_retention_days
      }
    }
  }

  rule {
    name    = "models-to-cool"
    enabled = true
    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["${local.data_container}/${local.prefix_models}"]
    }
    actions {
      base_blob {
        tier_to_cool_after_days_since_modification_greater_than = 30
      }
    }
  }

  rule {
    name    = "deadletter-expiry"
    enabled = true
    filters {
      blob_types   = ["blockBlob"]
      prefix_match = ["${local.deadletter_container}/"]
    }
    actions {
      base_blob {
        delete_after_days_since_modification_greater_than = 30
      }
    }
  }

  # Replaced and deleted versions of any blob (versioning keeps them otherwise forever).
  rule {
    name    = "old-versions"
    enabled = true
    filters {
      blob_types = ["blockBlob", "appendBlob"]
    }
    actions {
      version {
        delete_after_days_since_creation = var.noncurrent_version_days
      }
    }
  }
}

resource "azurerm_storage_management_policy" "host" {
  storage_account_id = azurerm_storage_account.host.id

  # Old app packages and the host's replaced blobs: a week is enough to roll back by hand.
  rule {
    name    = "old-versions"
    enabled = true
    filters {
      blob_types = ["blockBlob", "appendBlob"]
    }
    actions {
      version {
        delete_after_days_since_creation = 7
      }
    }
  }
}
