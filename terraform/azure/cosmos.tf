# Cosmos DB (NoSQL API): the account (Entra ID only: local, key-based auth is off), the `textnlp` database and
# its four containers with hierarchical partition keys and default TTL. Names and partition key paths are the
# ones adapters/azure's store uses (local.cosmos_containers).

resource "azurerm_cosmosdb_account" "main" {
  #checkov:skip=CKV_AZURE_140:Local (key) authentication is off: azurerm 5.x spells it local_authentication_enabled = false (below); checkov 3.3.30 still reads local_authentication_disabled, which 5.0 removed.
  #checkov:skip=CKV_AZURE_99:Public network access is a variable (public_network_access, default true): the Flex Consumption app has no VNet integration in this stack, and every request needs an Entra ID token (local auth is off).
  #checkov:skip=CKV_AZURE_101:Same as CKV_AZURE_99: public network access is the public_network_access variable.
  #checkov:skip=CKV_AZURE_100:Encrypted at rest with service-managed keys; customer-managed keys need a key vault key and rotation process this stack does not own.
  name                               = "${local.prefix}-cosmos-${local.suffix}"
  resource_group_name                = local.resource_group_name
  location                           = var.location
  offer_type                         = "Standard"
  kind                               = "GlobalDocumentDB"
  minimal_tls_version                = "Tls12"
  local_authentication_enabled       = false
  access_key_metadata_writes_enabled = false
  public_network_access_enabled      = var.public_network_access
  automatic_failover_enabled         = false
  tags                               = local.tags

  # Serverless is a capability of the account; autoscale is throughput on the database (below).
  dynamic "capabilities" {
    for_each = var.cosmos_capacity_mode == "serverless" ? ["EnableServerless"] : []
    content {
      name = capabilities.value
    }
  }

  consistency_policy {
    consistency_level = "Session" # read-your-writes per client; the store's conditional writes use etags
  }

  geo_location {
    location          = var.location
    failover_priority = 0
  }

  backup {
    type = "Continuous"
    tier = "Continuous7Days"
  }
}

resource "azurerm_cosmosdb_sql_database" "main" {
  name                = local.cosmos_database
  resource_group_name = local.resource_group_name
  account_name        = azurerm_cosmosdb_account.main.name

  # Shared autoscale throughput for the four containers (none on a serverless account).
  dynamic "autoscale_settings" {
    for_each = var.cosmos_capacity_mode == "autoscale" ? [var.cosmos_autoscale_max_throughput] : []
    content {
      max_throughput = autoscale_settings.value
    }
  }
}

# Every container: the partition key [/tenant, /part] (hierarchical, MultiHash, version 2), default TTL -1
# (on, per item) for counters and cache, none for usage and documents.
resource "azurerm_cosmosdb_sql_container" "main" {
  for_each = local.cosmos_containers

  name                  = each.key
  resource_group_name   = local.resource_group_name
  account_name          = azurerm_cosmosdb_account.main.name
  database_name         = azurerm_cosmosdb_sql_database.main.name
  partition_key_paths   = local.cosmos_partition_key_paths
  partition_key_kind    = "MultiHash"
  partition_key_version = 2
  default_ttl           = each.value.default_ttl

  indexing_policy {
    indexing_mode = "consistent"

    included_path {
      path = "/*"
    }

    excluded_path {
      path = "/\"_etag\"/?"
    }
  }
}
