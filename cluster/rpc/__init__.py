"""gRPC between the coordinator and leader ranks; stubs generated from proto/ (see codegen)."""
