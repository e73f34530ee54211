# The Google APIs the stack uses. Never disabled on destroy: other workloads of the project may use them.
resource "google_project_service" "apis" {
  for_each = var.enable_apis ? toset(local.apis) : toset([])

  service                    = each.value
  disable_on_destroy         = false
  disable_dependent_services = false
}
