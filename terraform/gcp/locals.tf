# Names, the Firestore layout the store relies on, the log-based metrics, the Vertex AI sizes and the
# functions' environment, in one place.

locals {
  prefix    = "${var.name}-${var.stage}"
  is_prod   = var.stage == "prod"
  repo_root = abspath("${path.module}/../..")

  # Object prefixes (the same as on AWS, cdk/textnlp_cdk/storage.py). The input bucket holds batch-input/
  # only: every object finalized there starts the batch function, so nothing else may be written to it.
  prefix_batch_input  = "batch-input/"
  prefix_batch_output = "batch-output/"
  prefix_models       = "models/"

  # Firestore (native mode). Collection IDs are collection-group IDs: a TTL policy or an index on `usage`
  # covers tenants/<tenant>/usage whatever the parent. The expiry field must hold a Timestamp: the TTL
  # sweeper ignores numbers. Documents are deleted within about a day of expiring, so reads still check it.
  firestore_ttl_field = "expires_at"
  firestore_ttl_collections = {
    counters = "rate-limit windows, quota periods and their shards (tenants/<tenant>/counters, counters)"
    cache    = "response cache entries (tenants/<tenant>/cache)"
  }
  # daily_usage of every tenant is a collection-group query on one field (adapters/gcp/firestore_usage.py): a
  # collection-group single-field index; one tenant's query uses the automatic collection-scope index.
  firestore_group_indexes = {
    daily = "day"
  }
  # list_usage queries each index shard of the records by created_at (shard == n, a range on created_at): a
  # composite index per scope (a tenant's collection, every tenant's), and no single-field index on
  # created_at, whose ever-increasing values written at the request rate would cap the writes at 500 a second.
  firestore_usage_collection   = "usage"
  firestore_usage_index_fields = ["shard", "created_at"]
  firestore_usage_index_scopes = ["COLLECTION", "COLLECTION_GROUP"]

  # Log-based metrics: one per metric core emits (adapters/gcp/metrics.py writes one JSON line per counter per
  # dimension set, and one per observed value). Every one is a DISTRIBUTION of jsonPayload.value, so its sum
  # is the counter (PromQL <name>_sum) and its percentiles the histogram's. Labels: at most 10, low cardinality.
  log_metrics = {
    tokens_generated_total = { labels = ["model", "tenant"], unit = "1", description = "Completion tokens generated" }
    prompt_tokens_total    = { labels = ["model", "tenant"], unit = "1", description = "Prompt tokens charged" }
    requests_total         = { labels = ["route", "status"], unit = "1", description = "Requests answered, by route and status" }
    request_latency_seconds = {
      labels = ["route"], unit = "s", description = "Gateway latency of a request (Gateway.handle)"
    }
    cache_hits_total     = { labels = ["model", "layer"], unit = "1", description = "Response cache hits (l1: instance, l2: Firestore)" }
    cache_misses_total   = { labels = ["model"], unit = "1", description = "Response cache misses" }
    limit_refusals_total = { labels = ["limit"], unit = "1", description = "Requests refused by a rate limit or a quota" }
    backend_errors_total = { labels = ["model", "status"], unit = "1", description = "Model backend errors (Vertex AI and others)" }
    backend_latency_seconds = {
      labels = ["model"], unit = "s", description = "Latency of one model backend call"
    }
    batch_lines_total = { labels = ["status"], unit = "1", description = "Batch lines processed (ok, error)" }
  }
  metric_prefix = "${replace(local.prefix, "-", "_")}_"
  # The PromQL name of each log-based metric (Cloud Monitoring maps logging.googleapis.com/user/<name>).
  promql = { for key, metric in google_logging_metric.core : key => "logging_googleapis_com:user_${metric.name}" }

  # The optional Vertex AI endpoint: machine and accelerators per size (Model Garden's vLLM container).
  vertex_sizes = {
    small  = { machine_type = "g2-standard-4", accelerator_type = "NVIDIA_L4", accelerator_count = 1, gpu_memory_gib = 24 }
    medium = { machine_type = "g2-standard-8", accelerator_type = "NVIDIA_L4", accelerator_count = 1, gpu_memory_gib = 24 }
    large  = { machine_type = "g2-standard-48", accelerator_type = "NVIDIA_L4", accelerator_count = 4, gpu_memory_gib = 24 }
    xlarge = { machine_type = "a2-highgpu-8g", accelerator_type = "NVIDIA_TESLA_A100", accelerator_count = 8, gpu_memory_gib = 40 }
  }
  vertex        = var.vertex_size == null ? null : local.vertex_sizes[var.vertex_size]
  vertex_enable = var.vertex_size != null

  # What functions/gcp/bootstrap.py reads. Secret names are projects/<project>/secrets/<id>, as the adapters
  # in adapters/gcp/secret_manager.py take them; the endpoint is projects/<project>/locations/<region>/endpoints/<id>.
  shared_env = {
    TEXTNLP_STAGE              = var.stage
    TEXTNLP_GCP_PROJECT        = var.project_id
    TEXTNLP_GCP_REGION         = var.region
    TEXTNLP_FIRESTORE_DATABASE = google_firestore_database.main.name
    TEXTNLP_BUCKET             = google_storage_bucket.data.name
    TEXTNLP_INPUT_BUCKET       = google_storage_bucket.input.name
    TEXTNLP_METRICS_SERVICE    = var.name
    LOG_EXECUTION_ID           = "true"
  }
  api_env = merge(var.extra_env, local.shared_env, {
    TEXTNLP_TIMEOUT_S                = tostring(var.api_timeout_seconds)
    TEXTNLP_SIGNING_KEYS_SECRET      = google_secret_manager_secret.signing_keys.id
    TEXTNLP_ADMIN_KEY_SECRET         = google_secret_manager_secret.admin_key.id
    TEXTNLP_TRAINING_SERVICE_ACCOUNT = var.fine_tuning ? google_service_account.training[0].email : ""
    TEXTNLP_TRAINING_IMAGE           = var.fine_tuning ? var.training_image : ""
  })
  batch_env = merge(var.extra_env, local.shared_env, {
    TEXTNLP_TIMEOUT_S = tostring(var.batch_timeout_seconds)
  })

  apis = [
    "aiplatform.googleapis.com",
    "artifactregistry.googleapis.com",
    "cloudbuild.googleapis.com",
    "cloudfunctions.googleapis.com",
    "eventarc.googleapis.com",
    "firestore.googleapis.com",
    "iam.googleapis.com",
    "logging.googleapis.com",
    "monitoring.googleapis.com",
    "pubsub.googleapis.com",
    "run.googleapis.com",
    "secretmanager.googleapis.com",
    "storage.googleapis.com",
  ]
}
