# The Firestore database (native mode), the TTL policies of the collections whose documents expire, and the
# indexes of the usage queries. Paths and field names: adapters/gcp/firestore_layout.py.

resource "google_firestore_database" "main" {
  name                              = local.prefix
  location_id                       = var.firestore_location
  type                              = "FIRESTORE_NATIVE"
  concurrency_mode                  = "PESSIMISTIC" # what the emulator does; contention retried by the store
  app_engine_integration_mode       = "DISABLED"
  point_in_time_recovery_enablement = "POINT_IN_TIME_RECOVERY_ENABLED"
  delete_protection_state           = local.is_prod ? "DELETE_PROTECTION_ENABLED" : "DELETE_PROTECTION_DISABLED"
  deletion_policy                   = local.is_prod ? "ABANDON" : "DELETE"

  depends_on = [google_project_service.apis]
}

# TTL: Firestore deletes a document once its expires_at (a Timestamp) has passed. The field is also left out
# of single-field indexing (empty index_config): an index on an ever-increasing timestamp written at the
# request rate is a write hotspot, and no query filters on it.
resource "google_firestore_field" "ttl" {
  for_each = local.firestore_ttl_collections

  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = each.key
  field      = local.firestore_ttl_field

  ttl_config {}

  index_config {}
}

# Collection-group single-field indexes for the all-tenant daily usage query; the collection-scope ones are
# kept as Firestore's defaults (ascending, descending) since an override replaces them.
resource "google_firestore_field" "group_index" {
  for_each = local.firestore_group_indexes

  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = each.key
  field      = each.value

  index_config {
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION"
    }
    indexes {
      order       = "DESCENDING"
      query_scope = "COLLECTION"
    }
    indexes {
      order       = "ASCENDING"
      query_scope = "COLLECTION_GROUP"
    }
  }

  # Field changes on one database are applied one at a time; the TTL ones go first.
  depends_on = [google_firestore_field.ttl]
}

# The usage records' created_at: no single-field index (a write hotspot at 500 writes a second, as the TTL
# timestamps above); list_usage reads it through the composite indexes below, one range per index shard.
# It was group_index["usage"] (a collection-group index on it): moved, so that an existing database gets one
# in-place update, not a delete of the old resource (which would reset the field's indexes) after the create.
moved {
  from = google_firestore_field.group_index["usage"]
  to   = google_firestore_field.usage_created_at
}

resource "google_firestore_field" "usage_created_at" {
  project    = var.project_id
  database   = google_firestore_database.main.name
  collection = local.firestore_usage_collection
  field      = "created_at"

  index_config {}

  depends_on = [google_firestore_field.group_index]
}

resource "google_firestore_index" "usage_by_shard" {
  for_each = toset(local.firestore_usage_index_scopes)

  project     = var.project_id
  database    = google_firestore_database.main.name
  collection  = local.firestore_usage_collection
  query_scope = each.key

  dynamic "fields" {
    for_each = local.firestore_usage_index_fields
    content {
      field_path = fields.value
      order      = "ASCENDING"
    }
  }
}
