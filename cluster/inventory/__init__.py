"""Node inventories in Ansible's inventory format."""

from .inventory import Host, Inventory, InventoryError, default_inventory_path, load_inventory

__all__ = ["Host", "Inventory", "InventoryError", "default_inventory_path", "load_inventory"]
