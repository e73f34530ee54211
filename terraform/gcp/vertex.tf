# The optional Vertex AI endpoint: a Hugging Face model on Model Garden's vLLM container, on the machine and
# accelerators of var.vertex_size (locals.tf). It serves :predict and the OpenAI-compatible chat route that
# adapters/gcp/vertex.py calls; register it as a model of type `vertex` with the endpoint in the output.

resource "google_vertex_ai_endpoint_with_model_garden_deployment" "model" {
  count = local.vertex_enable ? 1 : 0

  location              = var.region
  hugging_face_model_id = var.vertex_hf_model_id

  model_config {
    accept_eula               = true
    hugging_face_access_token = var.vertex_hf_token
    model_display_name        = "${local.prefix}-${var.vertex_size}"
  }

  deploy_config {
    dedicated_resources {
      machine_spec {
        machine_type      = local.vertex.machine_type
        accelerator_type  = local.vertex.accelerator_type
        accelerator_count = local.vertex.accelerator_count
      }
      min_replica_count = var.vertex_min_replicas
      max_replica_count = max(var.vertex_min_replicas, var.vertex_max_replicas)
    }
  }

  timeouts {
    create = "180m"
  }

  depends_on = [google_project_service.apis]
}
