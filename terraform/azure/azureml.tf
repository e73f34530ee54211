# The optional Azure ML side (enable_azureml): a workspace with its own storage account and key vault (Azure ML
# writes its own secrets and artefacts there, apart from the gateway's), Application Insights shared with the
# app, a training compute cluster that scales to zero, the datastore on the data container that fine-tune
# jobs read training files through, and, with endpoint_size, a managed online endpoint and its deployment.
# azurerm has no resource for managed online endpoints: they are azapi resources (the ARM API itself).

resource "azurerm_storage_account" "azureml" {
  #checkov:skip=CKV2_AZURE_1:Encrypted at rest with Microsoft-managed keys plus infrastructure encryption; customer-managed keys need a key vault key and rotation process this stack does not own.
  #checkov:skip=CKV2_AZURE_33:No private endpoint: the workspace has no managed VNet in this stack.
  count = local.azureml ? 1 : 0

  name                              = "${var.name}${var.stage}ml${local.suffix}"
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
    expiration_period = "00.01:00:00"
    expiration_action = "Log"
  }

  network_rules {
    default_action = var.public_network_access ? "Allow" : "Deny"
    bypass         = ["AzureServices", "Logging", "Metrics"]
  }
}

resource "azurerm_key_vault" "azureml" {
  #checkov:skip=CKV2_AZURE_32:No private endpoint: the workspace has no managed VNet in this stack.
  count = local.azureml ? 1 : 0

  name                          = "${var.name}${var.stage}ml-${local.suffix}" # at most 23 of the 24 characters
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

resource "azurerm_machine_learning_workspace" "main" {
  #checkov:skip=CKV2_AZURE_49:Public network access is the public_network_access variable (default true): the serverless function app calls the workspace APIs and the endpoint without VNet integration; every call needs an Entra ID token and the AzureML Data Scientist role.
  #checkov:skip=CKV2_AZURE_50:The workspace storage holds no high-business-impact data (training files stay in the data container; the workspace keeps job outputs and snapshots), is Entra ID only (shared keys off) and its public access follows public_network_access.
  count = local.azureml ? 1 : 0

  name                          = "${local.prefix}-ml"
  resource_group_name           = local.resource_group_name
  location                      = var.location
  application_insights_id       = azurerm_application_insights.main.id
  key_vault_id                  = azurerm_key_vault.azureml[0].id
  storage_account_id            = azurerm_storage_account.azureml[0].id
  storage_account_access_type   = "Identity" # its storage has shared keys off
  public_network_access_enabled = var.public_network_access
  v1_legacy_mode_enabled        = false
  sku_name                      = "Basic"
  tags                          = local.tags

  identity {
    type = "SystemAssigned"
  }
}

# Fine-tune command jobs run here (TEXTNLP_AZUREML_COMPUTE). Scales to zero after 15 idle minutes.
resource "azurerm_machine_learning_compute_cluster" "training" {
  count = local.azureml ? 1 : 0

  name                          = "training"
  location                      = var.location
  machine_learning_workspace_id = azurerm_machine_learning_workspace.main[0].id
  vm_priority                   = var.training_low_priority ? "LowPriority" : "Dedicated"
  vm_size                       = var.training_vm_size
  local_auth_enabled            = false
  node_public_ip_enabled        = true # no VNet in this stack: nodes need outbound access to pull the image
  ssh_public_access_enabled     = false
  tags                          = local.tags

  identity {
    type = "SystemAssigned"
  }

  scale_settings {
    min_node_count                       = 0
    max_node_count                       = var.training_max_nodes
    scale_down_nodes_after_idle_duration = "PT15M"
  }
}

# azureml://datastores/textnlpdata/paths/files/... : the training files the api uploaded, read with the
# identity of whoever reads them (the job's, or the workspace's for previews): no credential is stored.
resource "azurerm_machine_learning_datastore_blobstorage" "data" {
  count = local.azureml ? 1 : 0

  name                       = local.azureml_data
  workspace_id               = azurerm_machine_learning_workspace.main[0].id
  storage_container_id       = azurerm_storage_container.data.id
  service_data_auth_identity = "WorkspaceSystemAssignedIdentity"
  description                = "TextNLP data container (files/, models/)"
}

# -- the managed online endpoint ---------------------------------------------------------------------------

resource "azapi_resource" "online_endpoint" {
  count = local.endpoint_enable ? 1 : 0

  type      = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints@2024-10-01"
  name      = "${local.prefix}-${local.suffix}"
  parent_id = azurerm_machine_learning_workspace.main[0].id
  location  = var.location
  tags      = local.tags

  identity {
    type = "SystemAssigned"
  }

  body = {
    kind = "Managed"
    properties = {
      authMode            = local.endpoint_auth
      description         = "TextNLP ${var.stage} model endpoint (${var.endpoint_size})"
      publicNetworkAccess = "Enabled"
    }
  }

  response_export_values = ["properties.scoringUri"]

  lifecycle {
    ignore_changes = [body.properties.traffic] # set by azapi_update_resource.endpoint_traffic
  }
}

resource "azapi_resource" "online_deployment" {
  count = local.endpoint_enable ? 1 : 0

  type      = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments@2024-10-01"
  name      = local.deployment_name
  parent_id = azapi_resource.online_endpoint[0].id
  location  = var.location
  tags      = local.tags

  body = {
    kind = "Managed"
    sku = {
      name     = "Default"
      capacity = var.endpoint_instance_count
    }
    properties = {
      endpointComputeType = "Managed"
      instanceType        = local.endpoint.instance_type
      model               = var.endpoint_model
      appInsightsEnabled  = true
      scaleSettings = {
        scaleType = "Default"
      }
      requestSettings = {
        requestTimeout                   = "PT90S" # the gateway's Azure ML timeout is 90 s too
        maxConcurrentRequestsPerInstance = 8
      }
    }
  }

  timeouts {
    create = "120m"
    update = "120m"
  }

  lifecycle {
    precondition {
      condition     = var.endpoint_model != null
      error_message = "endpoint_size needs endpoint_model (an azureml:// model asset ID)."
    }
  }
}

# All traffic to the one deployment (an endpoint's traffic map can only name deployments that exist).
resource "azapi_update_resource" "endpoint_traffic" {
  count = local.endpoint_enable ? 1 : 0

  type        = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints@2024-10-01"
  resource_id = azapi_resource.online_endpoint[0].id

  body = {
    properties = {
      traffic = {
        (local.deployment_name) = 100
      }
    }
  }

  depends_on = [azapi_resource.online_deployment]
}
