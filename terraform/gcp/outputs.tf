output "api_url" {
  description = "Base URL of the TextNLP API (the openai SDK's base_url is <api_url>/v1)."
  value       = google_cloudfunctions2_function.api.url
}

output "input_bucket" {
  description = "Drop batch files here, under batch-input/<tenant>/; each new object starts a batch."
  value       = google_storage_bucket.input.name
}

output "data_bucket" {
  description = "files/, batch-output/ and models/."
  value       = google_storage_bucket.data.name
}

output "firestore_database" {
  description = "The Firestore database the functions use (TEXTNLP_FIRESTORE_DATABASE)."
  value       = google_firestore_database.main.name
}

output "admin_key_secret" {
  description = "Secret holding the first admin key: gcloud secrets versions access latest --secret <this>."
  value       = google_secret_manager_secret.admin_key.secret_id
}

output "signing_keys_secret" {
  description = "Secret holding the JWT signing keys (written by the api)."
  value       = google_secret_manager_secret.signing_keys.id
}

output "service_accounts" {
  description = "The functions' service accounts."
  value = {
    api     = google_service_account.api.email
    batch   = google_service_account.batch.email
    trigger = google_service_account.trigger.email
  }
}

output "vertex_endpoint" {
  description = "The Vertex AI endpoint (projects/<project>/locations/<region>/endpoints/<id>) to register as a model of type vertex; null without vertex_size."
  value       = local.vertex_enable ? google_vertex_ai_endpoint_with_model_garden_deployment.model[0].id : null
}

output "dashboard" {
  description = "The Cloud Monitoring dashboard."
  value       = "https://console.cloud.google.com/monitoring/dashboards/builder/${element(split("/", google_monitoring_dashboard.main.id), length(split("/", google_monitoring_dashboard.main.id)) - 1)}?project=${var.project_id}"
}
