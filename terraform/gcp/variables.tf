# Inputs of the stack. Only project_id is required; everything else has the defaults of cdk/README.md.

variable "project_id" {
  description = "Google Cloud project to deploy into (its ID, not its number)."
  type        = string

  validation {
    condition     = can(regex("^[a-z][a-z0-9-]{4,28}[a-z0-9]$", var.project_id))
    error_message = "project_id must be a project ID: 6-30 lowercase letters, digits and hyphens, starting with a letter."
  }
}

variable "region" {
  description = "Region of the functions, the buckets (so the Eventarc trigger can watch them) and the Vertex AI endpoint."
  type        = string
  default     = "us-central1"

  validation {
    condition     = can(regex("^[a-z]+-[a-z]+[0-9]+$", var.region))
    error_message = "region must be a Google Cloud region such as us-central1 or europe-west4."
  }
}

variable "name" {
  description = "Prefix of every resource name (with the stage: <name>-<stage>-...)."
  type        = string
  default     = "textnlp"

  validation {
    condition     = can(regex("^[a-z][a-z0-9]{1,11}$", var.name))
    error_message = "name must be 2-12 lowercase letters and digits, starting with a letter (service account IDs take at most 30 characters)."
  }
}

variable "stage" {
  description = "dev or prod. prod turns on Firestore delete protection and keeps buckets that still hold objects on destroy."
  type        = string
  default     = "dev"

  validation {
    condition     = contains(["dev", "prod"], var.stage)
    error_message = "stage must be dev or prod."
  }
}

variable "labels" {
  description = "Extra labels on every resource that takes labels."
  type        = map(string)
  default     = {}
}

variable "firestore_location" {
  description = "Location of the Firestore database: a multi-region (nam5, eur3) or a region (us-central1). Cannot change after creation."
  type        = string
  default     = "nam5"

  validation {
    condition     = can(regex("^[a-z0-9-]+$", var.firestore_location))
    error_message = "firestore_location must be a Firestore location ID such as nam5, eur3 or us-central1."
  }
}

variable "enable_apis" {
  description = "Enable the Google APIs the stack uses (set false where a platform team manages project services)."
  type        = bool
  default     = true
}

variable "public_api" {
  description = "Let anyone reach the api function (roles/run.invoker for allUsers). The gateway authenticates every request itself with API keys or its JWTs; set false to put it behind your own front door (IAP, a load balancer with Cloud Armor)."
  type        = bool
  default     = true
}

variable "api_concurrency" {
  description = "Requests one api instance serves at once (Cloud Run functions 2nd gen; the gateway never blocks its event loop)."
  type        = number
  default     = 40

  validation {
    condition     = var.api_concurrency >= 2 && var.api_concurrency <= 1000 && floor(var.api_concurrency) == var.api_concurrency
    error_message = "api_concurrency must be a whole number from 2 to 1000 (concurrency above 1 is the point of the api function)."
  }
}

variable "api_cpu" {
  description = "vCPUs of an api instance (concurrency above 1 needs at least 1)."
  type        = string
  default     = "1"

  validation {
    condition     = contains(["1", "2", "4", "6", "8"], var.api_cpu)
    error_message = "api_cpu must be 1, 2, 4, 6 or 8."
  }
}

variable "api_memory" {
  description = "Memory of an api instance (Cloud Run quantity: 512Mi, 1Gi, 2Gi, ...)."
  type        = string
  default     = "1Gi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.api_memory))
    error_message = "api_memory must be a quantity such as 512Mi or 2Gi."
  }
}

variable "api_min_instances" {
  description = "api instances kept warm (0 scales to zero; 1 removes most cold starts for a fee)."
  type        = number
  default     = 0

  validation {
    condition     = var.api_min_instances >= 0 && var.api_min_instances <= 100
    error_message = "api_min_instances must be from 0 to 100."
  }
}

variable "api_max_instances" {
  description = "Upper bound of api instances (caps cost and the load on Firestore and the model endpoints)."
  type        = number
  default     = 20

  validation {
    condition     = var.api_max_instances >= 1 && var.api_max_instances <= 1000
    error_message = "api_max_instances must be from 1 to 1000."
  }
}

variable "api_timeout_seconds" {
  description = "Longest api request, streams included (the gateway's own max_request_s is 900)."
  type        = number
  default     = 900

  validation {
    condition     = var.api_timeout_seconds >= 30 && var.api_timeout_seconds <= 3600
    error_message = "api_timeout_seconds must be from 30 to 3600."
  }
}

variable "batch_memory" {
  description = "Memory of a batch instance."
  type        = string
  default     = "2Gi"

  validation {
    condition     = can(regex("^[0-9]+(Mi|Gi)$", var.batch_memory))
    error_message = "batch_memory must be a quantity such as 1Gi or 4Gi."
  }
}

variable "batch_max_instances" {
  description = "Batch files processed at once, at most (one file per instance)."
  type        = number
  default     = 5

  validation {
    condition     = var.batch_max_instances >= 1 && var.batch_max_instances <= 1000
    error_message = "batch_max_instances must be from 1 to 1000."
  }
}

variable "batch_timeout_seconds" {
  description = "Longest batch invocation; an event-driven function is capped at 540 s, and a longer batch resumes in the next delivery."
  type        = number
  default     = 540

  validation {
    condition     = var.batch_timeout_seconds >= 60 && var.batch_timeout_seconds <= 540
    error_message = "batch_timeout_seconds must be from 60 to 540 (the limit of event-driven Cloud Run functions)."
  }
}

variable "batch_retention_days" {
  description = "Days after which batch-input/ objects (input bucket) and batch-output/ objects (data bucket) are deleted."
  type        = number
  default     = 30

  validation {
    condition     = var.batch_retention_days >= 1 && var.batch_retention_days <= 3650
    error_message = "batch_retention_days must be from 1 to 3650."
  }
}

variable "noncurrent_version_days" {
  description = "Days a replaced or deleted object version is kept before it is deleted."
  type        = number
  default     = 30

  validation {
    condition     = var.noncurrent_version_days >= 1 && var.noncurrent_version_days <= 3650
    error_message = "noncurrent_version_days must be from 1 to 3650."
  }
}

variable "models_nearline_days" {
  description = "Days after which models/ objects (fine-tune artefacts) move to Nearline storage."
  type        = number
  default     = 30

  validation {
    condition     = var.models_nearline_days >= 1 && var.models_nearline_days <= 3650
    error_message = "models_nearline_days must be from 1 to 3650."
  }
}

variable "fine_tuning" {
  description = "Let the api start Vertex AI custom training jobs and deploy their models (POST /v1/fine_tuning/jobs)."
  type        = bool
  default     = true
}

variable "training_image" {
  description = "The Vertex AI training container fine-tune jobs run (a Hugging Face PyTorch training image by default)."
  type        = string
  default     = "us-docker.pkg.dev/deeplearning-platform-release/gcr.io/huggingface-pytorch-training-cu121.2-3.transformers.4-42.ubuntu2204.py310"
}

variable "vertex_size" {
  description = "Size of the optional Vertex AI endpoint: null (none), small (g2-standard-4, 1 L4), medium (g2-standard-8, 1 L4), large (g2-standard-48, 4 L4), xlarge (a2-highgpu-8g, 8 A100)."
  type        = string
  default     = null
  nullable    = true

  validation {
    condition     = var.vertex_size == null || contains(["small", "medium", "large", "xlarge"], coalesce(var.vertex_size, "none"))
    error_message = "vertex_size must be null, small, medium, large or xlarge."
  }
}

variable "vertex_hf_model_id" {
  description = "Hugging Face model the endpoint serves (Model Garden's vLLM container)."
  type        = string
  default     = "HuggingFaceTB/SmolLM2-1.7B-Instruct"

  validation {
    condition     = can(regex("^[A-Za-z0-9_.-]+/[A-Za-z0-9_.-]+$", var.vertex_hf_model_id))
    error_message = "vertex_hf_model_id must be a Hugging Face model ID: <owner>/<model>."
  }
}

variable "vertex_hf_token" {
  description = "Hugging Face read token, for gated models only (kept in the state: use a remote, encrypted backend)."
  type        = string
  default     = null
  nullable    = true
  sensitive   = true
}

variable "vertex_min_replicas" {
  description = "Replicas the endpoint always runs (at least 1: a Vertex AI dedicated endpoint does not scale to zero)."
  type        = number
  default     = 1

  validation {
    condition     = var.vertex_min_replicas >= 1 && var.vertex_min_replicas <= 100
    error_message = "vertex_min_replicas must be from 1 to 100."
  }
}

variable "vertex_max_replicas" {
  description = "Replicas the endpoint may scale to (charged against the GPU quota at this number)."
  type        = number
  default     = 1

  validation {
    condition     = var.vertex_max_replicas >= 1 && var.vertex_max_replicas <= 100
    error_message = "vertex_max_replicas must be from 1 to 100."
  }
}

variable "extra_env" {
  description = "More environment variables for both functions (TEXTNLP_COUNTER_SHARDS, TEXTNLP_CACHE, ...); they cannot replace the stack's own."
  type        = map(string)
  default     = {}

  validation {
    condition     = alltrue([for k in keys(var.extra_env) : can(regex("^TEXTNLP_[A-Z0-9_]+$", k))])
    error_message = "extra_env keys must be TEXTNLP_* settings."
  }
}

variable "alert_email" {
  description = "E-mail address the alert policies notify (none: alerts show in Cloud Monitoring only)."
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

variable "alert_p99_latency_ms" {
  description = "Alert when the api's p99 latency stays above this many milliseconds (over 5 minutes)."
  type        = number
  default     = 20000

  validation {
    condition     = var.alert_p99_latency_ms >= 100 && var.alert_p99_latency_ms <= 3600000
    error_message = "alert_p99_latency_ms must be from 100 to 3600000."
  }
}

variable "alert_gpu_memory_percent" {
  description = "Alert when the endpoint's GPU memory in use stays above this percentage of its GPUs' memory."
  type        = number
  default     = 95

  validation {
    condition     = var.alert_gpu_memory_percent >= 50 && var.alert_gpu_memory_percent <= 100
    error_message = "alert_gpu_memory_percent must be from 50 to 100."
  }
}
