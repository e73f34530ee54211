# Names, the blob layout, the Cosmos DB layout the store relies on, the Azure ML sizes and the function app's
# settings, in one place.

locals {
  prefix  = "${var.name}-${var.stage}"
  is_prod = var.stage == "prod"
  # Storage accounts and the vault need globally unique names: <name><stage><role><suffix>, at most 24 chars.
  suffix    = random_string.suffix.result
  repo_root = abspath("${path.module}/../..")

  tags = merge(var.tags, {
    project    = "textnlp"
    stage      = var.stage
    managed-by = "terraform"
  })

  resource_group_name = var.resource_group_name == null ? azurerm_resource_group.main[0].name : data.azurerm_resource_group.existing[0].name

  # Blob layout of the data container (the same prefixes as the S3 and Cloud Storage buckets; the names in
  # functions/azure/blob_events.py): files/ (uploads), batch-input/<tenant>/ (each new blob is a batch: Event
  # Grid starts the batch function), batch-input/.jobs/<tenant>/ (job messages: a batch created through the
  # API, or the continuation of one that ran out of time; under batch-input/ so the same subscription runs
  # them), batch-output/<tenant>/ (results and error files), models/ (fine-tune artefacts).
  data_container       = "data"
  deadletter_container = "eventgrid-deadletter"
  deploy_container     = "app-package"
  prefix_batch_input   = "batch-input/"
  prefix_batch_output  = "batch-output/"
  prefix_batch_jobs    = "batch-input/.jobs/"
  prefix_models        = "models/"
  # Event Grid subjects of Blob Storage events: /blobServices/default/containers/<container>/blobs/<name>.
  batch_input_subject = "/blobServices/default/containers/${local.data_container}/blobs/${local.prefix_batch_input}"

  # Cosmos DB (NoSQL API): one database, four containers, each with the hierarchical partition key
  # [/tenant, /part] (MultiHash, version 2): every item of a tenant is under its tenant, spread over `part`
  # values so that no logical partition nears 20 GB or 10,000 RU/s. default_ttl -1: TTL on, items expire by
  # their own `ttl` (expiring counters, cache entries); null: no TTL (usage records, documents stay).
  cosmos_database            = "textnlp"
  cosmos_partition_key_paths = ["/tenant", "/part"]
  cosmos_containers = {
    counters  = { default_ttl = -1, purpose = "rate-limit windows, quota periods, their shards and budget slices (per-item ttl)" }
    usage     = { default_ttl = null, purpose = "usage records, create-only and idempotent (kept)" }
    documents = { default_ttl = null, purpose = "tenants, API keys, models, files and batch records (kept)" }
    cache     = { default_ttl = -1, purpose = "response cache entries (per-item ttl)" }
  }
  counter_slices = 64

  # The optional managed online endpoint: an instance type per size (GPU memory per GPU for the alert text).
  endpoint_sizes = {
    small  = { instance_type = "Standard_NC4as_T4_v3", gpus = 1, gpu = "NVIDIA T4", gpu_memory_gib = 16 }
    medium = { instance_type = "Standard_NC24ads_A100_v4", gpus = 1, gpu = "NVIDIA A100 PCIe", gpu_memory_gib = 80 }
    large  = { instance_type = "Standard_NC48ads_A100_v4", gpus = 2, gpu = "NVIDIA A100 PCIe", gpu_memory_gib = 80 }
    xlarge = { instance_type = "Standard_ND96asr_v4", gpus = 8, gpu = "NVIDIA A100 SXM", gpu_memory_gib = 40 }
  }
  azureml         = var.enable_azureml
  endpoint_enable = var.enable_azureml && var.endpoint_size != null
  endpoint        = local.endpoint_enable ? local.endpoint_sizes[var.endpoint_size] : null
  endpoint_auth   = { aad_token = "AADToken", key = "Key" }[var.endpoint_auth_mode]
  deployment_name = "default"
  azureml_data    = "textnlpdata" # the datastore registered on the data container (TEXTNLP_AZUREML_DATASTORE)

  # What functions/azure/bootstrap.py reads. No account key, SAS or connection string anywhere: Cosmos DB,
  # Blob Storage, Key Vault and Azure ML are reached with the app's system-assigned identity (azure-identity's
  # DefaultAzureCredential), and the Functions host's own storage with AzureWebJobsStorage__* (identity-based).
  # APPLICATIONINSIGHTS_CONNECTION_STRING comes from site_config (the provider writes the setting).
  host_storage_settings = {
    # The provider writes AzureWebJobsStorage as a connection string with an empty AccountKey when the
    # deployment storage uses an identity (hashicorp/terraform-provider-azurerm#29693); an empty value here
    # replaces it, so the host reads the identity-based AzureWebJobsStorage__* settings below.
    AzureWebJobsStorage                       = ""
    AzureWebJobsStorage__accountName          = azurerm_storage_account.host.name
    AzureWebJobsStorage__credential           = "managedidentity"
    APPLICATIONINSIGHTS_AUTHENTICATION_STRING = "Authorization=AAD" # ingestion with the identity: local auth is off
  }
  textnlp_settings = {
    TEXTNLP_COSMOS_ENDPOINT     = azurerm_cosmosdb_account.main.endpoint
    TEXTNLP_COSMOS_DATABASE     = azurerm_cosmosdb_sql_database.main.name
    TEXTNLP_STORAGE_ACCOUNT_URL = trimsuffix(azurerm_storage_account.data.primary_blob_endpoint, "/")
    TEXTNLP_BLOB_CONTAINER      = azurerm_storage_container.data.name
    TEXTNLP_KEYVAULT_URL        = trimsuffix(azurerm_key_vault.main.vault_uri, "/")
    TEXTNLP_SIGNING_KEYS_SECRET = azapi_resource.signing_keys_secret.name
    TEXTNLP_ADMIN_KEY_SECRET    = azapi_resource.admin_key_secret.name
    TEXTNLP_COUNTER_SLICES      = tostring(local.counter_slices)
    TEXTNLP_TIMEOUT_S           = tostring(var.function_timeout_seconds)
    TEXTNLP_LOG_LEVEL           = var.log_level
  }
  azureml_settings = local.azureml ? {
    TEXTNLP_AZUREML_SUBSCRIPTION   = var.subscription_id
    TEXTNLP_AZUREML_RESOURCE_GROUP = local.resource_group_name
    TEXTNLP_AZUREML_WORKSPACE      = azurerm_machine_learning_workspace.main[0].name
    TEXTNLP_AZUREML_COMPUTE        = azurerm_machine_learning_compute_cluster.training[0].name
    TEXTNLP_AZUREML_DATASTORE      = azurerm_machine_learning_datastore_blobstorage.data[0].name
    TEXTNLP_TRAINING_IMAGE         = var.training_image
  } : {}
  app_settings = merge(var.extra_app_settings, local.host_storage_settings, local.textnlp_settings, local.azureml_settings)
}

resource "random_string" "suffix" {
  length  = 6
  special = false
  upper   = false
}
