# Log Analytics, workspace-based Application Insights, the action group, the alerts and the workbook.
#
# Gateway figures come from the metric lines adapters/azure/metrics.py writes (core/metric_lines.py): one
# JSON object per line, logged through `textnlp.metrics`, which the Functions Python worker sends to
# Application Insights' `traces` table, the line as the trace's `message`:
#   {"metric":"requests_total","kind":"counter","value":3,"unit":"1","dimensions":{"route":"/v1/chat/completions","status":"200"},"service":"textnlp"}
# A counter line is the sum since the last flush, a histogram line one observed value. What never reaches the
# code (a crash, a timeout, a host that did not start) is in the host's own `requests` table; the endpoint's
# figures are Azure ML's platform metrics.

locals {
  # Every metric line, parsed: metric, value, dims (the dimensions object), kind.
  kql_metric_lines = <<-KQL
    traces
    | where message startswith "{\"metric\""
    | extend m = parse_json(message)
    | extend metric = tostring(m.metric), kind = tostring(m.kind), value = todouble(m.value), dims = m.dimensions
  KQL

  endpoint_namespace   = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints"
  deployment_namespace = "Microsoft.MachineLearningServices/workspaces/onlineEndpoints/deployments"
}

resource "azurerm_log_analytics_workspace" "main" {
  name                         = "${local.prefix}-logs"
  resource_group_name          = local.resource_group_name
  location                     = var.location
  sku                          = "PerGB2018"
  retention_in_days            = var.log_retention_days
  local_authentication_enabled = false
  tags                         = local.tags
}

resource "azurerm_application_insights" "main" {
  name                         = "${local.prefix}-appi"
  resource_group_name          = local.resource_group_name
  location                     = var.location
  workspace_id                 = azurerm_log_analytics_workspace.main.id
  application_type             = "web"
  local_authentication_enabled = false # ingestion with Entra ID only (the app holds Monitoring Metrics Publisher)
  tags                         = local.tags
}

# -- diagnostic settings -----------------------------------------------------------------------------------

resource "azurerm_monitor_diagnostic_setting" "data_blobs" {
  name                       = "to-log-analytics"
  target_resource_id         = "${azurerm_storage_account.data.id}/blobServices/default"
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_log {
    category = "StorageRead"
  }

  enabled_log {
    category = "StorageWrite"
  }

  enabled_log {
    category = "StorageDelete"
  }
}

resource "azurerm_monitor_diagnostic_setting" "key_vault" {
  name                       = "to-log-analytics"
  target_resource_id         = azurerm_key_vault.main.id
  log_analytics_workspace_id = azurerm_log_analytics_workspace.main.id

  enabled_log {
    category_group = "audit"
  }
}

resource "azurerm_monitor_diagnostic_setting" "cosmos" {
  name                           = "to-log-analytics"
  target_resource_id             = azurerm_cosmosdb_account.main.id
  log_analytics_workspace_id     = azurerm_log_analytics_workspace.main.id
  log_analytics_destination_type = "Dedicated"

  enabled_log {
    category = "DataPlaneRequests"
  }

  enabled_log {
    category = "PartitionKeyRUConsumption"
  }
}

# -- alerts ------------------------------------------------------------------------------------------------

resource "azurerm_monitor_action_group" "main" {
  name                = "${local.prefix}-alerts"
  resource_group_name = local.resource_group_name
  short_name          = substr(replace("tnlp${var.stage}", "-", ""), 0, 12)
  tags                = local.tags

  dynamic "email_receiver" {
    for_each = var.alert_email == null ? [] : [var.alert_email]
    content {
      name                    = "ops"
      email_address           = email_receiver.value
      use_common_alert_schema = true
    }
  }
}

# The share of api responses that were 5xx (requests_total, by status), over 5 minutes.
resource "azurerm_monitor_scheduled_query_rules_alert_v2" "api_error_rate" {
  name                 = "${local.prefix}-api-error-rate"
  display_name         = "TextNLP ${var.stage}: api error rate"
  description          = "More than ${var.alert_error_rate_percent}% of api requests answered 5xx for 5 minutes. Look at the function's traces (severityLevel >= 3) and the workbook's 'Errors by status'."
  resource_group_name  = local.resource_group_name
  location             = var.location
  scopes               = [azurerm_application_insights.main.id]
  severity             = 1
  evaluation_frequency = "PT5M"
  window_duration      = "PT5M"
  tags                 = local.tags

  criteria {
    query                   = <<-KQL
      ${trimspace(local.kql_metric_lines)}
      | where metric == "requests_total"
      | summarize total = sum(value), errors = sumif(value, toint(tostring(dims.status)) >= 500)
      | extend error_rate_percent = iff(total > 0, 100.0 * errors / total, 0.0)
    KQL
    time_aggregation_method = "Maximum"
    metric_measure_column   = "error_rate_percent"
    operator                = "GreaterThan"
    threshold               = var.alert_error_rate_percent

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  action {
    action_groups = [azurerm_monitor_action_group.main.id]
  }
}

# p95 of the gateway's request latency (request_latency_seconds, one line per request), over 5 minutes.
resource "azurerm_monitor_scheduled_query_rules_alert_v2" "api_latency" {
  name                 = "${local.prefix}-api-latency-p95"
  display_name         = "TextNLP ${var.stage}: api p95 latency"
  description          = "The gateway's p95 latency stayed above ${var.alert_p95_latency_ms} ms for 5 minutes (streams count until their last event)."
  resource_group_name  = local.resource_group_name
  location             = var.location
  scopes               = [azurerm_application_insights.main.id]
  severity             = 2
  evaluation_frequency = "PT5M"
  window_duration      = "PT5M"
  tags                 = local.tags

  criteria {
    query                   = <<-KQL
      ${trimspace(local.kql_metric_lines)}
      | where metric == "request_latency_seconds"
      | summarize p95_ms = 1000.0 * percentile(value, 95)
    KQL
    time_aggregation_method = "Maximum"
    metric_measure_column   = "p95_ms"
    operator                = "GreaterThan"
    threshold               = var.alert_p95_latency_ms

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  action {
    action_groups = [azurerm_monitor_action_group.main.id]
  }
}

# A batch invocation that failed (an error, a crash, a timeout): Event Grid retries it, but each failure is
# worth knowing about.
resource "azurerm_monitor_scheduled_query_rules_alert_v2" "batch_failures" {
  name                 = "${local.prefix}-batch-failures"
  display_name         = "TextNLP ${var.stage}: failed batch runs"
  description          = "The batch function failed an invocation. Event Grid retries it for a day, then dead-letters it into ${local.deadletter_container}. Look at the batch function's traces and the file's errors file under batch-output/."
  resource_group_name  = local.resource_group_name
  location             = var.location
  scopes               = [azurerm_application_insights.main.id]
  severity             = 2
  evaluation_frequency = "PT5M"
  window_duration      = "PT5M"
  tags                 = local.tags

  criteria {
    query                   = <<-KQL
      requests
      | where operation_Name == "batch" and success == false
      | summarize failed_runs = count()
    KQL
    time_aggregation_method = "Total"
    metric_measure_column   = "failed_runs"
    operator                = "GreaterThan"
    threshold               = 0

    failing_periods {
      minimum_failing_periods_to_trigger_alert = 1
      number_of_evaluation_periods             = 1
    }
  }

  action {
    action_groups = [azurerm_monitor_action_group.main.id]
  }
}

# Events Event Grid gave up on (every retry failed): a batch file that was never processed.
resource "azurerm_monitor_metric_alert" "batch_deadletters" {
  name                = "${local.prefix}-batch-deadletters"
  description         = "Event Grid dead-lettered a batch-input event into ${local.deadletter_container}: the file was never processed. Upload it again once the cause is fixed."
  resource_group_name = local.resource_group_name
  scopes              = [azurerm_eventgrid_system_topic.data.id]
  severity            = 1
  frequency           = "PT5M"
  window_size         = "PT15M"
  tags                = local.tags

  criteria {
    metric_namespace = "Microsoft.EventGrid/systemTopics"
    metric_name      = "DeadLetteredCount"
    aggregation      = "Total"
    operator         = "GreaterThan"
    threshold        = 0
  }

  action {
    action_group_id = azurerm_monitor_action_group.main.id
  }
}

# 5xx answers of the managed online endpoint (its RequestsPerMinute, status code class 5xx).
resource "azurerm_monitor_metric_alert" "endpoint_errors" {
  count = local.endpoint_enable ? 1 : 0

  name                = "${local.prefix}-endpoint-errors"
  description         = "The Azure ML endpoint answered 5xx for 5 minutes. Check the deployment's logs (az ml online-deployment get-logs) and the workbook's Azure ML panels."
  resource_group_name = local.resource_group_name
  scopes              = [azapi_resource.online_endpoint[0].id]
  severity            = 1
  frequency           = "PT1M"
  window_size         = "PT5M"
  tags                = local.tags

  criteria {
    metric_namespace = local.endpoint_namespace
    metric_name      = "RequestsPerMinute"
    aggregation      = "Total"
    operator         = "GreaterThan"
    threshold        = 0

    dimension {
      name     = "statusCodeClass"
      operator = "Include"
      values   = ["5xx"]
    }
  }

  action {
    action_group_id = azurerm_monitor_action_group.main.id
  }
}

resource "azurerm_monitor_metric_alert" "gpu_memory" {
  count = local.endpoint_enable ? 1 : 0

  name                = "${local.prefix}-endpoint-gpu-memory"
  description         = "The endpoint deployment used more than ${var.alert_gpu_memory_percent}% of its GPU memory (${local.endpoint.gpus} x ${local.endpoint.gpu_memory_gib} GiB) for 10 minutes (vLLM-style servers preallocate their KV cache: compare with the usual level first). A larger endpoint_size or more instances may be due."
  resource_group_name = local.resource_group_name
  scopes              = [azapi_resource.online_deployment[0].id]
  severity            = 2
  frequency           = "PT5M"
  window_size         = "PT15M"
  tags                = local.tags

  criteria {
    metric_namespace = local.deployment_namespace
    metric_name      = "GpuMemoryUtilizationPercentage"
    aggregation      = "Maximum"
    operator         = "GreaterThan"
    threshold        = var.alert_gpu_memory_percent
  }

  action {
    action_group_id = azurerm_monitor_action_group.main.id
  }
}
