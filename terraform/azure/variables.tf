# Inputs of the stack. Only subscription_id is required; everything else has a working default.

variable "subscription_id" {
  description = "Azure subscription to deploy into (its GUID)."
  type        = string

  validation {
    condition     = can(regex("^[0-9a-fA-F]{8}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{4}-[0-9a-fA-F]{12}$", var.subscription_id))
    error_message = "subscription_id must be a subscription GUID."
  }
}

variable "location" {
  description = "Azure region of every resource (it must offer Flex Consumption, and the GPU sizes of endpoint_size when set)."
  type        = string
  default     = "eastus2"

  validation {
    condition     = can(regex("^[a-z]+[a-z0-9]*$", var.location))
    error_message = "location must be an Azure region name such as eastus2 or swedencentral."
  }
}

variable "name" {
  description = "Prefix of every resource name (with the stage: <name>-<stage>-...; storage accounts and the vault add a random suffix)."
  type        = string
  default     = "textnlp"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,9}$", var.name))
    error_message = "name must be 2-10 lowercase letters and digits, starting with a letter (storage account names take at most 24 characters)."
  }
}

variable "stage" {
  description = "dev or prod. prod stores blobs zone-redundantly (ZRS instead of LRS); dev uses LRS."
  type        = string
  default     = "dev"

  validation {
    condition     = contains(["dev", "prod"], var.stage)
    error_message = "stage must be dev or prod."
  }
}

variable "resource_group_name" {
  description = "An existing resource group to deploy into; null creates <name>-<stage>-rg."
  type        = string
  default     = null
  nullable    = true
}

variable "tags" {
  description = "Extra tags on every resource that takes tags."
  type        = map(string)
  default     = {}
}

# -- function app ------------------------------------------------------------------------------------------

variable "function_instance_memory_mb" {
  description = "Memory of one Flex Consumption instance (2048 or 4096 MB)."
  type        = number
  default     = 2048

  validation {
    condition     = contains([2048, 4096], var.function_instance_memory_mb)
    error_message = "function_instance_memory_mb must be 2048 or 4096."
  }
}

variable "function_max_instances" {
  description = "Upper bound of instances (caps cost and the load on Cosmos DB and the model endpoints)."
  type        = number
  default     = 40

  validation {
    condition     = var.function_max_instances >= 1 && var.function_max_instances <= 1000
    error_message = "function_max_instances must be from 1 to 1000."
  }
}

variable "function_http_concurrency" {
  description = "HTTP requests one instance serves at once (the api function is async: one worker serves many)."
  type        = number
  default     = 16

  validation {
    condition     = var.function_http_concurrency >= 2 && var.function_http_concurrency <= 1000 && floor(var.function_http_concurrency) == var.function_http_concurrency
    error_message = "function_http_concurrency must be a whole number from 2 to 1000 (concurrency above 1 is the point of the async api)."
  }
}

variable "function_always_ready" {
  description = "Instances of the HTTP trigger group kept warm (0 scales to zero; 1 removes most cold starts for a fee)."
  type        = number
  default     = 0

  validation {
    condition     = var.function_always_ready >= 0 && var.function_always_ready <= 100
    error_message = "function_always_ready must be from 0 to 100."
  }
}

variable "function_timeout_seconds" {
  description = "TEXTNLP_TIMEOUT_S: a batch invocation's budget, matching host.json functionTimeout (10 minutes). HTTP requests are also cut at 230 s by the App Service front end, whatever this says."
  type        = number
  default     = 600

  validation {
    condition     = var.function_timeout_seconds >= 30 && var.function_timeout_seconds <= 3600
    error_message = "function_timeout_seconds must be from 30 to 3600."
  }
}

variable "log_level" {
  description = "TEXTNLP_LOG_LEVEL of the functions."
  type        = string
  default     = "INFO"

  validation {
    condition     = contains(["DEBUG", "INFO", "WARNING", "ERROR"], var.log_level)
    error_message = "log_level must be DEBUG, INFO, WARNING or ERROR."
  }
}

variable "app_package_zip" {
  description = "Path of a built function app zip to deploy (function_app.py and host.json at its root); null builds one from this repository (core/, adapters/, functions/azure/)."
  type        = string
  default     = null
  nullable    = true
}

variable "deploy_app_package" {
  description = "Deploy the zip with `az functionapp deployment source config-zip` (Azure CLI, signed in, on the machine running terraform) whenever its content changes. false: deploy it yourself (README)."
  type        = bool
  default     = true
}

variable "extra_app_settings" {
  description = "More app settings for the function app (TEXTNLP_CACHE, TEXTNLP_COUNTER_SHARDS, ...); they cannot replace the stack's own."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_app_settings) : can(regex("^TEXTNLP_[A-Z0-9_]+$", k))])
    error_message = "extra_app_settings keys must be TEXTNLP_* settings."
  }

  # The local emulators' credentials: on Azure the app uses its managed identity and the Key Vault secret.
  validation {
    condition     = length(setintersection(keys(var.extra_app_settings), ["TEXTNLP_COSMOS_KEY", "TEXTNLP_STORAGE_CONNECTION_STRING", "TEXTNLP_ADMIN_KEY"])) == 0
    error_message = "extra_app_settings cannot hold TEXTNLP_COSMOS_KEY, TEXTNLP_STORAGE_CONNECTION_STRING or TEXTNLP_ADMIN_KEY (keys and plaintext secrets; the stack uses identities and Key Vault)."
  }
}

# -- data --------------------------------------------------------------------------------------------------

variable "cosmos_capacity_mode" {
  description = "Cosmos DB capacity: serverless (pay per request unit consumed; one region) or autoscale (throughput shared by the database's containers, scaling between 10 % and cosmos_autoscale_max_throughput RU/s)."
  type        = string
  default     = "serverless"

  validation {
    condition     = contains(["serverless", "autoscale"], var.cosmos_capacity_mode)
    error_message = "cosmos_capacity_mode must be serverless or autoscale."
  }
}

variable "cosmos_autoscale_max_throughput" {
  description = "Highest RU/s of the database's shared autoscale throughput (cosmos_capacity_mode = autoscale only)."
  type        = number
  default     = 4000

  validation {
    condition     = var.cosmos_autoscale_max_throughput >= 1000 && var.cosmos_autoscale_max_throughput % 1000 == 0
    error_message = "cosmos_autoscale_max_throughput must be a multiple of 1000, at least 1000."
  }
}

variable "public_network_access" {
  description = "Public network access to Cosmos DB, the storage accounts and the Key Vault. The Flex Consumption app reaches them over the public endpoints unless you add VNet integration and private endpoints (not in this stack), so false is only for that setup."
  type        = bool
  default     = true
}

variable "batch_output_retention_days" {
  description = "Days after which batch-output/ blobs (results and error files) are deleted."
  type        = number
  default     = 30

  validation {
    condition     = var.batch_output_retention_days >= 1 && var.batch_output_retention_days <= 3650
    error_message = "batch_output_retention_days must be from 1 to 3650."
  }
}

variable "batch_input_retention_days" {
  description = "Days after which batch-input/ blobs are deleted (a batch reads its input once; resuming reads it again within the run)."
  type        = number
  default     = 30

  validation {
    condition     = var.batch_input_retention_days >= 1 && var.batch_input_retention_days <= 3650
    error_message = "batch_input_retention_days must be from 1 to 3650."
  }
}

variable "batch_jobs_retention_days" {
  description = "Days after which job messages (batch-input/.jobs/, written by the api and by batches that continue) are deleted."
  type        = number
  default     = 7

  validation {
    condition     = var.batch_jobs_retention_days >= 1 && var.batch_jobs_retention_days <= 3650
    error_message = "batch_jobs_retention_days must be from 1 to 3650."
  }
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted blob version is kept before it is deleted."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_days >= 1 && var.noncurrent_version_days <= 3650
    error_message = "noncurrent_version_days must be from 1 to 3650."
  }
}

variable "blob_soft_delete_days" {
  description = "Days a deleted blob or container can be restored (blob and container soft delete)."
  type        = number
  default     = 14

  validation {
    condition     = var.blob_soft_delete_days >= 1 && var.blob_soft_delete_days <= 365
    error_message = "blob_soft_delete_days must be from 1 to 365."
  }
}

variable "key_vault_soft_delete_days" {
  description = "Days a deleted vault or secret stays recoverable (purge protection keeps anyone from shortening it)."
  type        = number
  default     = 90

  validation {
    condition     = var.key_vault_soft_delete_days >= 7 && var.key_vault_soft_delete_days <= 90
    error_message = "key_vault_soft_delete_days must be from 7 to 90."
  }
}

# -- monitoring --------------------------------------------------------------------------------------------

variable "log_retention_days" {
  description = "Days Log Analytics keeps the logs (Application Insights included: it is workspace-based)."
  type        = number
  default     = 30

  validation {
    condition     = var.log_retention_days >= 30 && var.log_retention_days <= 730
    error_message = "log_retention_days must be from 30 to 730."
  }
}

variable "alert_email" {
  description = "E-mail address the action group notifies (none: the alerts still fire, in Azure Monitor only)."
  type        = string
  default     = null
  nullable    = true

  validation {
    condition     = var.alert_email == null || can(regex("^[^@\\s]+@[^@\\s]+\\.[^@\\s]+$", coalesce(var.alert_email, "x")))
    error_message = "alert_email must be an e-mail address."
  }
}

variable "alert_error_rate_percent" {
  description = "Alert when more than this percentage of api requests answer 5xx (over 5 minutes)."
  type        = number
  default     = 5

  validation {
    condition     = var.alert_error_rate_percent > 0 && var.alert_error_rate_percent <= 100
    error_message = "alert_error_rate_percent must be above 0 and at most 100."
  }
}

variable "alert_p95_latency_ms" {
  description = "Alert when the gateway's p95 latency stays above this many milliseconds (over 5 minutes)."
  type        = number
  default     = 20000

  validation {
    condition     = var.alert_p95_latency_ms >= 100 && var.alert_p95_latency_ms <= 3600000
    error_message = "alert_p95_latency_ms must be from 100 to 3600000."
  }
}

variable "alert_gpu_memory_percent" {
  description = "Alert when the endpoint deployment's GPU memory utilisation stays above this percentage."
  type        = number
  default     = 95

  validation {
    condition     = var.alert_gpu_memory_percent >= 50 && var.alert_gpu_memory_percent <= 100
    error_message = "alert_gpu_memory_percent must be from 50 to 100."
  }
}

# -- Azure ML (optional) -----------------------------------------------------------------------------------

variable "enable_azureml" {
  description = "Create an Azure ML workspace (with its own storage account and key vault), a training compute cluster and the datastore on the data container: fine-tuning (POST /v1/fine_tuning/jobs) and, with endpoint_size, a managed online endpoint."
  type        = bool
  default     = false
}

variable "endpoint_size" {
  description = "Size of the optional managed online endpoint (enable_azureml only): null (none), small (Standard_NC4as_T4_v3, 1 T4), medium (Standard_NC24ads_A100_v4, 1 A100 80 GB), large (Standard_NC48ads_A100_v4, 2 A100 80 GB), xlarge (Standard_ND96asr_v4, 8 A100 40 GB)."
  type        = string
  default     = null
  nullable    = true

  validation {
    condition     = var.endpoint_size == null || contains(["small", "medium", "large", "xlarge"], coalesce(var.endpoint_size, "none"))
    error_message = "endpoint_size must be null, small, medium, large or xlarge."
  }
}

variable "endpoint_model" {
  description = "The model the endpoint deployment serves: an Azure ML asset ID (azureml://registries/<registry>/models/<name>/versions/<n>, or a workspace model). Required with endpoint_size."
  type        = string
  default     = null
  nullable    = true

  validation {
    condition     = var.endpoint_model == null || can(regex("^azureml:", coalesce(var.endpoint_model, "x")))
    error_message = "endpoint_model must be an Azure ML asset ID starting with azureml:."
  }
}

variable "endpoint_auth_mode" {
  description = "How the gateway authenticates to the endpoint: aad_token (Microsoft Entra tokens of the function app's identity; no key to store) or key (the endpoint key, which you put in the app setting a model route's key_env names)."
  type        = string
  default     = "aad_token"

  validation {
    condition     = contains(["aad_token", "key"], var.endpoint_auth_mode)
    error_message = "endpoint_auth_mode must be aad_token or key."
  }
}

variable "endpoint_instance_count" {
  description = "Instances of the endpoint deployment (a managed online deployment does not scale to zero; each is charged against the GPU quota)."
  type        = number
  default     = 1

  validation {
    condition     = var.endpoint_instance_count >= 1 && var.endpoint_instance_count <= 20
    error_message = "endpoint_instance_count must be from 1 to 20."
  }
}

variable "training_vm_size" {
  description = "VM size of the training compute cluster (fine-tune jobs)."
  type        = string
  default     = "Standard_NC4as_T4_v3"
}

variable "training_max_nodes" {
  description = "Nodes the training cluster may scale to (it scales to zero when idle)."
  type        = number
  default     = 1

  validation {
    condition     = var.training_max_nodes >= 1 && var.training_max_nodes <= 100
    error_message = "training_max_nodes must be from 1 to 100."
  }
}

variable "training_low_priority" {
  description = "Run training nodes at low priority (cheaper, may be pre-empted; the job is then retried by Azure ML)."
  type        = bool
  default     = false
}

variable "training_image" {
  description = "TEXTNLP_TRAINING_IMAGE: the container fine-tune command jobs run (an Azure ML curated PyTorch GPU image by default; pin a version for production)."
  type        = string
  default     = "mcr.microsoft.com/azureml/curated/acpt-pytorch-2.2-cuda12.1:latest"
}
