"""`cluster deploy`: services for every node of an inventory, installed by Ansible."""
