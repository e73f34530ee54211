# Secret Manager: the deployment's first admin key (generated here) and the JWT signing keys (written by the
# api itself: the first RS256 key on first use, then on each POST /admin/signing-keys/rotate).

resource "google_secret_manager_secret" "admin_key" {
  secret_id = "${local.prefix}-admin-key"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}

# Kept in the Terraform state: use a remote, encrypted state backend (see README). Replace it by creating a new
# admin key through the API and revoking this one (rotation here would lock out scripts that hold it).
resource "random_password" "admin_key" {
  length  = 48
  special = false
}

resource "google_secret_manager_secret_version" "admin_key" {
  secret      = google_secret_manager_secret.admin_key.id
  secret_data = random_password.admin_key.result
}

# No version here: a secret without the textnlp-current alias holds no keys, and the api adds the first one.
# Versions are written and aliased by the api (compare-and-swap on the alias, adapters/gcp/secret_manager.py).
resource "google_secret_manager_secret" "signing_keys" {
  secret_id = "${local.prefix}-signing-keys"

  replication {
    auto {}
  }

  depends_on = [google_project_service.apis]
}
