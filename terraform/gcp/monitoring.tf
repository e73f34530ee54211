# The Cloud Monitoring dashboard and the alert policies. Gateway figures come from the log-based metrics
# (metrics.tf), through PromQL where a sum of values is wanted (<metric>_sum of a distribution); what never
# reaches the code (cold-start failures, timeouts, crashes) from Cloud Run's own metrics; the endpoint's
# from Vertex AI's.

locals {
  api_service   = "${local.prefix}-api"
  batch_service = "${local.prefix}-batch"

  run_filter = {
    api   = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"${local.api_service}\""
    batch = "resource.type = \"cloud_run_revision\" AND resource.labels.service_name = \"${local.batch_service}\""
  }
  # The stack's endpoint when it has one, else every endpoint of the project (models registered by hand).
  endpoint_filter = join(" AND ", compact([
    "resource.type = \"aiplatform.googleapis.com/Endpoint\"",
    local.vertex_enable ? "resource.labels.endpoint_id = \"${google_vertex_ai_endpoint_with_model_garden_deployment.model[0].endpoint}\"" : "",
  ]))
  gpu_memory_bytes = local.vertex_enable ? local.vertex.gpu_memory_gib * local.vertex.accelerator_count * 1073741824 : 0

  notification_channels = [for channel in google_monitoring_notification_channel.email : channel.id]

  # -- dashboard widgets ---------------------------------------------------------------------------------

  promql_line = {
    plotType   = "LINE"
    targetAxis = "Y1"
  }
  metric_widgets = [
    {
      title = "Tokens generated per minute"
      xyChart = {
        dataSets = [
          merge(local.promql_line, {
            timeSeriesQuery = { prometheusQuery = "sum by (model) (increase(${local.promql["tokens_generated_total"]}_sum[1m]))" }
          }),
          merge(local.promql_line, {
            timeSeriesQuery = { prometheusQuery = "sum(increase(${local.promql["prompt_tokens_total"]}_sum[1m]))" }
            legendTemplate  = "prompt tokens"
          }),
        ]
        yAxis = { label = "tokens / min", scale = "LINEAR" }
      }
    },
    {
      title = "Request latency p50 / p95 / p99 (gateway, s)"
      xyChart = {
        dataSets = [for p in ["50", "95", "99"] : {
          plotType       = "LINE"
          targetAxis     = "Y1"
          legendTemplate = "p${p}"
          timeSeriesQuery = {
            timeSeriesFilter = {
              filter = "metric.type = \"logging.googleapis.com/user/${google_logging_metric.core["request_latency_seconds"].name}\""
              aggregation = {
                alignmentPeriod    = "60s"
                perSeriesAligner   = "ALIGN_DELTA"
                crossSeriesReducer = "REDUCE_PERCENTILE_${p}"
              }
            }
          }
        }]
        yAxis = { label = "seconds", scale = "LINEAR" }
      }
    },
    {
      title = "Request latency p50 / p95 / p99 (Cloud Run, api, ms)"
      xyChart = {
        dataSets = [for p in ["50", "95", "99"] : {
          plotType       = "LINE"
          targetAxis     = "Y1"
          legendTemplate = "p${p}"
          timeSeriesQuery = {
            timeSeriesFilter = {
              filter = "metric.type = \"run.googleapis.com/request_latencies\" AND ${local.run_filter.api}"
              aggregation = {
                alignmentPeriod    = "60s"
                perSeriesAligner   = "ALIGN_DELTA"
                crossSeriesReducer = "REDUCE_PERCENTILE_${p}"
              }
            }
          }
        }]
        yAxis = { label = "ms", scale = "LINEAR" }
      }
    },
    {
      title = "Errors by status"
      xyChart = {
        dataSets = [
          merge(local.promql_line, {
            timeSeriesQuery = { prometheusQuery = "sum by (status) (increase(${local.promql["requests_total"]}_sum{status!~\"2..\"}[1m]))" }
          }),
          merge(local.promql_line, {
            timeSeriesQuery = { prometheusQuery = "sum by (model, status) (increase(${local.promql["backend_errors_total"]}_sum[1m]))" }
          }),
        ]
        yAxis = { label = "responses / min", scale = "LINEAR" }
      }
    },
    {
      title = "Cache hit ratio (%)"
      xyChart = {
        dataSets = [merge(local.promql_line, {
          timeSeriesQuery = {
            prometheusQuery = "100 * sum(rate(${local.promql["cache_hits_total"]}_sum[5m])) / (sum(rate(${local.promql["cache_hits_total"]}_sum[5m])) + sum(rate(${local.promql["cache_misses_total"]}_sum[5m])))"
          }
          legendTemplate = "hits / (hits + misses)"
        })]
        yAxis = { label = "%", scale = "LINEAR" }
      }
    },
    {
      title = "Quota and rate-limit refusals"
      xyChart = {
        dataSets = [merge(local.promql_line, {
          timeSeriesQuery = { prometheusQuery = "sum by (limit) (increase(${local.promql["limit_refusals_total"]}_sum[1m]))" }
        })]
        yAxis = { label = "refusals / min", scale = "LINEAR" }
      }
    },
    {
      title = "Batch lines"
      xyChart = {
        dataSets = [merge(local.promql_line, {
          timeSeriesQuery = { prometheusQuery = "sum by (status) (increase(${local.promql["batch_lines_total"]}_sum[1m]))" }
        })]
        yAxis = { label = "lines / min", scale = "LINEAR" }
      }
    },
    {
      title = "Vertex AI predictions and errors"
      xyChart = {
        dataSets = [for metric in [
          "aiplatform.googleapis.com/prediction/online/prediction_count",
          "aiplatform.googleapis.com/prediction/online/error_count",
          ] : {
          plotType       = "LINE"
          targetAxis     = "Y1"
          legendTemplate = basename(metric)
          timeSeriesQuery = {
            timeSeriesFilter = {
              filter = "metric.type = \"${metric}\" AND ${local.endpoint_filter}"
              aggregation = {
                alignmentPeriod    = "60s"
                perSeriesAligner   = "ALIGN_DELTA"
                crossSeriesReducer = "REDUCE_SUM"
                groupByFields      = ["resource.label.endpoint_id"]
              }
            }
          }
        }]
        yAxis = { label = "per min", scale = "LINEAR" }
      }
    },
    {
      title = "GPU utilisation (duty cycle, %)"
      xyChart = {
        dataSets = [{
          plotType   = "LINE"
          targetAxis = "Y1"
          timeSeriesQuery = {
            timeSeriesFilter = {
              filter = "metric.type = \"aiplatform.googleapis.com/prediction/online/accelerator/duty_cycle\" AND ${local.endpoint_filter}"
              aggregation = {
                alignmentPeriod    = "60s"
                perSeriesAligner   = "ALIGN_MEAN"
                crossSeriesReducer = "REDUCE_MEAN"
                groupByFields      = ["resource.label.endpoint_id"]
              }
            }
          }
        }]
        yAxis = { label = "%", scale = "LINEAR" }
      }
    },
    {
      title = "GPU memory in use (bytes)"
      xyChart = {
        dataSets = [{
          plotType   = "LINE"
          targetAxis = "Y1"
          timeSeriesQuery = {
            timeSeriesFilter = {
              filter = "metric.type = \"aiplatform.googleapis.com/prediction/online/accelerator/memory/bytes_used\" AND ${local.endpoint_filter}"
              aggregation = {
                alignmentPeriod    = "60s"
                perSeriesAligner   = "ALIGN_MEAN"
                crossSeriesReducer = "REDUCE_MAX"
                groupByFields      = ["resource.label.endpoint_id"]
              }
            }
          }
        }]
        yAxis = { label = "bytes", scale = "LINEAR" }
      }
    },
    {
      title = "Batch deliveries by response class (Cloud Run)"
      xyChart = {
        dataSets = [{
          plotType   = "STACKED_BAR"
          targetAxis = "Y1"
          timeSeriesQuery = {
            timeSeriesFilter = {
              filter = "metric.type = \"run.googleapis.com/request_count\" AND ${local.run_filter.batch}"
              aggregation = {
                alignmentPeriod    = "60s"
                perSeriesAligner   = "ALIGN_DELTA"
                crossSeriesReducer = "REDUCE_SUM"
                groupByFields      = ["metric.label.response_code_class"]
              }
            }
          }
        }]
        yAxis = { label = "deliveries / min", scale = "LINEAR" }
      }
    },
  ]
}

locals {
  # The alert policies' state under the charts, as the AWS dashboard's alarm status widget.
  alert_policies = concat(
    [google_monitoring_alert_policy.api_error_rate, google_monitoring_alert_policy.api_latency, google_monitoring_alert_policy.batch_failures],
    google_monitoring_alert_policy.endpoint_errors,
    google_monitoring_alert_policy.gpu_memory,
  )
  widgets = concat(local.metric_widgets, [for policy in local.alert_policies : {
    title      = policy.display_name
    alertChart = { name = policy.name }
  }])
}

resource "google_monitoring_dashboard" "main" {
  dashboard_json = jsonencode({
    displayName = "TextNLP ${var.stage}"
    mosaicLayout = {
      columns = 48
      tiles = [for i, widget in local.widgets : {
        xPos   = (i % 3) * 16
        yPos   = floor(i / 3) * 16
        width  = 16
        height = 16
        widget = widget
      }]
    }
  })

  depends_on = [google_project_service.apis]
}

# -- alerts -----------------------------------------------------------------------------------------------

resource "google_monitoring_notification_channel" "email" {
  for_each = var.alert_email == null ? toset([]) : toset([var.alert_email])

  display_name = "TextNLP ${var.stage} alerts"
  type         = "email"
  labels = {
    email_address = each.value
  }
}

# Cloud Run's own counts: they include what never reached the gateway (crashes, timeouts, no instance).
resource "google_monitoring_alert_policy" "api_error_rate" {
  display_name          = "TextNLP ${var.stage}: api error rate"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "More than ${var.alert_error_rate_percent}% of api requests answered 5xx"
    condition_threshold {
      filter             = "metric.type = \"run.googleapis.com/request_count\" AND ${local.run_filter.api} AND metric.labels.response_code_class = \"5xx\""
      denominator_filter = "metric.type = \"run.googleapis.com/request_count\" AND ${local.run_filter.api}"
      comparison         = "COMPARISON_GT"
      threshold_value    = var.alert_error_rate_percent / 100
      duration           = "300s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
      }
      denominator_aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_RATE"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    content   = "The api function answered 5xx to more than ${var.alert_error_rate_percent}% of requests for 5 minutes. Look at the function's logs (severity>=ERROR) and the 'Errors by status' chart."
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_alert_policy" "api_latency" {
  display_name          = "TextNLP ${var.stage}: api p99 latency"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "api p99 latency above ${var.alert_p99_latency_ms} ms"
    condition_threshold {
      filter          = "metric.type = \"run.googleapis.com/request_latencies\" AND ${local.run_filter.api}"
      comparison      = "COMPARISON_GT"
      threshold_value = var.alert_p99_latency_ms
      duration        = "300s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_PERCENTILE_99"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    content   = "The api's p99 latency stayed above ${var.alert_p99_latency_ms} ms for 5 minutes (streams count until their last event)."
    mime_type = "text/markdown"
  }
}

# An event the batch function did not take (an error, a crash, a timeout, no instance to run it): Eventarc
# retries it, but each failure is worth knowing about.
resource "google_monitoring_alert_policy" "batch_failures" {
  display_name          = "TextNLP ${var.stage}: failed batch deliveries"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "The batch function refused or failed an event"
    condition_threshold {
      filter          = "metric.type = \"run.googleapis.com/request_count\" AND ${local.run_filter.batch} AND metric.labels.response_code_class = one_of(\"4xx\", \"5xx\")"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "0s"
      aggregations {
        alignment_period     = "300s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    content   = "The batch function answered an Eventarc delivery with an error; the delivery is retried for up to 24 hours. Look at the batch function's logs and the file's errors file under batch-output/."
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_alert_policy" "endpoint_errors" {
  count = local.vertex_enable ? 1 : 0

  display_name          = "TextNLP ${var.stage}: Vertex AI endpoint errors"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "The endpoint answered errors"
    condition_threshold {
      filter          = "metric.type = \"aiplatform.googleapis.com/prediction/online/error_count\" AND ${local.endpoint_filter}"
      comparison      = "COMPARISON_GT"
      threshold_value = 0
      duration        = "120s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_DELTA"
        cross_series_reducer = "REDUCE_SUM"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    content   = "The Vertex AI endpoint returned errors for 2 minutes. Check its logs (container logging) and the 'Vertex AI predictions and errors' chart."
    mime_type = "text/markdown"
  }
}

resource "google_monitoring_alert_policy" "gpu_memory" {
  count = local.vertex_enable ? 1 : 0

  display_name          = "TextNLP ${var.stage}: Vertex AI endpoint GPU memory"
  combiner              = "OR"
  notification_channels = local.notification_channels

  conditions {
    display_name = "GPU memory in use above ${var.alert_gpu_memory_percent}% of the replica's GPUs"
    condition_threshold {
      filter          = "metric.type = \"aiplatform.googleapis.com/prediction/online/accelerator/memory/bytes_used\" AND ${local.endpoint_filter}"
      comparison      = "COMPARISON_GT"
      threshold_value = floor(local.gpu_memory_bytes * var.alert_gpu_memory_percent / 100)
      duration        = "600s"
      aggregations {
        alignment_period     = "60s"
        per_series_aligner   = "ALIGN_MEAN"
        cross_series_reducer = "REDUCE_MAX"
      }
      trigger {
        count = 1
      }
    }
  }

  documentation {
    content   = "A replica of the endpoint has used more than ${var.alert_gpu_memory_percent}% of its GPU memory for 10 minutes (vLLM preallocates its KV cache: compare with the usual level before acting). A larger size or more replicas may be due."
    mime_type = "text/markdown"
  }
}
