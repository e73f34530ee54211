# The two Cloud Run functions (2nd gen), built from this repository: core/, adapters/, functions/gcp/, a root
# main.py that re-exports the entry points of functions/gcp/main.py, and functions/gcp/requirements.txt as
# the root requirements.txt (what the Python buildpack installs).

data "archive_file" "source" {
  type        = "zip"
  output_path = "${path.module}/.build/function-source.zip"

  source {
    filename = "main.py"
    content  = "\"\"\"Cloud Run functions entry points: api (HTTP) and batch (CloudEvent), from functions/gcp/main.py.\"\"\"\n\nfrom functions.gcp.main import api, batch\n\n__all__ = [\"api\", \"batch\"]\n"
  }

  source {
    filename = "requirements.txt"
    content  = file("${local.repo_root}/functions/gcp/requirements.txt")
  }

  dynamic "source" {
    for_each = fileset(local.repo_root, "{core,adapters}/**/*.py")
    content {
      filename = source.value
      content  = file("${local.repo_root}/${source.value}")
    }
  }

  dynamic "source" {
    for_each = setunion(["functions/__init__.py"], fileset(local.repo_root, "functions/gcp/**/*.py"))
    content {
      filename = source.value
      content  = file("${local.repo_root}/${source.value}")
    }
  }
}

# Named by content: a code change uploads a new object and redeploys both functions, nothing else does.
resource "google_storage_bucket_object" "source" {
  name   = "function-source-${data.archive_file.source.output_md5}.zip"
  bucket = google_storage_bucket.source.name
  source = data.archive_file.source.output_path
}

resource "google_cloudfunctions2_function" "api" {
  #checkov:skip=CKV_GCP_124:A public API for the openai SDK; the gateway authenticates every request itself (API keys, its JWTs). Put a load balancer in front with ALLOW_INTERNAL_AND_GCLB if you need Cloud Armor.
  name        = "${local.prefix}-api"
  location    = var.region
  description = "TextNLP HTTP API (OpenAI-compatible, native and admin routes)"

  build_config {
    runtime         = "python312"
    entry_point     = "api"
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    min_instance_count               = var.api_min_instances
    max_instance_count               = var.api_max_instances
    max_instance_request_concurrency = var.api_concurrency
    available_cpu                    = var.api_cpu
    available_memory                 = var.api_memory
    timeout_seconds                  = var.api_timeout_seconds
    ingress_settings                 = "ALLOW_ALL"
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.api.email
    environment_variables            = local.api_env
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.build_logs,
    google_project_iam_member.build_artifacts,
    google_storage_bucket_iam_member.build_source,
  ]
}

resource "google_cloudfunctions2_function" "batch" {
  name        = "${local.prefix}-batch"
  location    = var.region
  description = "TextNLP batch worker: one batch-input/<tenant>/ object per event, idempotent by bucket, name and generation"

  build_config {
    runtime         = "python312"
    entry_point     = "batch"
    service_account = google_service_account.build.id

    source {
      storage_source {
        bucket = google_storage_bucket.source.name
        object = google_storage_bucket_object.source.name
      }
    }
  }

  service_config {
    min_instance_count               = 0
    max_instance_count               = var.batch_max_instances
    max_instance_request_concurrency = 1 # one batch file per instance: its CPU and memory are the file's
    available_cpu                    = "1"
    available_memory                 = var.batch_memory
    timeout_seconds                  = var.batch_timeout_seconds
    ingress_settings                 = "ALLOW_INTERNAL_ONLY" # Eventarc only
    all_traffic_on_latest_revision   = true
    service_account_email            = google_service_account.batch.email
    environment_variables            = local.batch_env
  }

  # Every object finalized in the input bucket. A failed delivery is retried (for up to 24 hours): the batch
  # is idempotent by generation and resumes where the last invocation stopped.
  event_trigger {
    trigger_region        = var.region
    event_type            = "google.cloud.storage.object.v1.finalized"
    retry_policy          = "RETRY_POLICY_RETRY"
    service_account_email = google_service_account.trigger.email

    event_filters {
      attribute = "bucket"
      value     = google_storage_bucket.input.name
    }
  }

  depends_on = [
    google_project_service.apis,
    google_project_iam_member.build_logs,
    google_project_iam_member.build_artifacts,
    google_storage_bucket_iam_member.build_source,
    google_project_iam_member.trigger_event_receiver,
    google_project_iam_member.gcs_agent_publishes,
  ]
}
