# Log-based metrics from the functions' structured metric lines (adapters/gcp/metrics.py):
#   {"severity":"INFO","message":"metric <name>","metric":"<name>","kind":"counter"|"histogram",
#    "value":<number>,"unit":"1"|"s"|...,"labels":{"model":...,"status":...}}
# Each becomes logging.googleapis.com/user/<prefix>_<name>, a DISTRIBUTION of the lines' values.

resource "google_logging_metric" "core" {
  for_each = local.log_metrics

  name        = "${local.metric_prefix}${each.key}"
  description = "TextNLP ${var.stage}: ${each.value.description} (${each.key})"
  filter = join(" AND ", [
    "resource.type=\"cloud_run_revision\"",
    "resource.labels.service_name=(\"${local.prefix}-api\" OR \"${local.prefix}-batch\")",
    "jsonPayload.metric=\"${each.key}\"",
  ])
  value_extractor = "EXTRACT(jsonPayload.value)"
  label_extractors = {
    for label in each.value.labels : label => "EXTRACT(jsonPayload.labels.${label})"
  }

  metric_descriptor {
    metric_kind  = "DELTA"
    value_type   = "DISTRIBUTION"
    unit         = each.value.unit
    display_name = "TextNLP ${each.key}"

    dynamic "labels" {
      for_each = each.value.labels
      content {
        key         = labels.value
        value_type  = "STRING"
        description = "the ${labels.value} dimension core sets"
      }
    }
  }

  # Seconds: 1 ms to ~9 h in 24 doublings. Counts: 1 to ~10^9.
  bucket_options {
    exponential_buckets {
      num_finite_buckets = each.value.unit == "s" ? 24 : 30
      growth_factor      = 2
      scale              = each.value.unit == "s" ? 0.001 : 1
    }
  }

  depends_on = [google_project_service.apis]
}
