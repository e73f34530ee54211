# Buckets: batch input (watched by the Eventarc trigger), data (files/, batch-output/, models/), the
# functions' source, and the access logs of the other three. All with uniform bucket-level access, public
# access prevention enforced, versioning, and lifecycle rules.

resource "google_storage_bucket" "logs" {
  #checkov:skip=CKV_GCP_62:This is the access-log bucket itself; logging it into itself would loop.
  name                        = "${local.prefix}-logs-${var.project_id}"
  location                    = upper(var.region)
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !local.is_prod

  versioning {
    enabled = true
  }

  lifecycle_rule {
    condition {
      age = 90
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}

# batch-input/<tenant>/<file>.jsonl only: each finalized object is one batch (its generation identifies it).
resource "google_storage_bucket" "input" {
  name                        = "${local.prefix}-input-${var.project_id}"
  location                    = upper(var.region) # the trigger's region must be the bucket's location
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !local.is_prod

  versioning {
    enabled = true # a re-uploaded file is a new generation, a new batch; the old one stays readable to resume
  }

  logging {
    log_bucket        = google_storage_bucket.logs.name
    log_object_prefix = "input/"
  }

  lifecycle_rule {
    condition {
      age            = var.batch_retention_days
      matches_prefix = [local.prefix_batch_input]
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.apis]
}

# files/<tenant>/ (API files and batch results), batch-output/<tenant>/, models/ (fine-tune artefacts).
resource "google_storage_bucket" "data" {
  name                        = "${local.prefix}-data-${var.project_id}"
  location                    = upper(var.region)
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = !local.is_prod

  versioning {
    enabled = true
  }

  logging {
    log_bucket        = google_storage_bucket.logs.name
    log_object_prefix = "data/"
  }

  lifecycle_rule {
    condition {
      age            = var.batch_retention_days
      matches_prefix = [local.prefix_batch_output]
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age            = var.models_nearline_days
      matches_prefix = [local.prefix_models]
    }
    action {
      type          = "SetStorageClass"
      storage_class = "NEARLINE"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = var.noncurrent_version_days
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      age = 7
    }
    action {
      type = "AbortIncompleteMultipartUpload"
    }
  }

  depends_on = [google_project_service.apis]
}

# The zipped function source (Cloud Build reads it once per deploy); old zips go after 30 days.
resource "google_storage_bucket" "source" {
  name                        = "${local.prefix}-source-${var.project_id}"
  location                    = upper(var.region)
  storage_class               = "STANDARD"
  uniform_bucket_level_access = true
  public_access_prevention    = "enforced"
  force_destroy               = true # holds only build inputs, recreated from the repository

  versioning {
    enabled = true
  }

  logging {
    log_bucket        = google_storage_bucket.logs.name
    log_object_prefix = "source/"
  }

  lifecycle_rule {
    condition {
      age = 30
    }
    action {
      type = "Delete"
    }
  }

  lifecycle_rule {
    condition {
      days_since_noncurrent_time = 7
    }
    action {
      type = "Delete"
    }
  }

  depends_on = [google_project_service.apis]
}
