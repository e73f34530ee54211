# The resource group (created unless resource_group_name names an existing one) and who runs Terraform.

resource "azurerm_resource_group" "main" {
  count = var.resource_group_name == null ? 1 : 0

  name     = "${local.prefix}-rg"
  location = var.location
  tags     = local.tags
}

data "azurerm_resource_group" "existing" {
  count = var.resource_group_name == null ? 0 : 1

  name = var.resource_group_name
}

data "azurerm_client_config" "current" {}
