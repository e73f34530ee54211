# The workbook: the panels of terraform/gcp's dashboard, three to a row. Gateway figures are KQL over the
# metric lines (local.kql_metric_lines), the host's view over `requests`, the endpoint's from Azure ML's
# platform metrics (with endpoint_size; without, a note where those panels would be).

locals {
  third = "33"

  kql_panels = [
    {
      name  = "tokens"
      title = "Tokens generated per minute"
      query = <<-KQL
        ${trimspace(local.kql_metric_lines)}
        | where metric in ("tokens_generated_total", "prompt_tokens_total")
        | extend series = iff(metric == "prompt_tokens_total", "prompt tokens", strcat("generated: ", tostring(dims.model)))
        | summarize tokens = sum(value) by series, bin(timestamp, 1m)
        | render timechart
      KQL
    },
    {
      name  = "gateway_latency"
      title = "Request latency p50 / p95 / p99 (gateway, s)"
      query = <<-KQL
        ${trimspace(local.kql_metric_lines)}
        | where metric == "request_latency_seconds"
        | summarize percentiles(value, 50, 95, 99) by bin(timestamp, 1m)
        | render timechart
      KQL
    },
    {
      name  = "host_latency"
      title = "Request latency p50 / p95 / p99 (Functions host, api, ms)"
      query = <<-KQL
        requests
        | where operation_Name == "api"
        | summarize percentiles(duration, 50, 95, 99) by bin(timestamp, 1m)
        | render timechart
      KQL
    },
    {
      name  = "errors"
      title = "Errors by status"
      query = <<-KQL
        ${trimspace(local.kql_metric_lines)}
        | where (metric == "requests_total" and not(tostring(dims.status) startswith "2")) or metric == "backend_errors_total"
        | extend series = iff(metric == "requests_total", strcat("api ", tostring(dims.status)), strcat("backend ", tostring(dims.model), " ", tostring(dims.status)))
        | summarize responses = sum(value) by series, bin(timestamp, 1m)
        | render timechart
      KQL
    },
    {
      name  = "cache"
      title = "Cache hit ratio (%)"
      query = <<-KQL
        ${trimspace(local.kql_metric_lines)}
        | where metric in ("cache_hits_total", "cache_misses_total")
        | summarize hits = sumif(value, metric == "cache_hits_total"), misses = sumif(value, metric == "cache_misses_total") by bin(timestamp, 5m)
        | extend hit_ratio_percent = iff(hits + misses > 0, 100.0 * hits / (hits + misses), real(null))
        | project timestamp, hit_ratio_percent
        | render timechart
      KQL
    },
    {
      name  = "refusals"
      title = "Quota and rate-limit refusals"
      query = <<-KQL
        ${trimspace(local.kql_metric_lines)}
        | where metric == "limit_refusals_total"
        | summarize refusals = sum(value) by limit = tostring(dims.limit), bin(timestamp, 1m)
        | render timechart
      KQL
    },
    {
      name  = "batch_lines"
      title = "Batch lines"
      query = <<-KQL
        ${trimspace(local.kql_metric_lines)}
        | where metric == "batch_lines_total"
        | summarize lines = sum(value) by status = tostring(dims.status), bin(timestamp, 1m)
        | render timechart
      KQL
    },
    {
      name  = "batch_runs"
      title = "Batch runs by result (Functions host)"
      query = <<-KQL
        requests
        | where operation_Name == "batch"
        | summarize runs = count() by result = iff(success, "succeeded", "failed"), bin(timestamp, 5m)
        | render columnchart kind=stacked
      KQL
    },
  ]

  kql_items = [for panel in local.kql_panels : {
    type = 3
    name = panel.name
    content = {
      version       = "KqlItem/1.0"
      title         = panel.title
      query         = trimspace(panel.query)
      size          = 0
      queryType     = 0
      resourceType  = "microsoft.insights/components"
      visualization = "timechart"
      timeContext   = { durationMs = 86400000 }
    }
    customWidth = local.third
  }]

  # Azure ML platform metrics of the stack's endpoint and its deployment.
  endpoint_metric_panels = [
    { name = "endpoint_requests", title = "Azure ML requests and errors", scope = "endpoint", metric = "RequestsPerMinute", aggregation = 1, split = "statusCodeClass" },
    { name = "gpu_utilisation", title = "GPU utilisation (%)", scope = "deployment", metric = "GpuUtilizationPercentage", aggregation = 4, split = null },
    { name = "gpu_memory", title = "GPU memory in use (%)", scope = "deployment", metric = "GpuMemoryUtilizationPercentage", aggregation = 3, split = null },
  ]
  endpoint_items = local.endpoint_enable ? [for panel in local.endpoint_metric_panels : {
    type = 10
    name = panel.name
    content = {
      version      = "MetricsItem/2.0"
      title        = panel.title
      size         = 0
      chartType    = 2
      metricScope  = 0
      resourceType = lower(panel.scope == "endpoint" ? local.endpoint_namespace : local.deployment_namespace)
      resourceIds  = [panel.scope == "endpoint" ? azapi_resource.online_endpoint[0].id : azapi_resource.online_deployment[0].id]
      timeContext  = { durationMs = 86400000 }
      metrics = [merge({
        namespace   = lower(panel.scope == "endpoint" ? local.endpoint_namespace : local.deployment_namespace)
        metric      = "${lower(panel.scope == "endpoint" ? local.endpoint_namespace : local.deployment_namespace)}--${panel.metric}"
        aggregation = panel.aggregation
      }, panel.split == null ? {} : { splitBy = panel.split })]
    }
    customWidth = local.third
    }] : [{
    type = 1
    name = "endpoint_note"
    content = {
      json = "**Azure ML endpoint**: none in this stack (set `enable_azureml` and `endpoint_size`). Endpoints registered by hand: open their Metrics blade (RequestsPerMinute, GpuUtilizationPercentage, GpuMemoryUtilizationPercentage)."
    }
    customWidth = local.third
  }]

  # The alert rules of this resource group and their state, as the other clouds' alert widgets.
  alert_item = {
    type = 3
    name = "alerts"
    content = {
      version                 = "KqlItem/1.0"
      title                   = "Alerts (fired in the last day)"
      query                   = "alertsmanagementresources | where type =~ 'microsoft.alertsmanagement/alerts' | where tolower(tostring(properties.essentials.targetResourceGroup)) == '${lower(local.resource_group_name)}' | where todatetime(properties.essentials.startDateTime) > ago(1d) | project name, severity = tostring(properties.essentials.severity), state = tostring(properties.essentials.monitorCondition), started = todatetime(properties.essentials.startDateTime) | order by started desc"
      size                    = 0
      queryType               = 1
      resourceType            = "microsoft.resourcegraph/resources"
      crossComponentResources = ["/subscriptions/${var.subscription_id}"]
      visualization           = "table"
    }
    customWidth = local.third
  }

  workbook_items = concat(local.kql_items, local.endpoint_items, [local.alert_item])
}

resource "azurerm_application_insights_workbook" "main" {
  name                = uuidv5("url", "https://textnlp/${var.subscription_id}/${local.prefix}/workbook")
  resource_group_name = local.resource_group_name
  location            = var.location
  display_name        = "TextNLP ${var.stage}"
  description         = "Tokens, latency, errors, cache, refusals, batches and the Azure ML endpoint (the panels of the other clouds' dashboards)."
  source_id           = lower(azurerm_application_insights.main.id)
  tags                = local.tags

  data_json = jsonencode({
    version             = "Notebook/1.0"
    items               = local.workbook_items
    isLocked            = false
    fallbackResourceIds = [azurerm_application_insights.main.id]
  })
}
