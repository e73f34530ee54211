# Batch input: every blob created under data/batch-input/ is delivered by Event Grid to the function app's
# Event Grid-triggered function `batch`. A failed delivery is retried (the batch is idempotent by blob name
# and etag, and resumes where an earlier invocation stopped); one that still fails is dead-lettered into
# the eventgrid-deadletter container, written with the system topic's identity (no account key).

resource "azurerm_eventgrid_system_topic" "data" {
  name                = "${local.prefix}-data-events"
  resource_group_name = local.resource_group_name
  location            = var.location
  source_resource_id  = azurerm_storage_account.data.id
  topic_type          = "Microsoft.Storage.StorageAccounts"
  tags                = local.tags

  identity {
    type = "SystemAssigned"
  }
}

resource "azurerm_eventgrid_system_topic_event_subscription" "batch_input" {
  name                  = "${local.prefix}-batch-input"
  system_topic          = azurerm_eventgrid_system_topic.data.name
  resource_group_name   = local.resource_group_name
  event_delivery_schema = "EventGridSchema" # what the Python v2 model's event_grid_trigger takes

  included_event_types = ["Microsoft.Storage.BlobCreated"]

  subject_filter {
    subject_begins_with = local.batch_input_subject
    case_sensitive      = true
  }

  # Only blobs with content: a zero-length placeholder (a "folder" some tools create) is no batch.
  advanced_filter {
    number_greater_than {
      key   = "data.contentLength"
      value = 0
    }
  }

  azure_function_endpoint {
    function_id                       = "${azurerm_function_app_flex_consumption.main.id}/functions/batch"
    max_events_per_batch              = 1 # one batch file per invocation: its time budget is the file's
    preferred_batch_size_in_kilobytes = 64
  }

  retry_policy {
    max_delivery_attempts = 30
    event_time_to_live    = 1440 # minutes: keep retrying for a day
  }

  dead_letter_identity {
    type = "SystemAssigned"
  }

  storage_blob_dead_letter_destination {
    storage_account_id          = azurerm_storage_account.data.id
    storage_blob_container_name = azurerm_storage_container.deadletter.name
  }

  # The function must exist (the package is deployed) before Event Grid validates the endpoint, and the
  # topic must be able to write dead letters.
  depends_on = [
    terraform_data.deploy_package,
    azurerm_role_assignment.eventgrid_deadletter,
  ]
}
