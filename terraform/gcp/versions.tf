# Terraform and provider versions. The google provider is pinned to its 7.x major: every resource and
# argument used here exists in 7.x (google_vertex_ai_endpoint_with_model_garden_deployment with
# hugging_face_model_id included). `terraform init` writes .terraform.lock.hcl; commit it with the first apply.
terraform {
  required_version = ">= 1.6, < 2.0"

  required_providers {
    google = {
      source  = "hashicorp/google"
      version = "~> 7.0"
    }
    random = {
      source  = "hashicorp/random"
      version = "~> 3.6"
    }
    archive = {
      source  = "hashicorp/archive"
      version = "~> 2.4"
    }
  }
}

provider "google" {
  project = var.project_id
  region  = var.region

  default_labels = merge(var.labels, {
    project = "textnlp"
    stage   = var.stage
  })
}
