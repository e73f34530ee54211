# Service accounts and least-privilege grants. Each function runs as its own account, and every role is
# granted on the resource it is for (bucket, secret, database, service account, Cloud Run service) except
# where Google Cloud has no narrower scope: Eventarc's event receiver and Vertex AI (custom roles with only
# the permissions the code uses). No basic role (owner, editor, viewer) anywhere; tests/infra checks it.

resource "google_service_account" "api" {
  account_id   = "${local.prefix}-api"
  display_name = "TextNLP api function (${var.stage})"
  description  = "Runs the HTTP api: Firestore, the data and input buckets, both secrets, Vertex AI predictions and fine-tune jobs."
}

resource "google_service_account" "batch" {
  account_id   = "${local.prefix}-batch"
  display_name = "TextNLP batch function (${var.stage})"
  description  = "Runs batch files: reads the input bucket, writes the data bucket, Firestore, Vertex AI predictions."
}

# Eventarc delivers the input bucket's events to the batch function as this account.
resource "google_service_account" "trigger" {
  account_id   = "${local.prefix}-trigger"
  display_name = "TextNLP batch trigger (${var.stage})"
  description  = "Eventarc trigger identity: receives Cloud Storage events and invokes the batch function."
}

# Cloud Build builds both functions as this account (not the project's default compute account).
resource "google_service_account" "build" {
  account_id   = "${local.prefix}-build"
  display_name = "TextNLP function builds (${var.stage})"
  description  = "Builds the functions' images: reads the source bucket, pushes to Artifact Registry, writes build logs."
}

# Vertex AI custom training jobs (fine-tuning) run as this account; the api may only pass it to Vertex AI.
resource "google_service_account" "training" {
  count = var.fine_tuning ? 1 : 0

  account_id   = "${local.prefix}-training"
  display_name = "TextNLP fine-tune jobs (${var.stage})"
  description  = "Vertex AI custom training jobs: read training files and write model artefacts in the data bucket."
}

# -- custom roles: only the permissions the adapters name ------------------------------------------------

# adapters/gcp/secret_manager.py SecretManagerSigningKeys: access the alias, add a version, read and patch the
# secret's aliases (etag compare-and-swap), destroy a losing round's version.
resource "google_project_iam_custom_role" "signing_keys_writer" {
  role_id     = "${replace(local.prefix, "-", "_")}_signing_keys_writer"
  title       = "TextNLP signing keys writer (${var.stage})"
  description = "Rotate the JWT signing keys secret by an alias compare-and-swap."
  permissions = [
    "secretmanager.secrets.get",
    "secretmanager.secrets.update",
    "secretmanager.versions.access",
    "secretmanager.versions.add",
    "secretmanager.versions.destroy",
  ]
}

# adapters/gcp/vertex*.py: :predict, :rawPredict and the OpenAI-compatible chat route of an endpoint.
resource "google_project_iam_custom_role" "vertex_invoker" {
  role_id     = "${replace(local.prefix, "-", "_")}_vertex_invoker"
  title       = "TextNLP Vertex AI invoker (${var.stage})"
  description = "Call Vertex AI endpoints (predict, rawPredict, chat completions)."
  permissions = ["aiplatform.endpoints.predict"]
}

# Fine-tune jobs: start, read and cancel a custom training job, upload its model, deploy it to an endpoint.
resource "google_project_iam_custom_role" "vertex_tuner" {
  count = var.fine_tuning ? 1 : 0

  role_id     = "${replace(local.prefix, "-", "_")}_vertex_tuner"
  title       = "TextNLP Vertex AI fine-tuner (${var.stage})"
  description = "Run custom training jobs and deploy their models to endpoints."
  permissions = [
    "aiplatform.customJobs.cancel",
    "aiplatform.customJobs.create",
    "aiplatform.customJobs.get",
    "aiplatform.endpoints.create",
    "aiplatform.endpoints.deploy",
    "aiplatform.endpoints.get",
    "aiplatform.models.get",
    "aiplatform.models.upload",
  ]
}

locals {
  # Firestore roles are project roles; this condition confines them to the stack's database.
  firestore_condition = "resource.name == \"projects/${var.project_id}/databases/${google_firestore_database.main.name}\""
}

# -- api ------------------------------------------------------------------------------------------------

resource "google_project_iam_member" "api_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.api.member

  condition {
    title       = "textnlp-database-only"
    description = "Only the TextNLP Firestore database"
    expression  = local.firestore_condition
  }
}

# files/ read-write, batch-output/ read, models/ read (fine-tune artefacts).
resource "google_storage_bucket_iam_member" "api_data" {
  bucket = google_storage_bucket.data.name
  role   = "roles/storage.objectUser"
  member = google_service_account.api.member
}

# Batches created through the API are started by writing their input to batch-input/ (the trigger runs them);
# the api reads input files back for GET /v1/batches and cancels by deleting them.
resource "google_storage_bucket_iam_member" "api_input" {
  bucket = google_storage_bucket.input.name
  role   = "roles/storage.objectUser"
  member = google_service_account.api.member
}

resource "google_secret_manager_secret_iam_member" "api_admin_key" {
  secret_id = google_secret_manager_secret.admin_key.id
  role      = "roles/secretmanager.secretAccessor"
  member    = google_service_account.api.member
}

resource "google_secret_manager_secret_iam_member" "api_signing_keys" {
  secret_id = google_secret_manager_secret.signing_keys.id
  role      = google_project_iam_custom_role.signing_keys_writer.name
  member    = google_service_account.api.member
}

resource "google_project_iam_member" "api_vertex_invoker" {
  project = var.project_id
  role    = google_project_iam_custom_role.vertex_invoker.name
  member  = google_service_account.api.member
}

resource "google_project_iam_member" "api_vertex_tuner" {
  count = var.fine_tuning ? 1 : 0

  project = var.project_id
  role    = google_project_iam_custom_role.vertex_tuner[0].name
  member  = google_service_account.api.member
}

# Passing the training account to Vertex AI (the CustomJob's serviceAccount): that account only.
resource "google_service_account_iam_member" "api_act_as_training" {
  count = var.fine_tuning ? 1 : 0

  service_account_id = google_service_account.training[0].name
  role               = "roles/iam.serviceAccountUser"
  member             = google_service_account.api.member
}

# -- batch ----------------------------------------------------------------------------------------------

resource "google_project_iam_member" "batch_firestore" {
  project = var.project_id
  role    = "roles/datastore.user"
  member  = google_service_account.batch.member

  condition {
    title       = "textnlp-database-only"
    description = "Only the TextNLP Firestore database"
    expression  = local.firestore_condition
  }
}

# Reads the batch file (and its earlier generations when resuming); never writes the input bucket.
resource "google_storage_bucket_iam_member" "batch_input" {
  bucket = google_storage_bucket.input.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.batch.member
}

# Writes batch-output/ and files/ (results and error files), reads files/.
resource "google_storage_bucket_iam_member" "batch_data" {
  bucket = google_storage_bucket.data.name
  role   = "roles/storage.objectUser"
  member = google_service_account.batch.member
}

resource "google_project_iam_member" "batch_vertex_invoker" {
  project = var.project_id
  role    = google_project_iam_custom_role.vertex_invoker.name
  member  = google_service_account.batch.member
}

# -- trigger --------------------------------------------------------------------------------------------

# Eventarc's receiver role has no narrower scope than the project.
resource "google_project_iam_member" "trigger_event_receiver" {
  project = var.project_id
  role    = "roles/eventarc.eventReceiver"
  member  = google_service_account.trigger.member
}

# Invoke the batch function's Cloud Run service, and nothing else.
resource "google_cloud_run_v2_service_iam_member" "trigger_invokes_batch" {
  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.batch.name # the function's Cloud Run service has its name
  role     = "roles/run.invoker"
  member   = google_service_account.trigger.member
}

# Cloud Storage publishes its events through Pub/Sub as its own service agent (required for storage triggers).
data "google_storage_project_service_account" "gcs" {
  project = var.project_id
}

resource "google_project_iam_member" "gcs_agent_publishes" {
  project = var.project_id
  role    = "roles/pubsub.publisher"
  member  = data.google_storage_project_service_account.gcs.member
}

# -- build ----------------------------------------------------------------------------------------------

resource "google_project_iam_member" "build_logs" {
  project = var.project_id
  role    = "roles/logging.logWriter"
  member  = google_service_account.build.member
}

# Cloud Functions creates its own gcf-artifacts repository at the first deploy: no narrower scope exists yet.
resource "google_project_iam_member" "build_artifacts" {
  project = var.project_id
  role    = "roles/artifactregistry.writer"
  member  = google_service_account.build.member
}

resource "google_storage_bucket_iam_member" "build_source" {
  bucket = google_storage_bucket.source.name
  role   = "roles/storage.objectViewer"
  member = google_service_account.build.member
}

# -- training -------------------------------------------------------------------------------------------

# Reads training files (files/), writes model artefacts (models/).
resource "google_storage_bucket_iam_member" "training_data" {
  count = var.fine_tuning ? 1 : 0

  bucket = google_storage_bucket.data.name
  role   = "roles/storage.objectUser"
  member = google_service_account.training[0].member
}

# -- api: public invocation -----------------------------------------------------------------------------

# The gateway authenticates every request itself (API keys, its own JWTs): Cloud Run's IAM check must let
# the openai SDK through. Off with public_api = false.
resource "google_cloud_run_v2_service_iam_member" "api_public" {
  count = var.public_api ? 1 : 0

  project  = var.project_id
  location = var.region
  name     = google_cloudfunctions2_function.api.name
  role     = "roles/run.invoker"
  member   = "allUsers"
}
